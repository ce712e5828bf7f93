"""The verification pass of a forget request: search everything for what names the person.

``lastmile forget`` reports success only when this finds nothing. It searches

* every table of the warehouse, every string-typed column, with ``apply_deleted_mask = 0``
  (rows a lightweight delete only masked count as traces) and without ``FINAL`` (replaced
  versions awaiting a merge count too);
* every file under the data directory, binary files included, as bytes: the warehouse's parts
  and mutation files, the feature store's SQLite file (free pages included), event,
  reference and model files.

for the person's raw values (every spelling known), tokens and OneIDs. The one planned
exception is the suppression list ``identity_forgotten``: it must keep the tokens so that a
replayed file cannot bring the person back; it is reported apart, not as a trace.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

from lastmile.warehouse import Warehouse, quote_ident

#: Tables that keep tokens of forgotten people by design (see the module docstring).
SUPPRESSION_TABLES = ("identity_forgotten",)
#: Shorter needles would match by chance in binary files.
MIN_NEEDLE = 6


@dataclass
class Verification:
    traces: list[str] = field(default_factory=list)
    searched_tables: int = 0
    searched_files: int = 0
    suppression_rows: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.traces


def needles(oneids: set[str], tokens: set[str], spellings: set[str]) -> list[str]:
    return sorted({n for n in (*oneids, *tokens, *spellings) if len(n.strip()) >= MIN_NEEDLE})


def search_tables(warehouse: Warehouse, wanted: list[str], result: Verification) -> None:
    """Count rows holding any needle in any string-typed column, per table."""
    if not wanted:
        return
    columns: dict[str, list[str]] = {}
    for table, column in warehouse.rows("""
            SELECT c.table, c.name FROM system.columns AS c
            INNER JOIN system.tables AS t ON t.database = c.database AND t.name = c.table
            WHERE c.database = currentDatabase() AND NOT t.is_temporary
              AND t.engine NOT IN ('View', 'MaterializedView', 'LiveView', 'WindowView', 'Dictionary')
              AND (c.type LIKE '%String%' OR c.type LIKE 'Map(%' OR c.type LIKE 'Array(%' OR c.type LIKE 'Tuple(%')
            ORDER BY c.table, c.position"""):
        columns.setdefault(table, []).append(column)
    for table, cols in columns.items():
        if table.startswith("forget_scratch_"):
            continue
        result.searched_tables += 1
        where = " OR ".join(f"multiSearchAny(toString({quote_ident(c)}), {{n:Array(String)}})" for c in cols)
        n = int(warehouse.scalar(f"SELECT count() FROM {quote_ident(table)} WHERE {where} SETTINGS apply_deleted_mask = 0",
                                 {"n": wanted}))
        if not n:
            continue
        if table in SUPPRESSION_TABLES:
            result.suppression_rows += n
            continue
        hit = [c for c in cols if int(warehouse.scalar(
            f"SELECT count() FROM {quote_ident(table)} WHERE multiSearchAny(toString({quote_ident(c)}), {{n:Array(String)}}) "
            "SETTINGS apply_deleted_mask = 0", {"n": wanted}))]
        result.traces.append(f"table {table}: {n} row{'s' if n != 1 else ''} (columns {', '.join(hit)})")


def suppression_paths(warehouse: Warehouse) -> list[Path]:
    """Where the suppression list's parts live on disk (embedded warehouse)."""
    rows = warehouse.rows("SELECT data_paths FROM system.tables WHERE database = currentDatabase() AND name IN {t:Array(String)}",
                          {"t": list(SUPPRESSION_TABLES)})
    return [Path(p).resolve() for (paths,) in rows for p in paths]


def search_files(home: Path, wanted: list[str], result: Verification, skip: list[Path] = (),
                 tables: dict[str, str] | None = None) -> None:
    """Every regular file under ``home`` (symlinks not followed), searched as bytes; ``tables``
    (uuid -> name) names the warehouse table a part file belongs to."""
    tables = tables or {}
    raw = [(n, n.encode()) for n in wanted]
    skipped = {str(p).rstrip("/") for p in skip}
    for root, dirs, files in os.walk(home):
        dirs[:] = [d for d in dirs if str(Path(root, d).resolve()) not in skipped]
        for name in files:
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            result.searched_files += 1
            size = path.stat().st_size
            if not size:
                continue
            try:
                with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                    found = [n for n, b in raw if data.find(b) != -1]
            except (OSError, ValueError):
                found = [n for n, b in raw if b in path.read_bytes()]
            if found:
                kinds = sorted({_kind(n) for n in found})
                table = next((t for uuid, t in tables.items() if uuid in path.parts), "")
                result.traces.append(f"file {path.relative_to(home)}{f' (table {table})' if table else ''}: {', '.join(kinds)}")


def _kind(needle: str) -> str:
    if needle.startswith("oid_"):
        return "OneID"
    if len(needle) == 32 and all(c in "0123456789abcdef" for c in needle):
        return "token"
    return "raw value"


def verify(warehouse: Warehouse, home: Path | None, oneids: set[str], tokens: set[str], spellings: set[str],
           embedded: bool = True) -> Verification:
    """Search the warehouse and the data directory for the person; see the module docstring."""
    result = Verification()
    wanted = needles(oneids, tokens, spellings)
    search_tables(warehouse, wanted, result)
    if home is not None and home.is_dir():
        tables = {str(u): t for u, t in warehouse.rows(
            "SELECT toString(uuid), name FROM system.tables WHERE database = currentDatabase()")} if embedded else {}
        search_files(home, wanted, result, suppression_paths(warehouse) if embedded else [], tables)
    if not embedded:
        result.notes.append("the warehouse is a ClickHouse server: its files were not searched (the server removes "
                            "replaced parts after its old_parts_lifetime)")
    return result
