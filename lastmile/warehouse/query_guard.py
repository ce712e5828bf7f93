"""What a statement sent to the warehouse's HTTP interface may do, decided from ClickHouse's parse.

The HTTP interface runs statements on the embedded engine, which lives in a process that can
read and write the data directory (the hash key, the quarantine, the raw events). Deciding by
keywords is easy to fool (comments, quoting, nesting, a second statement after ``;``), so the
engine parses the statement itself and the decision is taken on its syntax tree:

1. ``formatQuerySingleLine`` receives the text as a *query parameter* (a value, never
   executed) and either refuses it (syntax error, several statements) or returns it in
   canonical form. The canonical form is what is explained and what runs, so the statement
   checked is the statement executed.
2. ``EXPLAIN AST`` of the canonical form gives the tree; every node is checked.

Refused for everyone: ``INTO OUTFILE`` (the engine writes the file itself), ``FROM INFILE``,
table functions and table engines that reach files, URLs or other servers (anything but the
small allow-list of generators below), the scalar functions that read files, dictionaries
created here (their sources read files or servers), and server administration (``SYSTEM``,
``BACKUP``, users, grants, ``ATTACH ... FROM`` a path). The read-only role may also only
SELECT / WITH, DESCRIBE, EXISTS, a few SHOW forms and EXPLAIN of those; it may not use a
``SETTINGS`` clause, and reads the ``system`` database only through an allow-list of catalogue
tables (not the query log, mutations, errors or processes, which quote other people's
statements and values).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

#: Table functions that only generate rows or wrap a subquery: nothing outside the warehouse.
ALLOWED_TABLE_FUNCTIONS = frozenset({"numbers", "numbers_mt", "zeros", "zeros_mt", "generaterandom", "generate_series",
                                     "generateseries", "primes", "values", "sqlstandardvalues", "null", "view",
                                     "viewifpermitted", "format"})
#: Table functions known even when the engine's catalogue cannot be read (the catalogue is
#: read at start-up and adds every other name the engine knows).
KNOWN_TABLE_FUNCTIONS = frozenset({"file", "filecluster", "url", "urlcluster", "s3", "s3cluster", "gcs", "oss", "cosn",
                                   "hdfs", "hdfscluster", "remote", "remotesecure", "cluster", "clusterallreplicas",
                                   "mysql", "postgresql", "jdbc", "odbc", "executable", "input", "azureblobstorage",
                                   "azureblobstoragecluster", "mongodb", "redis", "sqlite", "dictionary", "merge", "loop",
                                   "filesystem", "python", "eval", "iceberg", "deltalake", "hudi", "arrowstream"})
#: Scalar functions that read files, models or the server's certificates and symbols.
DENIED_FUNCTIONS = frozenset({"file", "catboostevaluate", "naivebayesclassifier", "showcertificate", "addresstoline",
                              "addresstolinewithinlines", "addresstosymbol", "demangle", "getserversetting"})
#: Table engines a writer may create: storage inside the warehouse, nothing that reaches out.
ALLOWED_ENGINES = frozenset({"mergetree", "replacingmergetree", "summingmergetree", "aggregatingmergetree",
                             "collapsingmergetree", "versionedcollapsingmergetree", "coalescingmergetree",
                             "graphitemergetree", "memory", "log", "tinylog", "stripelog", "null", "set", "join",
                             "buffer", "generaterandom"})
#: Formats that read a schema or template file named by a setting.
DENIED_FORMATS = frozenset({"template", "templateignorespaces", "capnproto", "protobuf", "protobufsingle",
                            "protobuflist"})
#: Settings that name files to read or write (the formats above, generated schemas).
FILE_SETTINGS = ("format_template", "format_schema", "output_format_schema")
#: ``system`` tables the read-only role may read: the catalogue BI tools browse, and counters.
#: Not the query log, mutations, errors, processes, caches or named collections, which carry
#: other statements' text and values.
READER_SYSTEM_TABLES = frozenset({"one", "numbers", "numbers_mt", "zeros", "zeros_mt", "primes", "databases", "tables",
                                  "columns", "functions", "settings", "merge_tree_settings", "data_type_families",
                                  "table_engines", "table_functions", "database_engines", "formats",
                                  "aggregate_function_combinators", "build_options", "time_zones", "collations",
                                  "keywords", "parts", "parts_columns", "data_skipping_indices", "projections",
                                  "projection_parts", "constraints", "contributors", "licenses", "current_roles",
                                  "enabled_roles", "clusters", "metrics", "events", "asynchronous_metrics", "codecs"})
#: Statements the read-only role may run (the kind of the tree's root).
READER_ROOTS = frozenset({"SelectWithUnionQuery", "DescribeQuery", "ExistsTableQuery", "ExistsViewQuery",
                          "ExistsDatabaseQuery", "ExistsDictionaryQuery", "ShowTables", "ShowColumns", "ShowIndexes",
                          "ShowCreateTableQuery", "ShowCreateViewQuery", "ShowCreateDatabaseQuery",
                          "ShowCreateDictionaryQuery", "ShowEngineQuery", "ShowFunctions", "ShowSetting", "Explain"})
#: Statements a writer may run besides the reader's: DDL and DML on the warehouse's own tables.
WRITER_ROOTS = READER_ROOTS | frozenset({"InsertQuery", "CreateQuery", "DropQuery", "Rename", "AlterQuery", "TruncateQuery",
                                         "OptimizeQuery", "DeleteQuery", "UpdateQuery", "CheckQuery", "UseQuery", "Set",
                                         "UndropQuery", "DetachQuery", "CreateSQLFunctionQuery", "DropFunctionQuery"})
#: Nodes whose direct Literal children are an output file (``INTO OUTFILE``, ``COMPRESSION``)
#: or, for an insert, an input file (``FROM INFILE``).
_FILE_CARRIERS = READER_ROOTS | {"SelectIntersectExceptQuery", "InsertQuery"}
#: Functions whose second argument may name a table (``x IN db.table``).
_IN_FUNCTIONS = frozenset({"in", "notin", "globalin", "globalnotin", "nullin", "notnullin", "globalnullin",
                           "globalnotnullin"})

READONLY = 164
ACCESS_DENIED = 497
SYNTAX_ERROR = 62

_LINE = re.compile(r"^( *)(.*?)(?: \(children \d+\))?$")
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|`(?:[^`\\]|\\.)*`|\"(?:[^\"\\]|\\.)*\"", re.S)
_OUTFILE = re.compile(r"\bINTO\s+OUTFILE\b|\bFROM\s+INFILE\b", re.I)
_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)", re.I)
_CUSTOM_DISK = re.compile(r"\bdisk\s*\(", re.I)
_SETTING_ASSIGNED = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*=", re.I)
_PARAM = "lastmile_guard_statement"


class Refused(Exception):
    """The statement may not run here; ``code`` is ClickHouse's error code for the reason."""

    def __init__(self, message: str, code: int, status: int = 403) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass
