"""The spending-health policy the recommender honours.

* **Daily cap** — a customer the spending-health model flags at risk gets at most
  ``daily_cap`` recommendations per business day, and no impulse SKUs among them. What was
  shown is counted in a :class:`CapLedger` by the send path (:meth:`SpendingPolicy.record`),
  never by reading recommendations: a read changes nothing.
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

    Only the send path writes it (:meth:`SpendingPolicy.record`, behind ``POST
    /customers/{oneid}/recommendations/impressions``): reading recommendations never counts,
    so anyone refreshing a page cannot use up a customer's cap. One API process keeps it in
    memory; several replicas should share it (a Redis INCR with a day-long TTL has the same
    interface).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shown: dict[tuple[str, date], int] = defaultdict(int)
        self._sends: dict[tuple[str, date, str], tuple[list[str], list[str]]] = {}

    def shown(self, oneid: str, day: date) -> int:
        with self._lock:
            return self._shown.get((oneid, day), 0)

    def record(self, oneid: str, day: date, skus: list[str], cap: int | None,
               send_id: str | None = None) -> tuple[list[str], list[str]]:
        """Count ``skus`` as shown today, up to ``cap`` (None: no cap); returns (recorded, refused).

        Atomic: two senders racing for the last slot cannot both get it. A ``send_id`` seen
        before for this customer and day returns the first answer and counts nothing, so a
        retried send is not counted twice.
        """
        with self._lock:
            if send_id is not None and (oneid, day, send_id) in self._sends:
                return self._sends[(oneid, day, send_id)]
            have = self._shown.get((oneid, day), 0)
            room = len(skus) if cap is None else max(0, min(len(skus), cap - have))
            recorded, refused = skus[:room], skus[room:]
            self._shown[(oneid, day)] = have + len(recorded)
            if send_id is not None:
                self._sends[(oneid, day, send_id)] = (recorded, refused)
                self._forget_before(day)
            return recorded, refused

    def _forget_before(self, day: date) -> None:
        """Drop send ids of past days (a retry comes within minutes, not the next day)."""
        if len(self._sends) > 10_000:
            self._sends = {k: v for k, v in self._sends.items() if k[1] >= day}


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
class ImpressionRecord:
    recorded: list[str]
    refused: list[str]
    shown_today: int
    capped: bool
    cap: int | None


@dataclass
class SpendingPolicy:
    daily_cap: int = 3
    nudges: int = 2

    def capped(self, health: dict[str, Any], exempt: bool) -> bool:
        """The daily cap binds an at-risk customer without a declared dietary need."""
        return bool(health.get("at_risk")) and not exempt

    def apply(self, oneid: str, ranked: list[dict[str, Any]], health: dict[str, Any], exempt: bool,
              affinity: dict[str, float], ledger: CapLedger, today: date, limit: int) -> PolicyDecision:
        """What to recommend now: reads the ledger, never writes it (see :meth:`record`)."""
        at_risk = bool(health.get("at_risk"))
        shown = ledger.shown(oneid, today)
        if not at_risk:
            return PolicyDecision(ranked[:limit], at_risk=False, exempt=exempt, shown_today=shown)
        healthy_first = [r for r in ranked if not r.get("is_impulse")]
        nudges = self._nudges(ranked, affinity)
        if exempt:
            return PolicyDecision(healthy_first[:limit], nudges, capped=False, cap=None, shown_today=shown,
                                  exempt=True, at_risk=True,
                                  note="declared dietary need: exempt from the daily recommendation cap")
        room = max(0, self.daily_cap - shown)
        return PolicyDecision(healthy_first[:min(limit, room)], nudges, capped=True, cap=self.daily_cap, shown_today=shown,
                              exempt=False, at_risk=True,
                              note=f"spending-health risk: at most {self.daily_cap} recommendations a day, no impulse items")

    def record(self, oneid: str, skus: list[str], health: dict[str, Any], exempt: bool, ledger: CapLedger,
               today: date, send_id: str | None = None) -> ImpressionRecord:
        """Count the recommendations a send shows; a capped customer gets no more than the cap.

        The sender records before it sends and sends only what was recorded.
        """
        skus = list(dict.fromkeys(skus))
        capped = self.capped(health, exempt)
        cap = self.daily_cap if capped else None
        recorded, refused = ledger.record(oneid, today, skus, cap, send_id)
        return ImpressionRecord(recorded, refused, ledger.shown(oneid, today), capped, cap)

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
