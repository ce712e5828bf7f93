"""The spending-health cap as residents live it: shown fewer impulse items, they buy fewer.

From ``spending_cap_from_day`` on, the platform flags the at-risk residents
(:data:`~lastmile.simulator.config.AT_RISK_PERSONA`) and, outside the holdout
(:func:`lastmile.models.spending_holdout.in_holdout`, the contact rules' own definition),
caps what it shows them: at most a recommendation a day and no impulse items. A capped
resident then no longer buys each impulse unit they wanted with probability
``spending_cap_effect``; the held-out ones buy as before. The cap acts on demand, before the
front warehouse serves it, so everything downstream (stock, sales, orders) follows.

Every unit not bought is a row of ``truth/suppressed_purchases.jsonl`` with its cause, and
``truth/spending_health_arms.jsonl`` lists each at-risk resident's arm, so a measurement of
the cap (:mod:`lastmile.models.spending_effect`) can be checked against what was done.
Draws come from their own generator: the cap changes no other random draw.
"""

from __future__ import annotations

from typing import Any

from lastmile.models.spending_holdout import in_holdout

from .clock import DAY_MS, iso_ms
from .config import AT_RISK_PERSONA, SimulationConfig
from .world import Person, World

CAUSE = "spending_health_cap"


class SpendingCap:
    """Applies the cap to demanded baskets and keeps the truth of what it suppressed."""

    def __init__(self, world: World, cfg: SimulationConfig) -> None:
        self.cfg = cfg
        self.skus = world.skus
        self.from_ms = None if cfg.spending_cap_from_day is None else cfg.spending_cap_from_day * DAY_MS
        self.at_risk = [p for p in world.persons if p.persona == AT_RISK_PERSONA]
        self.capped = {p.index for p in self.at_risk if not in_holdout(p.person_id, cfg.spending_health_holdout)}
        self.rng = cfg.rng("spending_cap")
        self._suppressed: list[tuple[int, Person, int, int]] = []  # (t_ms, person, sku index, units)

    def basket(self, t_ms: int, p: Person, lines: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The lines ``p`` still orders at ``t_ms``: a capped resident drops some impulse units."""
        if self.from_ms is None or t_ms < self.from_ms or p.index not in self.capped or not self.cfg.spending_cap_effect:
            return lines
        kept: list[tuple[int, int]] = []
        for s, units in lines:
            if self.skus[s].is_impulse:
                bought = int(self.rng.binomial(units, 1.0 - self.cfg.spending_cap_effect))
                if bought < units:
                    self._suppressed.append((t_ms, p, s, units - bought))
                if not bought:
                    continue
                units = bought
            kept.append((s, units))
        return kept

    def suppressed_rows(self) -> list[dict[str, Any]]:
        """truth/suppressed_purchases.jsonl: one row per line an impulse unit was dropped from."""
        stamps = iso_ms(self.cfg.start, [t for t, _, _, _ in self._suppressed])
        return [{"person_id": p.person_id, "wanted_at": at, "sku": self.skus[s].sku, "units": units,
                 "amount_cny": round(units * self.skus[s].unit_price, 2), "cause": CAUSE}
                for (_, p, s, units), at in zip(self._suppressed, stamps)]

    def arm_rows(self) -> list[dict[str, Any]]:
        """truth/spending_health_arms.jsonl: each at-risk resident, capped or held out, and from when."""
        if self.cfg.spending_cap_from_day is None:
            return []
        since = iso_ms(self.cfg.start, [self.from_ms])[0]
        return [{"person_id": p.person_id, "arm": "capped" if p.index in self.capped else "holdout", "since": since}
                for p in self.at_risk]