class Node:
    """One node of ``EXPLAIN AST``: its label (``Function file``, ``TableIdentifier t``) and children."""

    label: str
    children: list["Node"] = field(default_factory=list)
    parent: "Node | None" = None

    @property
    def kind(self) -> str:
        return self.label.split(" ", 1)[0]

    @property
    def name(self) -> str:
        """The second word: a function's or identifier's name (aliases dropped)."""
        parts = self.label.split(" ")
        return parts[1] if len(parts) > 1 else ""

    def walk(self) -> Any:
        yield self
        for child in self.children:
            yield from child.walk()


def parse_ast(text: str) -> Node:
    """The tree printed by ``EXPLAIN AST`` (one node per line, one space of indent per level).

    String literals are printed escaped, so a value cannot fake a line; a tree with more
    than one root (which only several statements would print) is refused by the caller.
    """
    roots: list[Node] = []
    stack: list[tuple[int, Node]] = []
    for raw in text.splitlines():
        if not raw.strip():
            continue
        found = _LINE.match(raw)
        assert found is not None
        depth, label = len(found.group(1)), found.group(2).strip()
        while stack and stack[-1][0] >= depth:
            stack.pop()
        node = Node(label)
        if stack:
            node.parent = stack[-1][1]
            node.parent.children.append(node)
        else:
            roots.append(node)
        stack.append((depth, node))
    if len(roots) != 1:
        raise Refused("the request must hold exactly one statement", SYNTAX_ERROR, status=400)
    return roots[0]


