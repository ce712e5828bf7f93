"""Stock of one SKU in one community front warehouse (前置仓), lot by lot, with best-before dates.

Fresh food is sold first-expiring-first-out and written off when its best-before passes. The
simulator runs its default stocking policy through this ledger (so censored sales and
write-offs come from one place), and the stocking replay runs both the default policy and the
plan through it on the same true demand, so the two are compared by the same arithmetic.

Times are plain numbers (the simulator uses milliseconds since the window start, the replay
hours); the ledger only compares them.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field


@dataclass(order=True)
class Lot:
    """Units received together: they share a batch id and a best-before time."""

    best_before: float
    seq: int
    qty: int = field(compare=False)
    batch_id: str = field(compare=False, default="")
    unit_cost: float = field(compare=False, default=0.0)


@dataclass
class Expired:
    """Units written off because their best-before passed."""

    batch_id: str
    qty: int
    best_before: float
    unit_cost: float


@dataclass
class ShelfStock:
    """On-hand lots, earliest best-before first. ``sell`` never goes below zero: what it
    cannot serve is the caller's lost demand."""

    lots: list[Lot] = field(default_factory=list)
    _seq: int = 0

    @property
    def on_hand(self) -> int:
        return sum(lot.qty for lot in self.lots)

    def receive(self, qty: int, best_before: float, batch_id: str = "", unit_cost: float = 0.0) -> None:
        if qty < 0:
            raise ValueError(f"a receipt cannot be negative, got {qty}")
        if qty == 0:
            return
        self._seq += 1
        heapq.heappush(self.lots, Lot(best_before, self._seq, qty, batch_id, unit_cost))

    def expire(self, now: float) -> list[Expired]:
        """Write off every lot whose best-before is at or before ``now``."""
        out: list[Expired] = []
        while self.lots and self.lots[0].best_before <= now:
            lot = heapq.heappop(self.lots)
            out.append(Expired(lot.batch_id, lot.qty, lot.best_before, lot.unit_cost))
        return out

    def sell(self, qty: int, now: float) -> tuple[int, list[tuple[str, int]]]:
        """Serve up to ``qty`` units from lots still good at ``now``, earliest best-before
        first. Returns (units served, [(batch_id, units)]). Expired lots are written off
        first, so call :meth:`expire` before if the write-offs matter to you."""
        if qty < 0:
            raise ValueError(f"a sale cannot be negative, got {qty}")
        served: list[tuple[str, int]] = []
        left = qty
        while left and self.lots:
            lot = self.lots[0]
            if lot.best_before <= now:
                break
            take = min(left, lot.qty)
            lot.qty -= take
            left -= take
            served.append((lot.batch_id, take))
            if lot.qty == 0:
                heapq.heappop(self.lots)
        return qty - left, served

    def expiring_by(self, when: float) -> int:
        """Units on hand whose best-before is at or before ``when`` (they will not sell after it)."""
        return sum(lot.qty for lot in self.lots if lot.best_before <= when)

    def count(self) -> int:
        """A stock count: what is physically on hand."""
        return self.on_hand
