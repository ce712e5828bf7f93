"""What the spending-health cap does: impulse spend of capped at-risk customers against the holdout.

The cap (:mod:`lastmile.models.policy`, applied to every send by the contact rules) shows an
at-risk customer fewer impulse items; the holdout
(:func:`lastmile.models.spending_holdout.in_holdout`) is shown the usual ones. Which customers
were in which arm, and since when, is kept in ``spending_health_arms``; their orders and what
of each order was impulse spend come from the warehouse (``int_customer_orders``, whose impulse
amount is the catalogue's ``is_impulse`` flag summed over the lines, as the spending-health
mart reads it).

The effect is a ratio of ratios: per arm, impulse spend a day after the cap started over
impulse spend a day before it, capped arm over holdout, minus one. Comparing each customer
with themselves takes out most of the spread between heavy and light spenders (a holdout of a
few dozen customers gives a usable interval), and anything that moves both arms alike (the
season, a holiday) cancels. The interval is a percentile bootstrap over customers, resampled
within each arm.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from lastmile.warehouse import Warehouse

DDL = """
CREATE TABLE IF NOT EXISTS spending_health_arms (
    oneid String,
    holdout Bool COMMENT 'true: held out of the spending-health cap (never capped); false: capped.',
    since DateTime64(3, 'UTC') COMMENT 'When the customer was flagged at risk and the arm began.',
    source LowCardinality(String) COMMENT 'Who assigned the arm (simulation: the simulator''s log of the arms it played).',
    recorded_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree ORDER BY oneid
COMMENT 'At-risk customers and their arm of the spending-health cap: what the cap''s effect is measured over.'
"""

#: Bootstrap resamples for the interval; the estimate itself does not depend on them.
RESAMPLES = 2000
LEVEL = 0.95


@dataclass
class CapEffect:
    """Impulse spend per at-risk customer, capped against held out, and the cap's effect."""

    since: datetime
    until: datetime
    capped: int  # customers
    holdout: int
    capped_weekly_cny: float  # impulse spend per customer and week since the cap began
    holdout_weekly_cny: float
    effect: float  # relative change in impulse spend the cap caused (-0.38 = 38 % less)
    low: float
    high: float
    level: float = LEVEL

    def as_dict(self) -> dict[str, Any]:
        return {"since": self.since.isoformat(), "until": self.until.isoformat(), "capped": self.capped,
                "holdout": self.holdout, "capped_weekly_cny": self.capped_weekly_cny,
                "holdout_weekly_cny": self.holdout_weekly_cny, "effect": self.effect, "low": self.low,
                "high": self.high, "level": self.level}

    def text(self) -> str:
        return (f"spending-health cap since {self.since:%Y-%m-%d}: impulse spend per at-risk customer "
                f"¥{self.capped_weekly_cny:,.1f}/week capped ({self.capped}) vs ¥{self.holdout_weekly_cny:,.1f} "
                f"held out ({self.holdout}); effect {self.effect:+.0%} "
                f"({self.level:.0%} interval {self.low:+.0%} to {self.high:+.0%})")


def record_arms(warehouse: Warehouse, arms: dict[str, tuple[bool, datetime]], source: str) -> int:
    """Keep ``oneid -> (held out, since)``; recording an arm again replaces it (idempotent)."""
    warehouse.command(DDL)
    rows = [(oneid, holdout, since.astimezone(timezone.utc).replace(tzinfo=None), source)
            for oneid, (holdout, since) in sorted(arms.items())]
    if rows:
        warehouse.insert_rows("spending_health_arms", rows, ["oneid", "holdout", "since", "source"])
    return len(rows)


def simulated_arms(truth_dir: Path, oneid_persons: dict[str, str]) -> dict[str, tuple[bool, datetime]]:
    """Simulation only: the arms the simulator played (``truth/spending_health_arms.jsonl``), per
    OneID (``oneid_persons``: OneID -> the person most of its orders belong to).

    The simulator has no OneIDs (they come from keyed hashes at ingest), so it drew each
    at-risk resident's arm with the holdout's hash over the person id; this is its log, as a
    live platform's would be.
    """
    path = truth_dir / "spending_health_arms.jsonl"
    if not path.exists():
        return {}
    arm_of = {r["person_id"]: r for r in (orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip())}
    return {oneid: (arm_of[p]["arm"] == "holdout", datetime.fromisoformat(arm_of[p]["since"]))
            for oneid, p in oneid_persons.items() if p in arm_of}


def measure(warehouse: Warehouse, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0,
            zone: tzinfo = timezone.utc) -> CapEffect | None:
    """The cap's effect over the customers of ``spending_health_arms`` (None: no arms, no orders
    on both sides of the start, or an arm without customers); times in ``zone``."""
    tables = set(warehouse.tables())
    if not {"spending_health_arms", "int_customer_orders"} <= tables:
        return None
    span = warehouse.rows("SELECT min(ordered_at), max(ordered_at) FROM int_customer_orders WHERE oneid != '' AND lines > 0")[0]
    if span[0] is None:
        return None
    first, last = (_utc(t) for t in span)
    rows = warehouse.rows(
        """
        SELECT a.oneid, a.holdout, a.since,
               sumIf(o.impulse, o.ordered_at < a.since), sumIf(o.impulse, o.ordered_at >= a.since)
        FROM (SELECT oneid, holdout, since FROM spending_health_arms FINAL) AS a
        LEFT JOIN (SELECT oneid, ordered_at, toFloat64(impulse_amount_cny) AS impulse FROM int_customer_orders
                   WHERE oneid != '' AND lines > 0) AS o ON o.oneid = a.oneid
        GROUP BY a.oneid, a.holdout, a.since
        ORDER BY a.oneid
        """)
    held, before, after, weeks_after = [], [], [], []
    for _, holdout, since, spent_before, spent_after in rows:
        since = _utc(since)
        days_before, days_after = (since - first).total_seconds() / 86_400, (last - since).total_seconds() / 86_400
        if days_before < 1 or days_after < 1:
            continue  # no time on one side of the start: nothing to compare the customer with
        held.append(bool(holdout))
        before.append(float(spent_before) / days_before)
        after.append(float(spent_after) / days_after)
        weeks_after.append(days_after / 7)
    mask = np.asarray(held, dtype=bool)
    b, a, w = np.asarray(before), np.asarray(after), np.asarray(weeks_after)
    if not mask.any() or mask.all():
        return None
    cap_idx, hold_idx = np.flatnonzero(~mask), np.flatnonzero(mask)
    effect = _ratio_of_ratios(a, b, cap_idx[None], hold_idx[None])[0]
    rng = np.random.default_rng(seed)
    draws = _ratio_of_ratios(a, b, rng.choice(cap_idx, (resamples, len(cap_idx))),
                             rng.choice(hold_idx, (resamples, len(hold_idx))))
    draws = draws[np.isfinite(draws)]
    tail = (1 - level) / 2
    low, high = (np.quantile(draws, [tail, 1 - tail]) if len(draws) else (np.nan, np.nan))
    since_all = min(_utc(r[2]) for r in rows)
    return CapEffect(since_all.astimezone(zone), last.astimezone(zone), len(cap_idx), len(hold_idx),
                     round(float((a[cap_idx] * w[cap_idx]).sum() / w[cap_idx].sum() * 7), 2),
                     round(float((a[hold_idx] * w[hold_idx]).sum() / w[hold_idx].sum() * 7), 2),
                     round(float(effect), 4), round(float(low), 4), round(float(high), 4), level)


def _ratio_of_ratios(after: np.ndarray, before: np.ndarray, capped: np.ndarray, held: np.ndarray) -> np.ndarray:
    """Per row of index sets: (after / before of the capped) / (after / before of the held out) - 1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        capped_ratio = after[capped].sum(axis=1) / before[capped].sum(axis=1)
        held_ratio = after[held].sum(axis=1) / before[held].sum(axis=1)
        return capped_ratio / held_ratio - 1.0


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def main_job(cfg: Any, warehouse: Warehouse) -> CapEffect | None:
    """``lastmile run``: record the simulated arms (simulation only) and measure the cap."""
    from lastmile.models.evaluation import oneid_persons

    arms = simulated_arms(cfg.home / "truth", oneid_persons(cfg)) if (cfg.home / "truth").is_dir() else {}
    if arms:
        record_arms(warehouse, arms, "simulation")
    return measure(warehouse, zone=cfg.business_zone)