@dataclass(frozen=True)
class Checked:
    """A statement that may run: its canonical text, kind and the format it asks for."""

    statement: str
    kind: str
    output_format: str | None
    needs_data: bool = False  # an INSERT without a SELECT: its rows come as data


@dataclass
class QueryGuard:
    """Decides, on the engine's own parse, whether a role may run a statement."""

    table_functions: frozenset[str] = KNOWN_TABLE_FUNCTIONS

    @classmethod
    def for_connection(cls, conn: Any) -> "QueryGuard":
        """A guard that knows every table function this engine has (new ones are refused too)."""
        try:
            names = conn.query("SELECT name FROM system.table_functions", "TabSeparatedRaw").bytes().decode().split()
        except Exception:  # the built-in list still holds every function that reaches outside
            names = []
        return cls(KNOWN_TABLE_FUNCTIONS | {n.lower() for n in names})

    def check(self, conn: Any, sql: str, params: dict[str, str], readonly: bool, database: str) -> Checked:
        """The statement in canonical form, or :class:`Refused` saying why it may not run."""
        canonical = canonical_statement(conn, sql)
        try:
            text = conn.query(f"EXPLAIN AST {canonical}", "TabSeparatedRaw", params=params).bytes().decode()
        except Exception as exc:
            code = _code(str(exc)) or SYNTAX_ERROR
            raise Refused(_engine_reason(str(exc)), code, status=403 if code == READONLY else 400) from exc
        root = parse_ast(text)
        self.check_tree(root, readonly, database)
        self.check_text(canonical, readonly)
        needs_data = root.kind == "InsertQuery" and not any(c.kind == "SelectWithUnionQuery" for c in root.children)
        return Checked(canonical, root.kind, _output_format(root), needs_data)

    @staticmethod
    def check_text(canonical: str, readonly: bool) -> None:
        """What ``EXPLAIN AST`` does not print, read on the engine's canonical text (quoted parts removed).

        The tree shows a SETTINGS clause as a bare ``Set`` node and an insert's format not at
        all; the canonical text has both in one fixed spelling. Also a second look for
        ``INTO OUTFILE`` and ``FROM INFILE``.
        """
        denied = _denied(readonly)
        unquoted = _QUOTED.sub("''", canonical)
        if _OUTFILE.search(unquoted):
            raise Refused("INTO OUTFILE and FROM INFILE are not available through this server", denied)
        for name in _FORMAT.findall(unquoted):
            if name.lower() in DENIED_FORMATS:
                raise Refused(f"format {name} reads a schema or template file and is not available through this "
                              "server", denied)
        if _CUSTOM_DISK.search(unquoted):
            raise Refused("disk(...) places data outside the warehouse and is not available through this server", denied)
        for name in _SETTING_ASSIGNED.findall(unquoted):
            if name.lower().startswith(FILE_SETTINGS):
                raise Refused(f"setting {name} names a file and is not available through this server", denied)

    def check_tree(self, root: Node, readonly: bool, database: str) -> None:
        allowed_roots = READER_ROOTS if readonly else WRITER_ROOTS
        denied = _denied(readonly)
        explained = root
        while explained.kind == "Explain":
            inner = [c for c in explained.children if c.kind != "Set" and c.kind != "Literal" and c.kind != "Identifier"]
            if not inner:
                break
            explained = inner[0]
        for statement in (root, explained):
            if statement.kind not in allowed_roots:
                what = statement.label.split(" (")[0]
                if readonly:
                    raise Refused(f"Cannot execute query in readonly mode: {what} is not a read "
                                  "(SELECT, WITH, DESCRIBE, EXISTS, SHOW and EXPLAIN are)", READONLY)
                raise Refused(f"{what} is not available through this server", ACCESS_DENIED)
        for node in root.walk():
            kind = node.kind
            if kind == "Literal" and node.parent is not None and node.parent.kind in _FILE_CARRIERS:
                raise Refused("INTO OUTFILE and FROM INFILE are not available through this server", denied)
            if kind == "Function":
                name = node.name.lower()
                if name in DENIED_FUNCTIONS or (name in self.table_functions and name not in ALLOWED_TABLE_FUNCTIONS):
                    raise Refused(f"{node.name}() reaches outside the warehouse and is not available through this server",
                                  denied)
                if name in _IN_FUNCTIONS and node.children and len(node.children[0].children) == 2:
                    target = node.children[0].children[1]
                    if target.kind == "Identifier" and readonly:
                        self._check_table(target.name, database, denied)
            elif kind == "TableIdentifier" and readonly:
                self._check_table(node.name, database, denied)
            elif kind == "Set" and readonly and not (node.parent is not None and node.parent.kind == "Explain"):
                raise Refused("Cannot modify settings in readonly mode: a SETTINGS clause is not allowed", READONLY)
            elif kind == "Storage" and node.label.startswith("Storage definition"):
                engines = [c for c in node.children if c.kind == "Function"]
                if engines and engines[0].name.lower() not in ALLOWED_ENGINES:
                    raise Refused(f"table engine {engines[0].name} reaches outside the warehouse and is not available "
                                  "through this server", denied)
            elif kind == "Dictionary" or kind == "FunctionWithKeyValueArguments":
                raise Refused("dictionaries read files or other servers and cannot be created through this server",
                              denied)

    @staticmethod
    def _check_table(name: str, database: str, code: int) -> None:
        parts = name.replace("`", "").split(".")
        schema, table = (parts[0], ".".join(parts[1:])) if len(parts) > 1 else (database, parts[0])
        if schema == "system" and table not in READER_SYSTEM_TABLES:
            raise Refused(f"system.{table} is not readable by the read-only role (the catalogue tables are)", code)


