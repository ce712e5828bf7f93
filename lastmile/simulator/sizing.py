"""Sizing a simulation by the number of events it writes, for benchmarks at a chosen scale.

The estimate needs the locker layout (telemetry is the bulk of the events and grows a whole
community of lockers at a time), so it lives beside the world rather than in the config,
which the world itself reads.
"""

from __future__ import annotations

import math
from datetime import timedelta
from dataclasses import replace
from typing import Any

from .assortment import build_catalogue
from .config import SimulationConfig
from .world import count_compartments

#: Non-telemetry events per demanded order at default rates (orders, pickups, reviews,
#: returns, identifies of the placed orders), measured on seeded runs; used only to
#: *estimate* sizes.
EVENTS_PER_ORDER = 2.5
#: Consent events per resident (choices of those who order, a few withdrawals), measured likewise.
CONSENT_EVENTS_PER_PERSON = 3.2
#: Inventory events per front warehouse, SKU and day (the 22:00 count, receipts, write-offs,
#: sold-out signals), measured likewise.
INVENTORY_EVENTS_PER_SKU_DAY = 2.2


def estimated_events(cfg: SimulationConfig) -> int:
    """Roughly how many lines ``simulate`` writes for ``cfg`` (within a few %)."""
    telemetry = count_compartments(cfg) * cfg.telemetry_steps
    other = cfg.orders * EVENTS_PER_ORDER + (cfg.n_persons * CONSENT_EVENTS_PER_PERSON if cfg.consent else 0)
    if cfg.supply:
        days = cfg.weeks * 7
        listed = sum(1 for s in build_catalogue(cfg.start, cfg.extended_catalogue)
                     for d in range(0, days, 7) if s.available_on(cfg.start + timedelta(days=d))) / len(range(0, days, 7))
        other += cfg.n_communities * listed * days * INVENTORY_EVENTS_PER_SKU_DAY
    bad = 1.0 + cfg.malformed_share + cfg.duplicate_share
    return int((telemetry + other) * bad)


def for_total_events(n: int, seed: int = 42, **overrides: Any) -> SimulationConfig:
    """A config whose run writes about ``n`` events in total (all files, all types).

    Telemetry grows in steps (a whole community of lockers at a time, ~145k readings over
    8 weeks), so this searches ``orders`` for the estimate closest to ``n`` and may land a
    few % off: ``for_total_events(1_000_000)`` picks about 46k orders and writes ~1.0M events.
    """
    if n < 1000:
        raise ValueError("n must be >= 1000")
    base = replace(SimulationConfig(seed=seed, **overrides), orders=1000)
    best, best_err = base, math.inf
    lo, hi = 100, max(1000, n)
    # The estimate is monotone up to the community steps; bisect, then polish nearby.
    while lo < hi:
        mid = (lo + hi) // 2
        if estimated_events(replace(base, orders=mid)) < n:
            lo = mid + 1
        else:
            hi = mid
    for orders in range(max(100, lo - 2000), lo + 2001, 50):
        cfg = replace(base, orders=orders)
        err = abs(estimated_events(cfg) - n)
        if err < best_err:
            best, best_err = cfg, err
    return best
