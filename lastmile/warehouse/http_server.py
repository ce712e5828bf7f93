"""ClickHouse's HTTP interface in front of the embedded warehouse, for other processes.

chDB lets one process open a data directory. While the worker (or any process) owns it,
dbt, a BI tool, Feast or ``lastmile sql`` in another process reach the warehouse through
this server instead: it speaks enough of ClickHouse's HTTP protocol for clickhouse-connect,
dbt-clickhouse, DBeaver, Superset and Feast to work unmodified, and runs each request on chDB.

What is implemented: ``GET /ping`` and ``GET /``; the query in the ``query`` URL parameter,
the body, or both (``INSERT ... FORMAT X`` in the URL or the body's first line, data after);
``database``, ``default_format`` and a trailing ``FORMAT`` clause; ``param_<name>`` query
parameters; other URL parameters as settings (transport-only settings are ignored);
request bodies compressed with gzip, deflate, lz4 or zstd; ClickHouse's response headers
(``X-ClickHouse-Format``, ``-Summary``, ``-Query-Id``, ``-Timezone``) and errors with
``X-ClickHouse-Exception-Code``: 400 for a malformed request, 401 for missing or wrong
credentials, 403 for a statement the user's role may not run, 500 when the engine fails.

Who may do what: every request except ``/ping`` carries a user and password, the ways
ClickHouse accepts them (:mod:`lastmile.warehouse.auth`); the user's role says whether it
reads only, and under which limits. A read-only server (the default) treats every user as
a reader. What a statement may do is decided on the engine's own parse of it
(:mod:`lastmile.warehouse.query_guard`): nobody writes or reads files, URLs or other servers
through this server, and readers also run under ClickHouse's ``readonly = 1``. Settings in
the URL can only tighten a reader's limits or choose output formatting. A reader sees the
engine's error text only for errors that quote nothing but the statement and the catalogue
(syntax, unknown names, limits); otherwise the error code and name alone.

Limits: no TLS (put a TLS proxy in front when it listens beyond loopback), no sessions
(``session_id`` is ignored: each request starts fresh), no compression of responses, no
progress headers, one query at a time, and results are buffered, not streamed. Production
uses a ClickHouse server (``LASTMILE_CLICKHOUSE_URL``), not this.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import logging
import re
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import chdb

from lastmile.config import Settings
from lastmile.warehouse.auth import (BUILTIN_ROLES, AuthenticationFailed, BadCredentials, GeneratedUser, Role, User,
                                     UserDirectory, credentials, ensure_users, load_users)
from lastmile.warehouse.query_guard import DENIED_FORMATS, FILE_SETTINGS, QueryGuard, Refused

log = logging.getLogger(__name__)

#: URL parameters that are part of the protocol, not ClickHouse settings.
PROTOCOL_PARAMS = {"query", "database", "default_format", "user", "password", "query_id", "session_id",
                   "session_timeout", "session_check", "compress", "decompress", "buffer_size", "quota_key",
                   "role", "wait_end_of_query"}
#: Settings about the HTTP transport itself; chDB has no HTTP layer, so they are dropped.
TRANSPORT_SETTINGS = {"enable_http_compression", "send_progress_in_http_headers", "http_headers_progress_interval_ms",
                      "http_zlib_compression_level", "cancel_http_readonly_queries_on_client_close",
                      "http_response_buffer_size", "http_wait_end_of_query", "add_http_cors_header",
                      "http_native_compression_disable_checksumming_on_decompress", "client_protocol_version"}
#: Settings a reader may send: how results are printed, nothing that reads, writes or loosens.
READER_FORMAT_SETTINGS = frozenset({
    "date_time_output_format", "output_format_json_quote_64bit_integers", "output_format_json_quote_64bit_floats",
    "output_format_json_quote_denormals", "output_format_json_quote_decimals", "output_format_json_named_tuples_as_objects",
    "output_format_json_array_of_rows", "output_format_json_escape_forward_slashes", "output_format_json_validate_utf8",
    "output_format_write_statistics", "output_format_pretty_max_rows", "output_format_pretty_color",
    "output_format_pretty_grid_charset", "output_format_pretty_row_numbers", "output_format_csv_crlf_end_of_line",
    "output_format_tsv_crlf_end_of_line", "format_csv_delimiter", "output_format_decimal_trailing_zeros",
    "output_format_arrow_string_as_string", "output_format_parquet_string_as_string",
    "output_format_arrow_low_cardinality_as_dictionary", "output_format_native_encode_types_in_binary_format",
    "output_format_markdown_escape_special_characters", "extremes", "session_timezone", "max_block_size",
    "join_use_nulls", "cast_keep_nullable", "prefer_column_name_to_alias", "final", "result_overflow_mode",
    "read_overflow_mode", "timeout_overflow_mode", "date_time_input_format", "union_default_mode",
    "joined_subquery_requires_alias", "output_format_json_quote_64bit_integers"})
#: Limits a reader may lower (never raise, never set to 0, which means unlimited).
READER_LOWERABLE = frozenset({"max_result_rows", "max_result_bytes", "max_execution_time", "max_memory_usage",
                              "max_rows_to_read", "max_bytes_to_read", "max_threads", "max_query_size"})
#: Engine errors whose text a reader may see: they quote the statement and the catalogue only.
#: Any other error (parsing data, reading storage, ...) could quote what was read, so a reader
#: gets its code and name alone.
READER_VISIBLE_ERRORS = frozenset({16, 10, 36, 42, 43, 44, 46, 47, 48, 53, 60, 62, 73, 81, 115, 158, 159, 164, 179,
                                   184, 215, 241, 307, 352, 386, 396, 456, 457, 497})
#: Largest request body a reader may send (a statement; inserts are for writers).
READER_MAX_BODY = 16 << 20

_INSERT_FORMAT = re.compile(rb"^\s*INSERT\s+INTO\s.*?\bFORMAT\s+([A-Za-z0-9_]+)", re.I | re.S)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.I)
_INSERT_VALUES = re.compile(r"^\s*INSERT\s+INTO\s+(?:TABLE\s+)?[\w.`\"]+\s*(?:\([^()]*\)\s*)?(VALUES)\b", re.I)
_COMMENTS = re.compile(r"(--[^\n]*\n|/\*.*?\*/|\s+)", re.S)
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DATABASE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ERROR_CODE = re.compile(r"Code:\s*(\d+)")
_ERROR_NAME = re.compile(r"\(([A-Z][A-Z0-9_]+)\)\s*$")
READONLY_CODE = 164  # ClickHouse's READONLY error
AUTHENTICATION_FAILED = 516
BAD_REQUEST = 1002


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
    try:
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
    except Exception as exc:  # each library raises its own error type for a corrupt body
        raise QueryError(f"the request body is not valid {encoding} data", code=BAD_REQUEST, status=400) from exc
    raise QueryError(f"unsupported Content-Encoding {encoding!r} (gzip, deflate, lz4 and zstd are)", code=BAD_REQUEST,
                     status=400)


@dataclass
class Result:
    body: bytes
    fmt: str
    summary: dict[str, str]


def reader_settings(role: Role, requested: dict[str, str]) -> dict[str, str]:
    """The URL settings a reader may apply: output formatting, and limits only lowered.

    Anything else is refused the way a ClickHouse server refuses it to a ``readonly = 1``
    user (code 164), so a URL cannot lift ``readonly`` or the role's limits.
    """
    allowed: dict[str, str] = {}
    for name, value in requested.items():
        if name == "readonly":
            if value.strip() != "1":
                raise QueryError("Cannot modify 'readonly' setting in readonly mode", code=READONLY_CODE, status=403)
            continue
        if name in READER_LOWERABLE:
            ceiling = int(role.limits.get(name, 0))
            if not re.fullmatch(r"\d+", value.strip()) or int(value) <= 0 or (ceiling and int(value) > ceiling):
                raise QueryError(f"Cannot modify '{name}' setting in readonly mode: it may only be lowered "
                                 f"(to 1..{ceiling or 'any'})", code=READONLY_CODE, status=403)
            allowed[name] = value.strip()
            continue
        if name not in READER_FORMAT_SETTINGS:
            raise QueryError(f"Cannot modify '{name}' setting in readonly mode", code=READONLY_CODE, status=403)
        allowed[name] = value
    return allowed


@dataclass
class Engine:
    """Runs one request's statement on chDB with its database, settings and parameters.

    Each request gets its own chDB connection to the process's engine (cheap: ~5 ms), so
    a request's ``USE`` and settings never leak into the next one. ``readonly`` makes every
    user a reader whatever their configured role.
    """

    path: str
    default_database: str
    readonly: bool = True
    lock: threading.Lock | None = None
    users: UserDirectory | None = None
    _guard: QueryGuard | None = field(default=None, repr=False)

    def role_of(self, user: User | None, by_get: bool = False) -> Role:
        """The role a request runs with: the user's, capped to reading on a read-only server.

        A GET only reads, whoever sends it (as on ClickHouse, where GET runs with
        ``readonly = 2``): a link or an image on a web page must never write.
        """
        role = user.role if user is not None else BUILTIN_ROLES["reader"]
        if self.readonly and not role.readonly:
            return BUILTIN_ROLES["reader"]
        if by_get and not role.readonly:
            return Role(role.name, True, role.limits)
        return role

    def execute(self, sql: str, data: bytes | None, database: str | None, fmt: str, settings: dict[str, str],
                params: dict[str, str], user: User | None = None, by_get: bool = False) -> Result:
        role = self.role_of(user, by_get)
        if not sql.strip():
            raise QueryError("Empty query", code=62, status=400)
        database = database or self.default_database
        if not _DATABASE.match(database):
            raise QueryError(f"database name {database!r} is not an identifier", code=BAD_REQUEST, status=400)
        for name in settings:
            if not _SETTING_NAME.match(name):
                raise QueryError(f"Unknown setting {name!r}", code=115, status=400)
            if name.lower().startswith(FILE_SETTINGS):
                raise QueryError(f"setting {name} names a file and is not available through this server",
                                 code=READONLY_CODE if role.readonly else 497, status=403)
        if fmt.lower() in DENIED_FORMATS:
            raise QueryError(f"format {fmt} reads a schema or template file and is not available through this server",
                             code=READONLY_CODE if role.readonly else 497, status=403)
        if role.readonly:
            if data is not None:
                raise QueryError("Cannot execute query in readonly mode: INSERT is a write", code=READONLY_CODE,
                                 status=403)
            settings = reader_settings(role, settings)
        lock = self.lock or _NO_LOCK
        with lock:
            conn = chdb.connect(self.path)
            try:
                return self._run(conn, role, sql, data, database, fmt, settings, params)
            except QueryError:
                raise
            except Refused as exc:
                raise QueryError(str(exc), code=exc.code, status=exc.status) from exc
            except Exception as exc:
                raise self._engine_error(str(exc), role) from exc
            finally:
                conn.close()

    def _run(self, conn: Any, role: Role, sql: str, data: bytes | None, database: str, fmt: str,
             settings: dict[str, str], params: dict[str, str]) -> Result:
        if self._guard is None:
            self._guard = QueryGuard.for_connection(conn)
        conn.query(f"USE `{database}`")
        if data is None and not role.readonly and first_keyword(sql) == "INSERT":
            sql, data = _inline_values(sql)
        # The guard's own statements only parse (the text travels as a parameter, EXPLAIN AST
        # runs nothing), so they come before the limits, which they would otherwise count.
        checked = self._guard.check(conn, sql, params, role.readonly, database)
        for name, value in {**role.limits, **settings}.items():
            conn.query(f"SET {name} = {_setting_literal(str(value))}")
        if role.readonly:
            conn.query("SET readonly = 1")  # last: from here on the session's settings cannot change
        began = time.perf_counter()
        if checked.needs_data and data is None:
            raise QueryError("an INSERT's rows go after INSERT INTO t [(columns)] VALUES, or after FORMAT X in the body",
                             code=62, status=400)  # the canonical form has no rows: it would insert nothing, silently
        if data is not None:
            if checked.kind != "InsertQuery":
                raise QueryError("data in the request body goes with an INSERT ... FORMAT statement", code=62, status=400)
            result = self._insert(conn, checked.statement, data, params)
            body, out_fmt = b"", fmt
        else:
            out_fmt = checked.output_format or fmt
            result = conn.query(checked.statement, out_fmt, params=params)
            body = result.bytes() or b""
        summary = {"read_rows": str(_attr(result, "rows_read")), "read_bytes": str(_attr(result, "bytes_read")),
                   "written_rows": str(_attr(result, "rows_written")), "written_bytes": str(_attr(result, "bytes_written")),
                   "total_rows_to_read": "0", "result_rows": "0", "result_bytes": str(len(body)),
                   "elapsed_ns": str(int((time.perf_counter() - began) * 1e9))}
        return Result(body, out_fmt, summary)

    @staticmethod
    def _engine_error(message: str, role: Role) -> QueryError:
        """The engine's failure as the client sees it: readers get the text only when it is safe.

        An engine message can quote what the statement read (a value that failed to parse, a
        line of a file); for a reader only the error kinds listed in READER_VISIBLE_ERRORS
        keep their text. The full message goes to this process's log for the operator.
        """
        found = _ERROR_CODE.search(message)
        code = int(found.group(1)) if found else 1001
        if not role.readonly or code in READER_VISIBLE_ERRORS:
            return QueryError(message, code=code)
        log.warning("warehouse HTTP: engine error %s withheld from a reader: %s", code, message)
        name = _ERROR_NAME.search(message.strip())
        label = f" ({name.group(1)})" if name else ""
        return QueryError(f"Code: {code}. DB::Exception: the statement failed with error {code}{label}; the engine's "
                          f"message is withheld from read-only users (the server's log has it).{label}", code=code)

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
            quoted = tmp.name.replace("\\", "\\\\").replace("'", "\\'")
            return conn.query(f"{head} FROM INFILE '{quoted}' FORMAT {match.group(1)}", "TabSeparated", params=params)
        finally:
            Path(tmp.name).unlink(missing_ok=True)


def _inline_values(sql: str) -> tuple[str, bytes | None]:
    """``INSERT INTO t VALUES (...)`` as a statement and its data, so the data is never parsed as SQL.

    The engine would otherwise run whatever follows the values after a ``;``. The data goes
    through ``FROM INFILE`` like any other insert body.
    """
    found = _INSERT_VALUES.match(sql)
    if not found:
        return sql, None
    return sql[: found.start(1)] + "FORMAT Values", sql[found.end(1):].encode()


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
        return _text(text), None
    end = found.end()
    while end < len(text) and text[end:end + 1] in (b" ", b"\t", b"\r"):
        end += 1
    if text[end:end + 1] == b"\n":
        end += 1
    return _text(text[: found.end()]), text[end:]


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise QueryError(f"the statement is not valid UTF-8 (byte {exc.start})", code=BAD_REQUEST, status=400) from exc


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall between them

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        return  # quiet: clients poll; errors go back in responses

    def do_GET(self) -> None:
        self._handle(None)

    def do_POST(self) -> None:
        self._handle(self._read_body)

    def _read_body(self, limit: int | None) -> bytes:
        """The request body, refused (400/413) when its framing is malformed or it is too large."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked(limit)
        raw = (self.headers.get("Content-Length") or "0").strip()
        if not raw.isdigit():
            raise QueryError(f"Content-Length {raw[:40]!r} is not a number", code=BAD_REQUEST, status=400)
        length = int(raw)
        if limit is not None and length > limit:
            raise QueryError(f"the request body is larger than {limit} bytes", code=BAD_REQUEST, status=413)
        return self.rfile.read(length) if length else b""

    def _read_chunked(self, limit: int | None) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024).split(b";")[0].strip() or b"0"
            try:
                size = int(line, 16)
            except ValueError as exc:
                raise QueryError("malformed chunked body", code=BAD_REQUEST, status=400) from exc
            if size == 0:
                self.rfile.readline(1024)
                return b"".join(parts)
            total += size
            if limit is not None and total > limit:
                raise QueryError(f"the request body is larger than {limit} bytes", code=BAD_REQUEST, status=413)
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _handle(self, read_body: Any) -> None:
        query_id = str(uuid.uuid4())
        headers = {"X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Timezone": "UTC",
                   "X-ClickHouse-Server-Display-Name": "lastmile-chdb"}
        try:
            self._answer(read_body, headers)
        except QueryError as exc:
            if read_body is not None and exc.status != 200:
                self.close_connection = True  # the body may be unread: do not parse it as the next request
            self._error(exc.status, exc.code, str(exc), headers)
        except Exception:  # never a traceback to the client, never a dropped connection
            log.exception("warehouse HTTP: request failed")
            self.close_connection = True
            self._error(500, 1001, "the server failed to handle the request (its log has the details)", headers)

    def _answer(self, read_body: Any, headers: dict[str, str]) -> None:
        url = urlsplit(self.path)
        if url.path.rstrip("/") in ("/ping", "/replicas_status"):
            return self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
        if url.path.rstrip("/") not in ("",):
            raise QueryError(f"there is no handler for {url.path[:100]!r} (/, /ping are)", code=BAD_REQUEST, status=404)
        try:
            args = dict(parse_qsl(url.query, keep_blank_values=True, strict_parsing=False, errors="strict"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise QueryError("the URL's parameters are not valid UTF-8", code=BAD_REQUEST, status=400) from exc
        if args.get("query_id"):
            headers["X-ClickHouse-Query-Id"] = args["query_id"][:200]
        has_body = read_body is not None and (self.headers.get("Content-Length", "0").strip() not in ("", "0")
                                              or self.headers.get("Transfer-Encoding"))
        if not args.get("query") and not has_body:
            return self._send(200, b"Ok.\n", {**headers, "Content-Type": "text/plain; charset=UTF-8"})
        user = self._authenticate(args)
        role = self.server.engine.role_of(user, by_get=read_body is None)
        body = read_body(READER_MAX_BODY if role.readonly else None) if read_body is not None else b""
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
        if not _SETTING_NAME.match(fmt):
            raise QueryError(f"unknown format {fmt[:40]!r}", code=73, status=400)
        result = self.server.engine.execute(sql, data, database, fmt, settings, params, user, by_get=read_body is None)
        headers.update({"X-ClickHouse-Format": result.fmt, "X-ClickHouse-Summary": json.dumps(result.summary),
                        "Content-Type": _content_type(result.fmt)})
        self._send(200, result.body, headers)

    def _authenticate(self, args: dict[str, str]) -> User:
        directory = self.server.engine.users
        if directory is None:
            raise QueryError("no users are configured", code=AUTHENTICATION_FAILED, status=401)
        try:
            name, password = credentials(self.headers, args)
        except BadCredentials as exc:
            raise QueryError(str(exc), code=AUTHENTICATION_FAILED, status=400) from exc
        except AuthenticationFailed as exc:
            raise QueryError("only HTTP basic authentication is accepted in the Authorization header",
                             code=AUTHENTICATION_FAILED, status=401) from exc
        try:
            return directory.authenticate(name, password)
        except AuthenticationFailed as exc:
            shown = name[:64].encode("ascii", "replace").decode()
            raise QueryError(f"{shown}: Authentication failed: password is incorrect, or there is no user with such "
                             "name. (AUTHENTICATION_FAILED)", code=AUTHENTICATION_FAILED, status=401) from exc

    def _error(self, status: int, code: int, message: str, headers: dict[str, str]) -> None:
        text = message if message.startswith("Code:") else f"Code: {code}. DB::Exception: {message}"
        self._send(status, text.encode("utf-8", "replace") + b"\n",
                   {**headers, "X-ClickHouse-Exception-Code": str(code), "Content-Type": "text/plain; charset=UTF-8"})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
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


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WarehouseHTTPServer:
    """The embedded warehouse behind ClickHouse's HTTP interface on ``host:port``."""

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 8123) -> None:
        self.engine = engine
        self._server = _Server((host, port), engine)
        self._thread: threading.Thread | None = None
        self._served = False
        self.generated: GeneratedUser | None = None

    @classmethod
    def for_settings(cls, cfg: Settings, host: str = "127.0.0.1", port: int = 8123, readonly: bool = True,
                     lock: threading.Lock | None = None) -> "WarehouseHTTPServer":
        """Serve ``cfg``'s embedded warehouse (creating its database if needed) to its configured users.

        With no users file at the default place, a first reader is generated (see
        :attr:`generated` for where its password is); a broken users file stops the start
        with :class:`~lastmile.warehouse.auth.UsersConfigError`.
        """
        if not cfg.embedded:
            raise ValueError("the warehouse is a ClickHouse server already (LASTMILE_CLICKHOUSE_URL); query it directly")
        from lastmile.warehouse import connect

        generated = ensure_users(cfg.warehouse_users_file, cfg.home / "warehouse_users.toml", cfg.home)
        users = load_users(cfg.warehouse_users_file)
        connect(cfg)  # creates the directory and the database; keeps the engine open in this process
        server = cls(Engine(str(cfg.warehouse_dir), cfg.clickhouse_database, readonly, lock, users), host, port)
        server.generated = generated
        return server

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._server.server_address[0]!s}:{self.port}"

    def serve_forever(self) -> None:
        self._served = True
        self._server.serve_forever(poll_interval=0.2)

    def start_background(self) -> "WarehouseHTTPServer":
        self._thread = threading.Thread(target=self.serve_forever, name="lastmile-warehouse-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._served:  # shutdown() waits for a serving loop: it would hang on a server never started
            self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
