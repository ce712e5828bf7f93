"""`lastmile warehouse serve`: the embedded warehouse over ClickHouse HTTP, for unmodified clients,
to its configured users only, and for readers read-only in fact: nothing reaches files, URLs
or other servers, and no setting loosens the limits."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import http.client
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from lastmile.config import Settings
from lastmile.streaming.broker import free_port, wait_ready
from lastmile.warehouse import close_all, connect, migrate
from lastmile.warehouse.auth import UsersConfigError, add_user, load_users, password_sha256_hex
from lastmile.warehouse.http_server import WarehouseHTTPServer, first_keyword, split_statement

ROOT = Path(__file__).resolve().parent.parent
ANALYST = ("analyst", "cold-chain-analyst-7f3k")
DBT = ("dbt", "dbt-writer-q9w2")


@pytest.fixture
def secret(home: Settings) -> str:
    """The hash key as lastmile generates it into the data directory when none is set."""
    return dataclasses.replace(home, hash_key="").hash_key_bytes().decode()


@pytest.fixture
def servers(home: Settings, secret: str) -> Iterator[tuple[WarehouseHTTPServer, WarehouseHTTPServer]]:
    """A read-write and a read-only server on the same embedded warehouse, in this process."""
    add_user(home.warehouse_users_file, *ANALYST, role="reader")
    add_user(home.warehouse_users_file, *DBT, role="writer")
    migrate(connect(home))
    writable = WarehouseHTTPServer.for_settings(home, port=0, readonly=False).start_background()
    readonly = WarehouseHTTPServer.for_settings(home, port=0).start_background()
    yield writable, readonly
    writable.stop()
    readonly.stop()


def client(server: WarehouseHTTPServer, who: tuple[str, str]) -> clickhouse_connect.driver.Client:
    return clickhouse_connect.get_client(host="127.0.0.1", port=server.port, username=who[0], password=who[1])


def request(server: WarehouseHTTPServer, method: str = "GET", query: str | None = None, body: bytes | None = None,
            who: tuple[str, str] | None = ANALYST, headers: dict[str, str] | None = None,
            **params: str) -> tuple[int, str, dict[str, str]]:
    """One raw HTTP request, as a browser, curl or a BI tool would send it."""
    if query is not None:
        params["query"] = query
    sent = dict(headers or {})
    if who is not None:
        sent["Authorization"] = "Basic " + base64.b64encode(f"{who[0]}:{who[1]}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, "/?" + urlencode(params), body=body, headers=sent)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace"), dict(response.getheaders())
    finally:
        conn.close()


def files_under(home: Settings, tmp_path: Path) -> set[Path]:
    """Every file of the test's directory but the warehouse's own (which a writer's tables change)."""
    return {p for p in tmp_path.rglob("*") if p.is_file() and home.warehouse_dir not in p.parents}


def test_clickhouse_connect_queries_and_inserts_unmodified(servers: tuple[WarehouseHTTPServer, WarehouseHTTPServer]) -> None:
    writable, _ = servers
    dbt = client(writable, DBT)
    assert dbt.query("SELECT count() FROM raw_order").result_rows == [(0,)]  # lastmile's database by default
    dbt.command("CREATE TABLE notes (id UInt32, text String, at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY id")
    dbt.insert("notes", [[1, "chilled", "2026-10-01 08:00:00"], [2, "冷链", "2026-10-01 09:00:00"]],
               column_names=["id", "text", "at"])
    dbt.command("INSERT INTO notes (id, text, at) VALUES (3, 'frozen; not a statement', '2026-10-01 10:00:00')")
    assert dbt.query("SELECT id, text FROM notes ORDER BY id").result_rows == [
        (1, "chilled"), (2, "冷链"), (3, "frozen; not a statement")]
    assert dbt.query("SELECT {n:UInt32} * 2", parameters={"n": 21}).result_rows == [(42,)]
    frame = dbt.query_df("SELECT id FROM notes WHERE text = 'chilled'")
    assert frame["id"].tolist() == [1]
    assert dbt.command("SELECT count() FROM notes") == 3
    with pytest.raises(DatabaseError, match="62"):  # rows the server cannot find are refused, never dropped silently
        dbt.command("INSERT INTO notes SETTINGS async_insert = 0 VALUES (4, 'lost?', '2026-10-01 11:00:00')")
    assert dbt.command("SELECT count() FROM notes") == 3
    with pytest.raises(DatabaseError) as failed:
        dbt.query("SELEC 1")
    assert "62" in str(failed.value)  # ClickHouse's syntax error code travels to the client


def test_read_only_server_refuses_writes(servers: tuple[WarehouseHTTPServer, WarehouseHTTPServer]) -> None:
    writable, readonly = servers
    client(writable, DBT).command("CREATE TABLE kept (id UInt32) ENGINE = MergeTree ORDER BY id")
    for server, who in ((readonly, ANALYST), (readonly, DBT), (writable, ANALYST)):  # a writer on a read-only server reads
        analyst = client(server, who)
        assert analyst.query("SELECT count() FROM kept").result_rows == [(0,)]
        assert analyst.query("SHOW TABLES").result_rows
        assert analyst.query("DESCRIBE TABLE kept").result_rows[0][:2] == ("id", "UInt32")
        assert analyst.command("EXISTS TABLE kept") == 1
        for statement in ("INSERT INTO kept VALUES (1)", "DROP TABLE kept", "ALTER TABLE kept DELETE WHERE 1",
                          "TRUNCATE TABLE kept", "SYSTEM DROP DNS CACHE", "SHOW PROCESSLIST"):
            with pytest.raises(DatabaseError, match="164"):
                analyst.command(statement)
        with pytest.raises(DatabaseError, match="164"):
            analyst.insert("kept", [[7]], column_names=["id"])
    assert client(writable, DBT).query("SELECT count() FROM kept").result_rows == [(0,)]
    # A GET only reads, even a writer's: a link on a web page cannot write.
    status, body, _ = request(writable, "GET", "INSERT INTO kept VALUES (1)", who=DBT)
    assert status == 403 and "164" in body
    assert request(writable, "GET", "SELECT count() FROM kept", who=DBT)[:2] == (200, "0\n")


ATTACKS = [
    "SELECT 1 INTO OUTFILE '{out}'",
    "SELECT 1 INTO OUTFILE '{out}' APPEND",
    "SELECT * FROM numbers(3) INTO OUTFILE '{out}' TRUNCATE FORMAT CSV",
    "SHOW TABLES INTO OUTFILE '{out}'",
    "DESCRIBE TABLE raw_order INTO OUTFILE '{out}'",
    "EXPLAIN SELECT 1 INTO OUTFILE '{out}'",
    "SELECT 1; SELECT 2 INTO OUTFILE '{out}'",
    "/* SELECT */ (SELECT 1) INTO OUTFILE '{out}' -- read",
    "SELECT * FROM file('{key}', 'LineAsString')",
    "SELECT * FROM file('{key}', 'CSVWithNames')",
    "SELECT file('{key}')",
    "DESCRIBE file('{key}')",
    "DESCRIBE TABLE file('{key}', 'CSVWithNames')",
    "DESC (SELECT * FROM file('{key}', 'TSVWithNames'))",
    "SELECT * FROM url('http://127.0.0.1:9/x', 'CSV')",
    "SELECT * FROM remote('127.0.0.1:9', system.one)",
    "SELECT * FROM remoteSecure('127.0.0.1:9', system.one)",
    "SELECT * FROM cluster('default', system.one)",
    "SELECT * FROM s3('http://127.0.0.1:9/b/k.csv')",
    "SELECT * FROM executable('cat {key}', 'TSV', 'x String')",
    "SELECT * FROM filesystem('{home}')",
    "SELECT * FROM merge('system', '^query_log$')",
    "WITH k AS (SELECT * FROM file('{key}', 'RawBLOB')) SELECT * FROM k",
    "SELECT 1 WHERE 1 IN (SELECT * FROM view(SELECT * FROM file('{key}', 'RawBLOB')))",
    "SELECT 1 SETTINGS readonly = 0",
    "SELECT count() FROM numbers(10) SETTINGS max_result_rows = 0",
    "SELECT * FROM system.mutations",
    "SELECT * FROM system.errors",
]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_reader_reaches_no_file_url_or_server(servers: tuple[WarehouseHTTPServer, WarehouseHTTPServer], home: Settings,
                                             secret: str, tmp_path: Path, method: str) -> None:
    """Neither a crafted link (GET) nor a form (POST) writes a file or reads one, the hash key included."""
    _, readonly = servers
    out = tmp_path / "out" / "stolen.csv"
    out.parent.mkdir()
    before = files_under(home, tmp_path)
    for attack in ATTACKS:
        sql = attack.format(out=out, key=home.home / "hash.key", home=home.home)
        if method == "GET":
            status, body, headers = request(readonly, "GET", sql)
        else:
            status, body, headers = request(readonly, "POST", body=sql.encode())
        assert status in (400, 403), (attack, status, body)
        assert headers.get("X-ClickHouse-Exception-Code"), attack
        assert secret not in body, attack
        assert "Traceback" not in body
    assert files_under(home, tmp_path) == before  # nothing created, nothing appended to
    assert not out.exists()


def test_writer_reaches_no_file_url_or_server_either(servers: tuple[WarehouseHTTPServer, WarehouseHTTPServer],
                                                    home: Settings, secret: str, tmp_path: Path) -> None:
    """dbt's user writes tables, not files: the same refusals, plus DDL that would reach out."""
    writable, _ = servers
    out = tmp_path / "stolen.csv"
    before = files_under(home, tmp_path)
    key = home.home / "hash.key"
    for sql in [a.format(out=out, key=key, home=home.home) for a in ATTACKS if "SETTINGS" not in a and "system." not in a] + [
            f"INSERT INTO FUNCTION file('{out}', 'CSV', 'x String') SELECT 'x'",
            f"INSERT INTO raw_order FROM INFILE '{key}' FORMAT LineAsString",
            f"CREATE TABLE leak (line String) ENGINE = File(LineAsString, '{key}')",
            f"CREATE TABLE leak AS file('{key}', 'LineAsString')",
            f"CREATE TABLE leak (line String DEFAULT file('{key}')) ENGINE = Memory",
            f"CREATE DICTIONARY leak (line String) PRIMARY KEY line SOURCE(FILE(path '{key}' format 'LineAsString')) "
            "LAYOUT(FLAT()) LIFETIME(0)",
            f"ATTACH TABLE leak FROM '{home.home}' (line String) ENGINE = MergeTree ORDER BY line",
            f"BACKUP TABLE raw_order TO File('{out}')",
            f"CREATE TABLE notes (id UInt32) ENGINE = MergeTree ORDER BY id SETTINGS disk = disk(type = local, "
            f"path = '{tmp_path / 'disk'}/')",
            f"SELECT 1 FORMAT Template SETTINGS format_template_resultset = '{key}'",
            f"SELECT 1 AS x FORMAT CapnProto SETTINGS format_schema = '{key}:Message'",
            "CREATE TABLE notes (id UInt32) ENGINE = Memory; SELECT 1 INTO OUTFILE '" + str(out) + "'"]:
        status, body, _ = request(writable, "POST", body=sql.encode(), who=DBT)
        assert status in (400, 403), (sql, status, body)
        assert secret not in body, sql
    # Data after VALUES is data read by the Values format (which ends at ';'), never a second statement.
    client(writable, DBT).command("CREATE TABLE kept (id UInt32) ENGINE = MergeTree ORDER BY id")
    status, body, _ = request(writable, "POST", body=f"INSERT INTO kept VALUES (1); SELECT 1 INTO OUTFILE '{out}'".encode(),
                              who=DBT)
    assert status == 200, body
    assert client(writable, DBT).command("SELECT count() FROM kept") == 1
    assert files_under(home, tmp_path) == before
    assert not out.exists()


def test_url_settings_only_tighten_a_reader(servers: tuple[WarehouseHTTPServer, WarehouseHTTPServer]) -> None:
    _, readonly = servers
    for loosen in ({"readonly": "0"}, {"readonly": "2"}, {"max_result_rows": "0"}, {"max_result_rows": "1000000000000"},
                   {"max_execution_time": "0"}, {"max_memory_usage": "0"}, {"allow_ddl": "1"},
                   {"format_schema": "/etc/passwd"}, {"default_format": "Template", "format_template_row": "/etc/passwd"}):
        status, body, headers = request(readonly, "GET", "SELECT number FROM numbers(10)", **loosen)
        assert status == 403 and headers["X-ClickHouse-Exception-Code"] == "164", (loosen, body)
    status, body, _ = request(readonly, "GET", "SELECT getSetting('max_result_rows'), getSetting('readonly')",
                              max_result_rows="5")
    assert (status, body) == (200, "5\t1\n")  # lowering is allowed; readonly stays 1
    status, body, _ = request(readonly, "GET", "SELECT number FROM numbers(10)", max_result_rows="5")
    assert status == 500 and "396" in body  # and it holds
    status, body, _ = request(readonly, "GET", "SELECT toUInt64(1) AS n", default_format="JSONEachRow",
                              output_format_json_quote_64bit_integers="1")
    assert (status, body) == (200, '{"n":"1"}\n')


def test_only_configured_users_get_in(servers: tuple[WarehouseHTTPServer, WarehouseHTTPServer]) -> None:
    _, readonly = servers
    assert request(readonly, "GET", "SELECT 1", who=None)[0] == 401
    assert request(readonly, "POST", body=b"SELECT 1", who=None)[0] == 401
    assert request(readonly, "GET", "SELECT 1", who=(ANALYST[0], "wrong"))[0] == 401
    assert request(readonly, "GET", "SELECT 1", who=("nobody", ANALYST[1]))[0] == 401
    assert request(readonly, "GET", "SELECT 1", who=("default", ""))[0] == 401
    status, body, headers = request(readonly, "GET", "SELECT 1", who=(ANALYST[0], "wrong"))
    assert headers["X-ClickHouse-Exception-Code"] == "516" and "AUTHENTICATION_FAILED" in body
    assert request(readonly, "GET", "SELECT 1")[:2] == (200, "1\n")
    assert request(readonly, "GET", "SELECT 2", who=None,
                   headers={"X-ClickHouse-User": ANALYST[0], "X-ClickHouse-Key": ANALYST[1]})[:2] == (200, "2\n")
    assert request(readonly, "GET", "SELECT 3", who=None, user=ANALYST[0], password=ANALYST[1])[:2] == (200, "3\n")
    assert request(readonly, "GET", "SELECT 4", who=None,
                   headers={"X-ClickHouse-User": ANALYST[0], "X-ClickHouse-Key": "wrong"})[0] == 401
    # One way at a time, as ClickHouse asks.
    assert request(readonly, "GET", "SELECT 5", headers={"X-ClickHouse-User": ANALYST[0]})[0] == 400
    # The health check stays open, like ClickHouse's.
    conn = http.client.HTTPConnection("127.0.0.1", readonly.port, timeout=10)
    conn.request("GET", "/ping")
    assert conn.getresponse().status == 200
    conn.close()
    with pytest.raises(DatabaseError, match="516"):
        client(readonly, (ANALYST[0], "wrong"))
    assert client(readonly, ANALYST).query("SELECT count() FROM raw_order").result_rows == [(0,)]


def test_malformed_requests_get_400(servers: tuple[WarehouseHTTPServer, WarehouseHTTPServer]) -> None:
    _, readonly = servers
    auth = "Basic " + base64.b64encode(f"{ANALYST[0]}:{ANALYST[1]}".encode()).decode()
    cases: list[tuple[str, bytes, dict[str, str]]] = [
        ("/?", b"SELECT 1", {"Content-Encoding": "gzip"}),  # not gzip data
        ("/?", b"SELECT '\xff\xfe'", {}),  # not UTF-8
        ("/?query=SELECT%20%FF", b"", {}),
        ("/?database=x%60%3B", b"SELECT 1", {}),
        ("/?default_format=CSV%3BX", b"SELECT 1", {}),
        ("/?", b"SELECT 1", {"Authorization": "Basic ###"}),
        ("/?", b"SELECT 1", {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}),
    ]
    for path, body, extra in cases:
        conn = http.client.HTTPConnection("127.0.0.1", readonly.port, timeout=10)
        conn.request("POST", path, body=body, headers={"Authorization": auth, **extra})
        response = conn.getresponse()
        text = response.read().decode("utf-8", "replace")
        assert response.status == 400, (path, body, extra, response.status, text)
        assert "Traceback" not in text
        conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", readonly.port, timeout=10)
    conn.putrequest("POST", "/")
    conn.putheader("Authorization", auth)
    conn.putheader("Content-Length", "twelve")
    conn.endheaders()
    assert conn.getresponse().status == 400
    conn.close()
    good = gzip.compress(b"SELECT 6")
    assert request(readonly, "POST", body=good, headers={"Content-Encoding": "gzip"})[:2] == (200, "6\n")


def test_engine_errors_quote_nothing_read_to_a_reader(servers: tuple[WarehouseHTTPServer, WarehouseHTTPServer]) -> None:
    writable, readonly = servers
    client(writable, DBT).command("CREATE TABLE notes (text String) ENGINE = MergeTree ORDER BY text")
    client(writable, DBT).command("INSERT INTO notes VALUES ('secret-ish value')")
    status, body, headers = request(readonly, "GET", "SELECT toUInt32(text) FROM notes")
    assert status == 500 and headers["X-ClickHouse-Exception-Code"] == "6"
    assert "secret-ish" not in body and "CANNOT_PARSE_TEXT" in body
    status, body, _ = request(readonly, "GET", "SELECT no_such_column FROM notes")
    assert "no_such_column" in body  # errors about the statement itself keep their text


def test_first_serve_makes_a_reader_and_a_broken_users_file_stops_the_start(home: Settings, monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    server = WarehouseHTTPServer.for_settings(home, port=0).start_background()
    try:
        generated = server.generated
        assert generated is not None and generated.users_file == home.home / "warehouse_users.toml"
        assert stat.S_IMODE(generated.password_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(generated.users_file.stat().st_mode) == 0o600
        password = generated.password_file.read_text().strip()
        assert password not in generated.users_file.read_text()
        assert password_sha256_hex(password) in generated.users_file.read_text()
        assert client(server, (generated.name, password)).command("SELECT 7") == 7
        assert request(server, "GET", "SELECT 8", who=None)[0] == 401
    finally:
        server.stop()
    again = WarehouseHTTPServer.for_settings(home, port=0)
    assert again.generated is None  # the first users file is kept, never regenerated
    again.stop()
    broken = tmp_path / "users.toml"
    for text, reason in (('[users.bi]\npassword = "plain"\n', "plain-text"),
                         ('[users.bi]\npassword_sha256_hex = "abc"\n', "64 hex"),
                         (f'[users.bi]\npassword_sha256_hex = "{password_sha256_hex("")}"\n', "empty password"),
                         (f'[users.bi]\npassword_sha256_hex = "{password_sha256_hex("x")}"\nrole = "boss"\n', "not a role"),
                         ("", "no users")):
        broken.write_text(text)
        with pytest.raises(UsersConfigError, match=reason):
            load_users(broken)
    monkeypatch.setenv("LASTMILE_WAREHOUSE_USERS", str(tmp_path / "missing.toml"))
    from lastmile.config import settings

    with pytest.raises(UsersConfigError, match="does not exist"):
        WarehouseHTTPServer.for_settings(settings(), port=0)


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
    server = subprocess.Popen([sys.executable, "-m", "lastmile.cli", "warehouse", "serve", "--port", str(port)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_ready("127.0.0.1", port, timeout_s=30, process=server)
        password = (home.home / "warehouse_analyst.password").read_text().strip()
        with pytest.raises(DatabaseError, match="516"):
            clickhouse_connect.get_client(host="127.0.0.1", port=port)
        reader = clickhouse_connect.get_client(host="127.0.0.1", port=port, username="analyst", password=password)
        assert reader.query("SELECT sum(id) FROM seen").result_rows == [(6,)]
        with pytest.raises(DatabaseError, match="164"):
            reader.command("TRUNCATE TABLE seen")
    finally:
        server.terminate()
        server.wait(10)
    output = server.stdout.read().decode() if server.stdout else ""
    assert server.returncode == 0, output
    assert "warehouse_analyst.password" in output and password not in output  # says where, never what
    time.sleep(0.1)
    assert connect(home).count("seen", final=False) == 3  # the directory is free again once the server stops


def test_warehouse_user_command_adds_users_without_printing_passwords(home: Settings) -> None:
    from typer.testing import CliRunner

    from lastmile.cli import app

    runner = CliRunner()
    made = runner.invoke(app, ["warehouse", "user", "dbt", "--role", "writer"])
    assert made.exit_code == 0, made.output
    password_file = home.home / "warehouse_dbt.password"
    password = password_file.read_text().strip()
    assert password not in made.output and str(password_file) in made.output
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    given = runner.invoke(app, ["warehouse", "user", "superset", "--password-stdin"], input="bi-reader-pw\n")
    assert given.exit_code == 0, given.output
    users = load_users(home.warehouse_users_file)
    assert users.authenticate("dbt", password).role.name == "writer"
    assert users.authenticate("superset", "bi-reader-pw").role.readonly
    refused = runner.invoke(app, ["warehouse", "user", "boss", "--role", "owner"])
    assert refused.exit_code == 2 and "not a role" in refused.output
    assert "boss" not in load_users(home.warehouse_users_file).users