def canonical_statement(conn: Any, sql: str) -> str:
    """The engine's canonical one-line form of ``sql``, which must be exactly one statement.

    The text travels as a query parameter, so nothing in it runs. The result is formatted
    once more and must come back unchanged: a canonical text that parsed differently (into
    two statements, say) would not, so what is explained next is exactly one statement.
    """
    try:
        rows = conn.query(f"SELECT formatQuerySingleLine({{{_PARAM}:String}}) AS c, formatQuerySingleLine(c) = c",
                          "TabSeparatedRaw", params={_PARAM: escape_parameter(sql)}).bytes().decode()
    except Exception as exc:
        raise Refused(_engine_reason(str(exc)), _code(str(exc)) or SYNTAX_ERROR, status=400) from exc
    canonical, _, stable = rows.rstrip("\n").rpartition("\t")
    if stable != "1" or not canonical or "\n" in canonical:
        raise Refused("the statement has no stable canonical form", SYNTAX_ERROR, status=400)
    return canonical


def escape_parameter(value: str) -> str:
    """A query parameter's text as ClickHouse reads it (escaped like TabSeparated)."""
    return (value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
            .replace("\0", "\\0"))


def _output_format(root: Node) -> str | None:
    """The ``FORMAT`` clause: the statement's direct Identifier child (DESCRIBE and SELECT print it so)."""
    if root.kind in ("SelectWithUnionQuery", "DescribeQuery", "ShowTables", "ShowColumns", "ShowCreateTableQuery",
                     "Explain", "ExistsTableQuery"):
        formats = [c.name for c in root.children if c.kind == "Identifier"]
        if root.kind in ("ExistsTableQuery", "ShowCreateTableQuery"):
            formats = formats[1:]  # the first is the table
        return formats[-1] if formats else None
    return None


def _denied(readonly: bool) -> int:
    return READONLY if readonly else ACCESS_DENIED


_CODE = re.compile(r"Code:\s*(\d+)")


def _code(message: str) -> int:
    found = _CODE.search(message)
    return int(found.group(1)) if found else 0


def _engine_reason(message: str) -> str:
    """The engine's reason for a syntax error, without the wrapper query that carried the text."""
    reason = message.split(": In scope ", 1)[0]
    reason = re.sub(r"^(Code:\s*\d+\.\s*DB::Exception:\s*)+", "", reason)
    return reason.strip()
