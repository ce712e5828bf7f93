"""The spending-health policy the recommender honours.

* **Daily cap** — a customer the spending-health model flags at risk gets at most
  ``daily_cap`` recommendations per business day (counted in a :class:`CapLedger`), and no
  impulse SKUs among them.
* **Nutrition-balance nudges** — at-risk customers also get healthy SKUs from the
  categories they buy least, with a sentence saying why.
* **Medical exception** — a customer with a declared dietary need (``customer_consent``
  feature view, from the health-declaration table) is exempt from the cap: they may need to
  buy particular foods often, and the cap must not get in the way. Nudges still apply.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from typing import Any

#: Categories a balanced basket draws on; nudges suggest the least bought of them.
BALANCE_CATEGORIES = ("vegetables", "fruit", "grain", "tofu", "eggs", "dairy", "seafood")


class CapLedger:
    """Recommendations shown per customer per business day (in-process).

    One API process keeps it in memory; several replicas should share it (a Redis INCR with a
    day-long TTL has the same interface) — see the report for the follow-up.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shown: dict[tuple[str, date], int] = defaultdict(int)

    def shown(self, oneid: str, day: date) -> int:
        with self._lock:
            return self._shown.get((oneid, day), 0)

    def take(self, oneid: str, day: date, wanted: int, cap: int) -> int:
        """Reserve up to ``wanted`` slots under ``cap``; returns how many were granted."""
        with self._lock:
            have = self._shown.get((oneid, day), 0)
            granted = max(0, min(wanted, cap - have))
            self._shown[(oneid, day)] = have + granted
            return granted

    def add(self, oneid: str, day: date, n: int) -> None:
        with self._lock:
            self._shown[(oneid, day)] += n


@dataclass
class PolicyDecision:
    items: list[dict[str, Any]]
    nudges: list[dict[str, Any]] = field(default_factory=list)
    capped: bool = False
    cap: int | None = None
    shown_today: int = 0
    exempt: bool = False
    at_risk: bool = False
    note: str = ""


@dataclass
class SpendingPolicy:
    daily_cap: int = 3
    nudges: int = 2

    def apply(self, oneid: str, ranked: list[dict[str, Any]], health: dict[str, Any], exempt: bool,
              affinity: dict[str, float], ledger: CapLedger, today: date, limit: int) -> PolicyDecision:
        at_risk = bool(health.get("at_risk"))
        if not at_risk:
            items = ranked[:limit]
            ledger.add(oneid, today, len(items))
            return PolicyDecision(items, at_risk=False, exempt=exempt, shown_today=ledger.shown(oneid, today))
        healthy_first = [r for r in ranked if not r.get("is_impulse")]
        nudges = self._nudges(ranked, affinity)
        if exempt:
            items = healthy_first[:limit]
            ledger.add(oneid, today, len(items))
            return PolicyDecision(items, nudges, capped=False, cap=None, shown_today=ledger.shown(oneid, today),
                                  exempt=True, at_risk=True,
                                  note="declared dietary need: exempt from the daily recommendation cap")
        granted = ledger.take(oneid, today, min(limit, len(healthy_first)), self.daily_cap)
        items = healthy_first[:granted]
        return PolicyDecision(items, nudges, capped=True, cap=self.daily_cap, shown_today=ledger.shown(oneid, today),
                              exempt=False, at_risk=True,
                              note=f"spending-health risk: at most {self.daily_cap} recommendations a day, no impulse items")

    def _nudges(self, ranked: list[dict[str, Any]], affinity: dict[str, float]) -> list[dict[str, Any]]:
        low = sorted(BALANCE_CATEGORIES, key=lambda c: affinity.get(c, 0.0))
        out: list[dict[str, Any]] = []
        for category in low:
            pick = next((r for r in ranked if r.get("category") == category and r.get("is_healthy")), None)
            if pick is None:
                continue
            share = affinity.get(category, 0.0)
            out.append({"sku": pick["sku"], "category": category, "kind": "nutrition_balance",
                        "text": f"{category.replace('_', ' ')} is {share:.0%} of your basket: try {pick['sku']} for balance"})
            if len(out) >= self.nudges:
                break
        return out
