"""Physical erasure of rows and values: gone from the parts on disk, not only hidden.

ClickHouse's lightweight ``DELETE`` only masks rows (``SETTINGS apply_deleted_mask = 0``
reads them back), and every mutation stores its predicate in a ``mutation_N.txt`` file next to
the table's parts - a ``WHERE phone = '…'`` would keep the phone there for good. So:

* predicates never hold a value: the values to erase (tokens, OneIDs, quarantine keys) sit in
  a scratch ``Memory`` table (nothing on disk) and every predicate reads
  ``col IN (SELECT v FROM scratch)``; the scratch table is dropped at the end;
* embedded warehouse (chDB, one process owns the directory): each touched table is rewritten
  into a copy without the erased rows and values, swapped in with ``EXCHANGE TABLES``, and the
  old table is dropped with ``SYNC`` - its parts, outdated parts and mutation files leave the
  disk before the request reports success (ClickHouse would otherwise keep outdated parts for
  ``old_parts_lifetime``, 8 minutes by default);
* ClickHouse server (other writers may be inserting): ``ALTER TABLE … DELETE/UPDATE`` with
  ``mutations_sync = 2``, which rewrites the parts holding the rows before it returns; the
  server removes the replaced parts after its ``old_parts_lifetime``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from lastmile.warehouse import Warehouse, quote_ident


@dataclass
class _TableErasure:
    deletes: list[str] = field(default_factory=list)
    #: column -> (condition, replacement) applied in order
    blanks: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


class Erasure:
    """Collects what to erase per table, then applies it once per table (:meth:`apply`)."""

    def __init__(self, warehouse: Warehouse, values: Iterable[str]) -> None:
        self.warehouse = warehouse
        self.scratch = f"forget_scratch_{uuid.uuid4().hex[:12]}"
        warehouse.command(f"CREATE TABLE {quote_ident(self.scratch)} (v String) ENGINE = Memory")
        rows = [(v,) for v in sorted(set(values)) if v]
        if rows:
            warehouse.insert_rows(self.scratch, rows, ["v"])
        self._tables: dict[str, _TableErasure] = {}

    def __enter__(self) -> "Erasure":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.warehouse.command(f"DROP TABLE IF EXISTS {quote_ident(self.scratch)} SYNC")

    def add(self, values: Iterable[str]) -> None:
        """More values for the predicates (e.g. quarantine keys found later)."""
        rows = [(v,) for v in sorted(set(values)) if v]
        if rows:
            self.warehouse.insert_rows(self.scratch, rows, ["v"])

    def among(self, expression: str) -> str:
        """A predicate: ``expression`` is one of the values to erase."""
        return f"({expression}) IN (SELECT v FROM {quote_ident(self.scratch)})"

    def count(self, table: str, condition: str, final: bool = False) -> int:
        """Rows matching ``condition``; ``final`` counts a replaced row once (ReplacingMergeTree)."""
        return int(self.warehouse.scalar(f"SELECT count() FROM {quote_ident(table)}{' FINAL' if final else ''} WHERE {condition}"))

    def delete(self, table: str, condition: str) -> None:
        self._tables.setdefault(table, _TableErasure()).deletes.append(condition)

    def blank(self, table: str, column: str, condition: str, replacement: str) -> None:
        """Set a String column to ``replacement`` (``NULL`` or ``''``) where ``condition`` holds."""
        self._tables.setdefault(table, _TableErasure()).blanks.setdefault(column, []).append((condition, replacement))

    def apply(self) -> None:
        for table, work in self._tables.items():
            if self.warehouse.embedded:
                self._rewrite(table, work)
            else:
                self._mutate(table, work)
        self._tables.clear()

    def _assignments(self, work: _TableErasure) -> dict[str, str]:
        out: dict[str, str] = {}
        for column, steps in work.blanks.items():
            expr = quote_ident(column)
            for condition, replacement in steps:
                if replacement == "NULL":
                    # ClickHouse computes if(c, NULL, x) by putting a null mask over x: the old
                    # string would stay in the part, only hidden. Blank it under the mask too.
                    expr = f"if({condition}, NULL, if({condition}, '', {expr}))"
                else:
                    expr = f"if({condition}, {replacement}, {expr})"
            out[column] = expr
        return out

    def _mutate(self, table: str, work: _TableErasure) -> None:
        name = quote_ident(table)
        if work.deletes:
            self.warehouse.command(f"ALTER TABLE {name} DELETE WHERE {' OR '.join(work.deletes)}",
                                   settings={"mutations_sync": 2})
        assignments = self._assignments(work)
        if assignments:
            where = " OR ".join(c for steps in work.blanks.values() for c, _ in steps)
            sets = ", ".join(f"{quote_ident(c)} = {e}" for c, e in assignments.items())
            self.warehouse.command(f"ALTER TABLE {name} UPDATE {sets} WHERE {where}", settings={"mutations_sync": 2})

    def _rewrite(self, table: str, work: _TableErasure) -> None:
        w = self.warehouse
        copy = f"{table}__erasing_{uuid.uuid4().hex[:8]}"
        ddl = str(w.scalar(f"SHOW CREATE TABLE {quote_ident(table)}"))
        ddl = re.sub(r"^CREATE TABLE \S+", f"CREATE TABLE {quote_ident(copy)}", ddl, count=1)
        w.command(ddl)
        try:
            columns = [n for n, kind in w.rows(
                "SELECT name, default_kind FROM system.columns WHERE database = currentDatabase() AND table = {t:String} "
                "ORDER BY position", {"t": table}) if kind not in ("ALIAS", "EPHEMERAL")]
            assignments = self._assignments(work)
            select = ", ".join(f"{assignments[c]} AS {quote_ident(c)}" if c in assignments else quote_ident(c) for c in columns)
            where = f" WHERE NOT ({' OR '.join(work.deletes)})" if work.deletes else ""
            w.command(f"INSERT INTO {quote_ident(copy)} ({', '.join(quote_ident(c) for c in columns)}) "
                      f"SELECT {select} FROM {quote_ident(table)}{where}", settings={"insert_allow_materialized_columns": 1})
            w.command(f"EXCHANGE TABLES {quote_ident(table)} AND {quote_ident(copy)}")
        finally:
            w.command(f"DROP TABLE IF EXISTS {quote_ident(copy)} SYNC")
