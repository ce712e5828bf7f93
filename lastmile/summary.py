"""What is in the warehouse: rows per raw table and quarantined payloads by reason.

Counts use ``FINAL`` so that duplicates still waiting for a background merge are not
counted: the figure an analyst sees is the number of distinct events.
"""

from __future__ import annotations

from dataclasses import dataclass

from lastmile.contracts import contracts
from lastmile.warehouse import Warehouse


@dataclass
class WarehouseSummary:
    rows: dict[str, int]
    quarantined: dict[str, int]

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def total_quarantined(self) -> int:
        return sum(self.quarantined.values())

    def as_dict(self) -> dict[str, object]:
        return {"rows": self.rows, "quarantined_by_reason": self.quarantined,
                "total_rows": self.total_rows, "total_quarantined": self.total_quarantined}


def summarize(warehouse: Warehouse) -> WarehouseSummary:
    existing = set(warehouse.tables())
    rows = {c.table: warehouse.count(c.table) for c in contracts().values() if c.table in existing}
    quarantined: dict[str, int] = {}
    if "quarantine" in existing:
        quarantined = {
            reason: int(n)
            for reason, n in warehouse.rows("SELECT reason, count() FROM quarantine FINAL GROUP BY reason ORDER BY reason")
        }
    return WarehouseSummary(rows=rows, quarantined=quarantined)
