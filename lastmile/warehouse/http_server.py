"""ClickHouse's HTTP interface in front of the embedded warehouse, for other processes.

chDB lets one process open a data directory. While the worker (or any process) owns it,
dbt, a BI tool, Feast or ``lastmile sql`` in another process reach the warehouse through
this server instead: it speaks enough of ClickHouse's HTTP protocol for clickhouse-connect,
dbt-clickhouse and Feast to work unmodified, and runs each request on chDB.

What is implemented: ``GET /ping`` and ``GET /``; the query in the ``query`` URL parameter,
the body, or both (``INSERT ... FORMAT X`` in the URL or the body's first line, data after);
``database``, ``default_format`` and a trailing ``FORMAT`` clause; ``param_<name>`` query
parameters; every other URL parameter as a setting (transport-only settings are ignored);
request bodies compressed with gzip, deflate, lz4 or zstd; ClickHouse's response headers
(``X-ClickHouse-Format``, ``-Summary``, ``-Query-Id``, ``-Timezone``) and errors as status
500 (400 for a refused statement) with ``X-ClickHouse-Exception-Code`` and the message.

Read-only mode (for analysts) refuses any statement that is not SELECT, SHOW, DESCRIBE,
EXISTS, EXPLAIN or WITH before it runs, and also runs everything with ClickHouse's
``readonly=1``, which refuses writes and table functions that reach outside (``file()``,
``url()``: chDB would otherwise read the server's files). Settings sent as URL
parameters still apply (they are set before ``readonly``); a ``SETTINGS`` clause inside a
read-only query is refused, as on a ClickHouse server with a readonly user.

Limits: no authentication (it listens on loopback only; users and passwords are ignored),
no sessions (``session_id`` is ignored: each request starts fresh), no compression of
responses, no progress headers, one query at a time, and results are buffered, not
streamed. Production uses a ClickHouse server (``LASTMILE_CLICKHOUSE_URL``), not this.
"""

from __future__ import annotations

import gzip
import json
import re
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import chdb

from lastmile.config import Settings

#: URL parameters that are part of the protocol, not ClickHouse settings.
PROTOCOL_PARAMS = {"query", "database", "default_format", "user", "password", "query_id", "session_id",
                   "session_timeout", "session_check", "compress", "decompress", "buffer_size", "quota_key",
                   "role", "wait_end_of_query"}
#: Settings about the HTTP transport itself; chDB has no HTTP layer, so they are dropped.
TRANSPORT_SETTINGS = {"enable_http_compression", "send_progress_in_http_headers", "http_headers_progress_interval_ms",
                      "http_zlib_compression_level", "cancel_http_readonly_queries_on_client_close",
                      "http_response_buffer_size", "http_wait_end_of_query", "add_http_cors_header",
                      "http_native_compression_disable_checksumming_on_decompress", "client_protocol_version"}
#: Statements read-only mode lets through.
READ_STATEMENTS = ("SELECT", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "WITH")

_COMMENTS = re.compile(r"(--[^\n]*\n|/\*.*?\*/|\s+)", re.S)
_INSERT_FORMAT = re.compile(rb"^\s*INSERT\s+INTO\s.*?\bFORMAT\s+([A-Za-z0-9_]+)", re.I | re.S)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.I)
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ERROR_CODE = re.compile(r"Code:\s*(\d+)")
READONLY_CODE = 164  # ClickHouse's READONLY error


class QueryError(Exception):
    """A statement failed; carries ClickHouse's error code and the HTTP status to answer with."""

    def __init__(self, message: str, code: int = 0, status: int = 500) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def first_keyword(sql: str) -> str:
    """The statement's first word, after comments and blanks (``""`` for an empty statement)."""
    text = _COMMENTS.sub(" ", sql).lstrip(" (")
    return text.split(None, 1)[0].upper() if text.strip() else ""


