"""`lastmile warehouse serve`: the embedded warehouse over ClickHouse HTTP, for unmodified clients."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from lastmile.config import Settings
from lastmile.streaming.broker import free_port, wait_ready
from lastmile.warehouse import close_all, connect, migrate
from lastmile.warehouse.http_server import WarehouseHTTPServer, first_keyword, split_statement

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def servers(home: Settings) -> Iterator[tuple[WarehouseHTTPServer, WarehouseHTTPServer]]:
    """A read-write and a read-only server on the same embedded warehouse, in this process."""
    migrate(connect(home))
    writable = WarehouseHTTPServer.for_settings(home, port=0).start_background()
    readonly = WarehouseHTTPServer.for_settings(home, port=0, readonly=True).start_background()
    yield writable, readonly
    writable.stop()
    readonly.stop()


def test_clickhouse_connect_queries_and_inserts_unmodified(servers: tuple[WarehouseHTTPServer, WarehouseHTTPServer]) -> None:
    writable, _ = servers
    client = clickhouse_connect.get_client(host="127.0.0.1", port=writable.port)
    assert client.query("SELECT count() FROM raw_order").result_rows == [(0,)]  # lastmile's database by default
    client.command("CREATE TABLE notes (id UInt32, text String, at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY id")
    client.insert("notes", [[1, "chilled", "2026-10-01 08:00:00"], [2, "冷链", "2026-10-01 09:00:00"]],
                  column_names=["id", "text", "at"])
    assert client.query("SELECT id, text FROM notes ORDER BY id").result_rows == [(1, "chilled"), (2, "冷链")]
    assert client.query("SELECT {n:UInt32} * 2", parameters={"n": 21}).result_rows == [(42,)]
    frame = client.query_df("SELECT id FROM notes WHERE text = 'chilled'")
    assert frame["id"].tolist() == [1]
    assert client.command("SELECT count() FROM notes") == 2
    with pytest.raises(DatabaseError) as failed:
        client.query("SELEC 1")
    assert "62" in str(failed.value)  # ClickHouse's syntax error code travels to the client


def test_read_only_server_refuses_writes_and_file_access(servers: tuple[WarehouseHTTPServer, WarehouseHTTPServer]) -> None:
    writable, readonly = servers
    clickhouse_connect.get_client(host="127.0.0.1", port=writable.port).command(
        "CREATE TABLE kept (id UInt32) ENGINE = MergeTree ORDER BY id")
    analyst = clickhouse_connect.get_client(host="127.0.0.1", port=readonly.port)
    assert analyst.query("SELECT count() FROM kept").result_rows == [(0,)]
    assert analyst.query("SHOW TABLES").result_rows
    for statement in ("INSERT INTO kept VALUES (1)", "DROP TABLE kept", "ALTER TABLE kept DELETE WHERE 1",
                      "SELECT * FROM file('/etc/hostname', 'LineAsString')"):
        with pytest.raises(DatabaseError, match="164"):
            analyst.command(statement)
    with pytest.raises(DatabaseError, match="164"):
        analyst.insert("kept", [[7]], column_names=["id"])
    assert analyst.query("SELECT count() FROM kept").result_rows == [(0,)]


def test_statement_splitting() -> None:
    assert first_keyword("  -- who\n/* x */ (SELECT 1)") == "SELECT"
    assert split_statement("INSERT INTO t (a) FORMAT JSONEachRow", b'{"a":1}') == ("INSERT INTO t (a) FORMAT JSONEachRow", b'{"a":1}')
    assert split_statement("", b"INSERT INTO t FORMAT Native\n\n\x01") == ("INSERT INTO t FORMAT Native", b"\n\x01")
    assert split_statement("SELECT 1", b"") == ("SELECT 1", None)


@pytest.mark.slow
def test_another_process_reads_while_the_server_owns_the_warehouse(home: Settings) -> None:
    """The point of serving: chDB lets one process open the directory; others go through HTTP."""
    warehouse = connect(home)
    migrate(warehouse)
    warehouse.command("CREATE TABLE seen (id UInt32) ENGINE = MergeTree ORDER BY id")
    warehouse.command("INSERT INTO seen VALUES (1), (2), (3)")
    close_all()
    port = free_port()
    env = {**os.environ, "LASTMILE_HOME": str(home.home), "LASTMILE_HASH_KEY": "test-key-not-secret"}
    server = subprocess.Popen([sys.executable, "-m", "lastmile.cli", "warehouse", "serve", "--port", str(port),
                               "--readonly"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_ready("127.0.0.1", port, timeout_s=30, process=server)
        client = clickhouse_connect.get_client(host="127.0.0.1", port=port)
        assert client.query("SELECT sum(id) FROM seen").result_rows == [(6,)]
        with pytest.raises(DatabaseError, match="164"):
            client.command("TRUNCATE TABLE seen")
    finally:
        server.terminate()
        server.wait(10)
    assert server.returncode == 0, server.stdout.read().decode() if server.stdout else ""
    time.sleep(0.1)
    assert connect(home).count("seen", final=False) == 3  # the directory is free again once the server stops
