"""One way to reach the warehouse: clickhouse-connect, embedded chDB or a ClickHouse server.

The DSN alone decides. With ``LASTMILE_CLICKHOUSE_URL`` empty the warehouse is chDB
(ClickHouse's engine in-process) persisted under ``$LASTMILE_HOME/warehouse``; with
``http(s)://host:8123`` it is a ClickHouse server. Everything above this module speaks the
same clickhouse-connect client, so the same code and tests run on both.

chDB allows one data directory per process, and only one process per directory. So the
embedded client is a process-wide singleton: asking for another directory closes the
previous one first, and the Beam ingest runs in-process when the warehouse is embedded.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from lastmile.config import Settings, settings as current_settings

_lock = threading.RLock()

#: How JSONEachRow blocks are parsed: timestamps carry any UTC offset, and a field the table
#: does not have is an error rather than silently dropped. ``optimize_on_insert`` off: the
#: raw tables are ReplacingMergeTrees read with FINAL, so collapsing a block's duplicates at
#: insert time (a sort-and-merge pass per block, ~15 % of the insert) bought nothing.
#: ``max_partitions_per_insert_block`` 0: a backfill block may span any number of months
#: (ClickHouse refuses more than 100 by default), and an insert must not fail for how a
#: batch happens to be cut.
_JSON_INSERT = {"date_time_input_format": "best_effort", "input_format_skip_unknown_fields": 0, "optimize_on_insert": 0,
                "max_partitions_per_insert_block": 0}

_open: dict[str, "Warehouse"] = {}

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class WarehouseError(RuntimeError):
    """The warehouse could not be reached or refused a statement."""


def quote_ident(name: str) -> str:
    """Quote a table or column name we generated; refuse anything that is not an identifier."""
    if not _IDENT.match(name):
        raise ValueError(f"not a valid ClickHouse identifier: {name!r}")
    return f"`{name}`"


@dataclass
class Warehouse:
    """A connected warehouse: the clickhouse-connect client plus the database lastmile owns."""

    client: Client
    database: str
    dsn: str
    embedded: bool

    def command(self, sql: str, parameters: dict[str, Any] | None = None, settings: dict[str, Any] | None = None) -> Any:
        return self.client.command(sql, parameters=parameters, settings=settings)

    def rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        """Run a query and return its rows as tuples."""
        return list(self.client.query(sql, parameters=parameters).result_rows)

    def query(self, sql: str, parameters: dict[str, Any] | None = None):
        """Run a query and return clickhouse-connect's result (column names, rows)."""
        return self.client.query(sql, parameters=parameters)

    def scalar(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        result = self.rows(sql, parameters)
        return result[0][0] if result else None

    def insert_json_lines(self, table: str, lines: Sequence[bytes]) -> int:
        """Insert pre-serialised JSONEachRow lines in one block; ClickHouse parses them.

        Letting ClickHouse parse JSON is several times faster than serialising Python
        values column by column in the client, which is the ingest bottleneck otherwise.
        """
        if not lines:
            return 0
        return self.insert_json_block(table, b"\n".join(lines), len(lines))

    def insert_json_block(self, table: str, block: bytes, rows: int) -> int:
        """Insert a block of ``rows`` JSONEachRow lines already joined by newlines."""
        if not rows:
            return 0
        self.client.raw_insert(table, insert_block=block, fmt="JSONEachRow", settings=_JSON_INSERT)
        return rows

    def insert_rows(self, table: str, rows: Iterable[Sequence[Any]], column_names: Sequence[str]) -> int:
        data = list(rows)
        if data:
            self.client.insert(table, data, column_names=list(column_names))
        return len(data)

    def tables(self) -> list[str]:
        return [r[0] for r in self.rows("SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name")]

    def count(self, table: str, final: bool = True) -> int:
        """Rows in a table; with ``final`` duplicates awaiting merge are not counted."""
        return int(self.scalar(f"SELECT count() FROM {quote_ident(table)}{' FINAL' if final else ''}"))

    def close(self) -> None:
        with _lock:
            _open.pop(self.dsn, None)
            self.client.close()


def _server_client(cfg: Settings) -> Client:
    client = clickhouse_connect.get_client(
        dsn=cfg.clickhouse_url, username=cfg.clickhouse_user, password=cfg.clickhouse_password
    )
    client.command(f"CREATE DATABASE IF NOT EXISTS {quote_ident(cfg.clickhouse_database)}")
    client.close()
    return clickhouse_connect.get_client(
        dsn=cfg.clickhouse_url,
        username=cfg.clickhouse_user,
        password=cfg.clickhouse_password,
        database=cfg.clickhouse_database,
    )


def _embedded_client(cfg: Settings, dsn: str) -> Client:
    cfg.warehouse_dir.mkdir(parents=True, exist_ok=True)
    bootstrap = clickhouse_connect.get_client(dsn=dsn)
    bootstrap.command(f"CREATE DATABASE IF NOT EXISTS {quote_ident(cfg.clickhouse_database)}")
    bootstrap.close()
    return clickhouse_connect.get_client(dsn=dsn, database=cfg.clickhouse_database)


def connect(cfg: Settings | None = None) -> Warehouse:
    """The warehouse for ``cfg`` (default: current settings), opened once per process."""
    cfg = cfg or current_settings()
    dsn = cfg.clickhouse_url or f"chdb://{cfg.warehouse_dir}"
    with _lock:
        found = _open.get(dsn)
        if found is not None:
            return found
        if cfg.embedded:
            # chDB: one directory per process. Close any other embedded warehouse first.
            for other in [w for w in _open.values() if w.embedded]:
                other.close()
        try:
            client = _embedded_client(cfg, dsn) if cfg.embedded else _server_client(cfg)
        except Exception as exc:  # clickhouse-connect raises several unrelated types
            where = cfg.warehouse_dir if cfg.embedded else cfg.clickhouse_url
            raise WarehouseError(f"cannot open the warehouse at {where}: {exc}") from exc
        warehouse = Warehouse(client=client, database=cfg.clickhouse_database, dsn=dsn, embedded=cfg.embedded)
        _open[dsn] = warehouse
        return warehouse


def close_all() -> None:
    """Close every open warehouse (tests, and before handing the directory to a subprocess)."""
    with _lock:
        for warehouse in list(_open.values()):
            warehouse.close()
