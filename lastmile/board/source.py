"""How the board reaches the warehouse, and the short cache every screen shares.

* ``LASTMILE_CLICKHOUSE_URL`` empty: the embedded chDB directory, opened by the board's own
  process on the first request (not at start-up: ``lastmile serve`` without the board must
  not hold the directory). chDB lets one process open it, so while ``lastmile stream`` holds
  it the board cannot: start the worker with ``--serve-port`` and point the board at it.
* ``LASTMILE_CLICKHOUSE_URL=http://host:port``: a ClickHouse server, or the worker's
  ``--serve-port`` (ClickHouse's HTTP interface over the embedded warehouse), with
  ``LASTMILE_CLICKHOUSE_USER`` / ``_PASSWORD`` (a ``reader`` user is enough: the board only
  reads). Unlike :func:`lastmile.warehouse.connect`, nothing is created: a reader may not.

Refreshes are serialised and cached for :data:`CACHE_SECONDS` per (community, day): ten
screens polling every 1.5 s cost the warehouse what one does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import date
from typing import Any

from lastmile.config import Settings
from lastmile.warehouse.client import Warehouse, WarehouseError

#: How long a computed board is served to other screens before it is computed again.
CACHE_SECONDS = 0.5
#: How long the list of communities (the page's menu) is kept.
MENU_SECONDS = 60.0


class BoardUnavailable(RuntimeError):
    """The warehouse cannot be read right now; the message says what to do."""


def open_for_board(cfg: Settings) -> Warehouse:
    """A read-only connection for the board (see the module docstring)."""
    if cfg.embedded:
        from lastmile.warehouse import connect

        try:
            return connect(cfg)
        except WarehouseError as exc:
            held = "lock" in str(exc).lower()
            raise BoardUnavailable(
                (f"the embedded warehouse {cfg.warehouse_dir} is held by another process (lastmile stream?): "
                 "start the worker with --serve-port PORT and set LASTMILE_CLICKHOUSE_URL=http://127.0.0.1:PORT "
                 "with a warehouse user (LASTMILE_CLICKHOUSE_USER / LASTMILE_CLICKHOUSE_PASSWORD) for the board")
                if held else f"cannot open the warehouse: {exc}") from exc
    import clickhouse_connect

    try:
        client = clickhouse_connect.get_client(dsn=cfg.clickhouse_url, username=cfg.clickhouse_user,
                                               password=cfg.clickhouse_password, database=cfg.clickhouse_database,
                                               autogenerate_session_id=False)
    except Exception as exc:  # clickhouse-connect raises several unrelated types
        raise BoardUnavailable(f"cannot reach the warehouse at {cfg.clickhouse_url}: {exc}") from exc
    return Warehouse(client=client, database=cfg.clickhouse_database, dsn=cfg.clickhouse_url, embedded=False)


class BoardSource:
    """The board's warehouse, opened on first use, and the shared cache of computed boards."""

    def __init__(self, cfg: Settings, opener: Callable[[Settings], Warehouse] = open_for_board,
                 cache_seconds: float = CACHE_SECONDS) -> None:
        self.cfg = cfg
        self.opener = opener
        self._warehouse: Warehouse | None = None
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, date | None], tuple[float, dict[str, Any]]] = {}
        self.cache_seconds = cache_seconds
        self._menu: tuple[float, list[dict[str, Any]]] | None = None

    def warehouse(self) -> Warehouse:
        if self._warehouse is None:
            self._warehouse = self.opener(self.cfg)
        return self._warehouse

    def board(self, community: str = "", as_of: date | None = None) -> dict[str, Any]:
        """Every panel for ``community`` on ``as_of`` (computed at most once per cache period)."""
        from lastmile.board.panels import compute_board

        key = (community, as_of)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and time.monotonic() - hit[0] < self.cache_seconds:
                return hit[1]
            try:
                computed = compute_board(self.warehouse(), self.cfg, community, as_of)
            except BoardUnavailable:
                raise
            except Exception as exc:  # the warehouse went away or refused: say so, retry next time
                self._warehouse = None if not self.cfg.embedded else self._warehouse
                raise BoardUnavailable(f"the warehouse did not answer: {' '.join(str(exc).split())[:300]}") from exc
            self._cache[key] = (time.monotonic(), computed)
            if len(self._cache) > 64:
                oldest = min(self._cache, key=lambda k: self._cache[k][0])
                self._cache.pop(oldest, None)
            return computed

    def communities(self) -> list[dict[str, Any]]:
        """The page's menu of communities: it changes rarely, so it is kept for a minute."""
        from lastmile.board.panels import communities, warehouse_tables

        with self._lock:
            if self._menu is not None and time.monotonic() - self._menu[0] < MENU_SECONDS:
                return self._menu[1]
            warehouse = self.warehouse()
            found = communities(warehouse, warehouse_tables(warehouse))
            self._menu = (time.monotonic(), found)
            return found