def _decompress(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    if encoding == "lz4":
        import lz4.frame

        return lz4.frame.decompress(data)
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    raise QueryError(f"unsupported Content-Encoding {encoding!r} (gzip, deflate, lz4 and zstd are)", code=0, status=400)


@dataclass
class Result:
    body: bytes
    fmt: str
    summary: dict[str, str]


@dataclass
class Engine:
    """Runs one request's statement on chDB with its database, settings and parameters.

    Each request gets its own chDB connection to the process's engine (cheap: ~5 ms), so
    a request's ``USE`` and settings never leak into the next one.
    """

    path: str
    default_database: str
    readonly: bool = False
    lock: threading.Lock | None = None

    def execute(self, sql: str, data: bytes | None, database: str | None, fmt: str, settings: dict[str, str],
                params: dict[str, str]) -> Result:
        keyword = first_keyword(sql)
        if not keyword:
            raise QueryError("Empty query", code=62, status=400)
        if self.readonly and keyword not in READ_STATEMENTS:
            raise QueryError(f"Cannot execute query in readonly mode: this server is read-only and refuses {keyword} "
                             f"(only {', '.join(READ_STATEMENTS)})", code=READONLY_CODE, status=400)
        trailing = _TRAILING_FORMAT.search(sql)
        out_fmt = trailing.group(1) if trailing else fmt
        lock = self.lock or _NO_LOCK
        with lock:
            conn = chdb.connect(self.path)
            try:
                conn.query(f"USE `{(database or self.default_database).replace('`', '')}`")
                for name, value in settings.items():
                    if not _SETTING_NAME.match(name):
                        raise QueryError(f"Unknown setting {name!r}", code=115, status=400)
                    conn.query(f"SET {name} = {_setting_literal(value)}")
                if self.readonly:
                    conn.query("SET readonly = 1")
                began = time.perf_counter()
                if data is not None:
                    result = self._insert(conn, sql, data, params)
                    body, out_fmt = b"", fmt
                else:
                    result = conn.query(sql, out_fmt, params=params)
                    body = result.bytes() or b""
            except QueryError:
                raise
            except Exception as exc:
                message = str(exc)
                found = _ERROR_CODE.search(message)
                raise QueryError(message, code=int(found.group(1)) if found else 1001) from exc
            finally:
                conn.close()
        summary = {"read_rows": str(_attr(result, "rows_read")), "read_bytes": str(_attr(result, "bytes_read")),
                   "written_rows": str(_attr(result, "rows_written")), "written_bytes": str(_attr(result, "bytes_written")),
                   "total_rows_to_read": "0", "result_rows": "0", "result_bytes": str(len(body)),
                   "elapsed_ns": str(int((time.perf_counter() - began) * 1e9))}
        return Result(body, out_fmt, summary)

    @staticmethod
    def _insert(conn: Any, statement: str, data: bytes, params: dict[str, str]) -> Any:
        """``INSERT ... FORMAT X`` with the data in a file: chDB reads inserts FROM INFILE."""
        match = _TRAILING_FORMAT.search(statement)
        if not match:
            raise QueryError("an INSERT with data needs a FORMAT clause", code=62, status=400)
        head = statement[: match.start()].rstrip()
        with tempfile.NamedTemporaryFile(suffix=".data", delete=False) as tmp:
            tmp.write(data)
        try:
            quoted = tmp.name.replace("'", "\\'")
            return conn.query(f"{head} FROM INFILE '{quoted}' FORMAT {match.group(1)}", "TabSeparated", params=params)
        finally:
            Path(tmp.name).unlink(missing_ok=True)


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


_NO_LOCK = _NoLock()


def _attr(result: Any, name: str) -> int:
    try:
        return int(getattr(result, name)())
    except Exception:
        return 0


def _setting_literal(value: str) -> str:
    if re.fullmatch(r"-?\d+(\.\d+)?", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def split_statement(query: str, body: bytes) -> tuple[str, bytes | None]:
    """The statement and, for ``INSERT ... FORMAT X``, the data that follows it.

    ClickHouse concatenates the ``query`` parameter and the body. An insert's data starts
    after the format name and at most one line break; anything else is all statement.
    """
    text = (query.encode() + (b"\n" if query and body else b"") + body) if query else body
    found = _INSERT_FORMAT.match(text[:65536])
    if not found:
        return text.decode("utf-8"), None
    end = found.end()
    while end < len(text) and text[end:end + 1] in (b" ", b"\t", b"\r"):
        end += 1
    if text[end:end + 1] == b"\n":
        end += 1
    return text[: found.end()].decode("utf-8"), text[end:]


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        return  # quiet: clients poll; errors go back in responses

    def do_GET(self) -> None:
        self._handle(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        else:
            body = self.rfile.read(length) if length else b""
        self._handle(body)

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _handle(self, body: bytes) -> None:
        url = urlsplit(self.path)
        if url.path.rstrip("/") in ("/ping", "/replicas_status"):
            return self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
        args = dict(parse_qsl(url.query, keep_blank_values=True))
        query_id = args.get("query_id") or self.headers.get("X-ClickHouse-Query-Id") or str(uuid.uuid4())
        headers = {"X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Timezone": "UTC",
                   "X-ClickHouse-Server-Display-Name": "lastmile-chdb"}
        try:
            body = _decompress(body, self.headers.get("Content-Encoding", ""))
            query = args.get("query", "")
            if not query and not body:
                return self._send(200, b"Ok.\n", {**headers, "Content-Type": "text/plain; charset=UTF-8"})
            sql, data = split_statement(query, body)
            settings = {k: v for k, v in args.items()
                        if k not in PROTOCOL_PARAMS and k not in TRANSPORT_SETTINGS and not k.startswith("param_")}
            params = {k[len("param_"):]: v for k, v in args.items() if k.startswith("param_")}
            database = args.get("database") or self.headers.get("X-ClickHouse-Database")
            fmt = args.get("default_format") or self.headers.get("X-ClickHouse-Format") or "TabSeparated"
            result = self.server.engine.execute(sql, data, database, fmt, settings, params)
        except QueryError as exc:
            message = f"Code: {exc.code}. DB::Exception: {exc}".encode() if not str(exc).startswith("Code:") else str(exc).encode()
            return self._send(exc.status, message + b"\n", {**headers, "X-ClickHouse-Exception-Code": str(exc.code),
                                                              "Content-Type": "text/plain; charset=UTF-8"})
        headers.update({"X-ClickHouse-Format": result.fmt, "X-ClickHouse-Summary": json.dumps(result.summary),
                        "Content-Type": _content_type(result.fmt)})
        self._send(200, result.body, headers)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _content_type(fmt: str) -> str:
    lowered = fmt.lower()
    if lowered.startswith("json"):
        return "application/json; charset=UTF-8"
    if lowered in ("native", "rowbinary", "rowbinarywithnamesandtypes", "parquet", "arrow", "arrowstream"):
        return "application/octet-stream"
    return "text/plain; charset=UTF-8"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], engine: Engine) -> None:
        super().__init__(address, _Handler)
        self.engine = engine


class WarehouseHTTPServer:
    """The embedded warehouse behind ClickHouse's HTTP interface on ``host:port``."""

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 8123) -> None:
        self.engine = engine
        self._server = _Server((host, port), engine)
        self._thread: threading.Thread | None = None

    @classmethod
    def for_settings(cls, cfg: Settings, host: str = "127.0.0.1", port: int = 8123, readonly: bool = False,
                     lock: threading.Lock | None = None) -> "WarehouseHTTPServer":
        """Serve ``cfg``'s embedded warehouse (creating its database if needed)."""
        if not cfg.embedded:
            raise ValueError("the warehouse is a ClickHouse server already (LASTMILE_CLICKHOUSE_URL); query it directly")
        from lastmile.warehouse import connect

        connect(cfg)  # creates the directory and the database; keeps the engine open in this process
        return cls(Engine(str(cfg.warehouse_dir), cfg.clickhouse_database, readonly, lock), host, port)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._server.server_address[0]!s}:{self.port}"

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def start_background(self) -> "WarehouseHTTPServer":
        self._thread = threading.Thread(target=self.serve_forever, name="lastmile-warehouse-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
