"""The stocking plan against the default policy on the same true demand.

Day by day over a window, two front-warehouse shelves per community and SKU face the
unconstrained demand the simulator recorded (``truth/demand_hourly.jsonl``): one stocked by the
newsvendor plan (:mod:`lastmile.stocking.newsvendor`, with pooling between neighbours), one by
the simulator's default policy (:func:`lastmile.stocking.policies.last_week_plus_margin`, last
week's same-day sales plus a margin, as a small operator stocks). Both shelves run through
:class:`lastmile.stocking.ledger.ShelfStock`, so a unit sold, lost or written off is counted by
the same arithmetic for both.

The cycle of a day ``D``: at 22:00 on ``D - 1`` the shelf is counted and the order for ``D``
placed (the plan reads the forecast issued by then); at 05:00 on ``D`` the lot arrives with its
best-before ``05:00 + shelf life`` (neighbours' spare units move with the same van); each hour,
lots past their best-before are written off and the hour's demand is served first expiring,
first out; what cannot be served is lost. Demand before the first delivery is left out for both.

Figures: fill rate (units served / units demanded), lost units and stock-out hours (community ×
SKU × hours with demand left unserved), spoilage (units written off and their cost in CNY) and
inventory turnover (units served / average units on hand at the 22:00 counts).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lastmile.stocking.ledger import ShelfStock
from lastmile.stocking.newsvendor import (
    Decision,
    Economics,
    demand_quantile,
    hour_number,
    hourly_moments,
    period_moments,
    usable_on_hand,
)
from lastmile.stocking.pooling import neighbours_within, pool

#: Local hour of the daily receipt and of the evening count at which the next order is placed.
DELIVERY_HOUR = 5
ORDER_HOUR = 22

#: Names of the two sides.
PLAN, DEFAULT = "plan", "default_policy"

#: (same weekday's units sold a week before, units on hand at the count) -> units to order.
DefaultPolicy = Callable[[int, int], int]


@dataclass
class Outcome:
    """What one stocking side did over the window."""

    demanded: int = 0
    served: int = 0
    lost_units: int = 0
    stockout_hours: int = 0
    received: int = 0
    written_off: int = 0
    written_off_cny: float = 0.0
    pooled_units: int = 0
    counted_on_hand: int = 0
    counts: int = 0

    @property
    def fill_rate(self) -> float:
        return self.served / self.demanded if self.demanded else 1.0

    @property
    def average_on_hand(self) -> float:
        return self.counted_on_hand / self.counts if self.counts else 0.0

    @property
    def turnover(self) -> float:
        """Units served per unit held on average: how often the shelf turned over in the window."""
        return self.served / self.average_on_hand if self.average_on_hand else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"demanded": self.demanded, "served": self.served, "fill_rate": round(self.fill_rate, 4),
                "lost_units": self.lost_units, "stockout_hours": self.stockout_hours, "received": self.received,
                "written_off_units": self.written_off, "written_off_cny": round(self.written_off_cny, 2),
                "pooled_units": self.pooled_units, "average_on_hand": round(self.average_on_hand, 1),
                "inventory_turnover": round(self.turnover, 2)}


@dataclass
class ReplayResult:
    """The plan and the default policy over one window, side by side."""

    start: date
    end: date
    series: int
    plan: Outcome
    default_policy: Outcome
    days: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def spoilage_ratio(self) -> float | None:
        """Plan's write-off cost over the default policy's (None when the default wrote nothing off)."""
        if self.default_policy.written_off_cny <= 0:
            return None
        return self.plan.written_off_cny / self.default_policy.written_off_cny

    @property
    def meets_target(self) -> bool:
        """Fill rate >= 0.95 and >= the default policy's, with at most half its spoilage in CNY."""
        ratio = self.spoilage_ratio
        return (self.plan.fill_rate >= 0.95 and self.plan.fill_rate >= self.default_policy.fill_rate
                and (ratio is None and self.plan.written_off_cny == 0 or ratio is not None and ratio <= 0.5))

    def as_dict(self) -> dict[str, Any]:
        ratio = self.spoilage_ratio
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "days": self.days, "series": self.series,
                PLAN: self.plan.as_dict(), DEFAULT: self.default_policy.as_dict(),
                "spoilage_ratio_to_default_policy": None if ratio is None else round(ratio, 4),
                "meets_target": self.meets_target, "notes": list(self.notes)}

    def text(self) -> str:
        rows = [("fill rate (served / demanded)", "fill_rate", "{:.3f}"), ("units demanded", "demanded", "{:,}"),
                ("units served", "served", "{:,}"), ("lost units", "lost_units", "{:,}"),
                ("stock-out hours", "stockout_hours", "{:,}"), ("units received", "received", "{:,}"),
                ("units written off", "written_off_units", "{:,}"), ("written off, CNY", "written_off_cny", "{:,.2f}"),
                ("units moved between neighbours", "pooled_units", "{:,}"),
                ("average units on hand (22:00)", "average_on_hand", "{:,.1f}"),
                ("inventory turnover", "inventory_turnover", "{:.2f}")]
        plan, default = self.plan.as_dict(), self.default_policy.as_dict()
        lines = [f"Stocking replay {self.start} to {self.end} ({self.days} days, {self.series} community x SKU series), "
                 "same true demand:", f"  {'':34} {'plan':>12} {'default policy':>15}"]
        lines += [f"  {label:34} {fmt.format(plan[key]):>12} {fmt.format(default[key]):>15}" for label, key, fmt in rows]
        ratio = self.spoilage_ratio
        lines.append(f"  spoilage (CNY) of the plan / default policy: {'n/a' if ratio is None else f'{ratio:.2f}'}")
        verdict = "meets" if self.meets_target else "misses"
        lines.append(f"  target (fill rate >= 0.95 and >= default, spoilage <= 0.5 x default): {verdict}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _hours(values: pd.Series, tz: str) -> np.ndarray:
    """Hour numbers (:func:`lastmile.stocking.newsvendor.hour_number`) of timestamps or ISO texts:
    times with an offset are read on the ``tz`` clock, naive ones are local already."""
    try:
        ts = pd.to_datetime(values)
    except (ValueError, TypeError):  # texts with several offsets
        ts = pd.to_datetime(values, utc=True)
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        ts = ts.dt.tz_convert(tz).dt.tz_localize(None)
    return (ts - pd.Timestamp("1970-01-01")).dt.total_seconds().to_numpy() / 3600.0


def replay(truth: pd.DataFrame, forecasts: pd.DataFrame, skus: pd.DataFrame, start: date, end: date, *,
           cost_share: float, goodwill_share: float, distances: pd.DataFrame | None = None, pool_km: float = 0.0,
           history: pd.DataFrame | None = None, default_policy: DefaultPolicy | None = None,
           tz: str = "Asia/Shanghai") -> ReplayResult:
    """Replay deliveries ``start`` .. ``end`` (inclusive) for every community × SKU with demand.

    ``truth``: ``community_id, sku, hour, demanded`` (the simulator's unconstrained demand;
    ``hour`` ISO text with offset or timestamps). ``forecasts``: ``community_id, sku, hour, p50,
    p90`` and optionally ``origin`` (naive local time the forecast was made for; each delivery
    reads the latest forecast made by its order time, none from after it). ``skus``: ``sku,
    unit_price, shelf_life_days`` (``unit_cost`` optional). ``history``: ``community_id, sku,
    hour, served`` before the window, what the default policy looks back at (default: the
    ``served`` column of ``truth`` where present). ``distances``: ``community_id, neighbour_id,
    km`` for pooling within ``pool_km``.
    """
    if end < start:
        raise ValueError(f"the replay window ends ({end}) before it starts ({start})")
    missing = {"community_id", "sku", "hour", "demanded"} - set(truth.columns)
    if missing:
        raise ValueError(f"the true demand lacks the column(s) {', '.join(sorted(missing))}")
    missing = {"community_id", "sku", "hour", "p50", "p90"} - set(forecasts.columns)
    if missing:
        raise ValueError(f"the forecast lacks the column(s) {', '.join(sorted(missing))}")
    if default_policy is None:
        default_policy = _simulator_default_policy()

    econ = _economics(skus, cost_share, goodwill_share)
    first_delivery = hour_number(datetime.combine(start, datetime.min.time())) + DELIVERY_HOUR
    last_end = hour_number(datetime.combine(end + timedelta(days=1), datetime.min.time())) + DELIVERY_HOUR

    demand = truth.loc[:, ["community_id", "sku", "demanded"]].copy()
    demand["t"] = _hours(truth["hour"], tz)
    past = _past_sales(truth, history, tz, first_delivery)
    demand = demand[(demand["t"] >= first_delivery) & (demand["t"] < last_end) & (demand["demanded"] > 0)]
    unknown = sorted(set(demand["sku"]) - set(econ))
    if unknown:
        raise ValueError(f"{len(unknown)} SKU(s) with demand are not in the SKU list (e.g. {unknown[0]}): "
                         "their price and shelf life are needed")
    series = sorted(set(zip(demand["community_id"], demand["sku"])))
    by_series: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for key, group in demand.sort_values("t").groupby(["community_id", "sku"], sort=False):
        by_series[key] = (group["t"].to_numpy(), group["demanded"].to_numpy().astype(int))

    fc = forecasts.loc[:, [c for c in ("community_id", "sku", "p50", "p90", "origin") if c in forecasts.columns]].copy()
    fc["t"] = _hours(forecasts["hour"], tz)
    if "origin" in fc.columns:
        fc["origin_t"] = _hours(fc["origin"], tz)

    neighbours = neighbours_within(distances.to_dict("records"), pool_km) if distances is not None and pool_km > 0 else {}
    shelves: dict[str, dict[tuple[str, str], ShelfStock]] = {PLAN: defaultdict(ShelfStock), DEFAULT: defaultdict(ShelfStock)}
    out = {PLAN: Outcome(), DEFAULT: Outcome()}
    cursor = {PLAN: defaultdict(int), DEFAULT: defaultdict(int)}
    sold: dict[tuple[str, str, int], int] = defaultdict(int, past)  # (community, sku, day number) -> units the default side sold
    notes: list[str] = []
    missing_forecast: set[tuple[str, str]] = set()

    def run_until(side: str, key: tuple[str, str], until: float) -> None:
        """Serve the series' demand hours before ``until``."""
        times, qty = by_series.get(key, (np.empty(0), np.empty(0, dtype=int)))
        i = cursor[side][key]
        stock = shelves[side][key]
        o = out[side]
        cost = econ[key[1]].unit_cost
        while i < len(times) and times[i] < until:
            for lot in stock.expire(times[i]):
                o.written_off += lot.qty
                o.written_off_cny += lot.qty * cost
            served, _ = stock.sell(int(qty[i]), times[i])
            o.demanded += int(qty[i])
            o.served += served
            if served < qty[i]:
                o.lost_units += int(qty[i]) - served
                o.stockout_hours += 1
            if side == DEFAULT:
                sold[(key[0], key[1], _day_number(times[i]))] += served
            i += 1
        cursor[side][key] = i

    def write_off(side: str, key: tuple[str, str], now: float) -> None:
        o = out[side]
        for lot in shelves[side][key].expire(now):
            o.written_off += lot.qty
            o.written_off_cny += lot.qty * econ[key[1]].unit_cost

    day = start
    days = 0
    while day <= end:
        delivery = hour_number(datetime.combine(day, datetime.min.time())) + DELIVERY_HOUR
        order_at = delivery - DELIVERY_HOUR - (24 - ORDER_HOUR)
        plan_fc = _forecast_at(fc, order_at, delivery)
        decisions: list[Decision] = []
        default_orders: dict[tuple[str, str], int] = {}
        for key in series:
            for side in (PLAN, DEFAULT):
                run_until(side, key, order_at)
                write_off(side, key, order_at)
                if delivery > first_delivery:  # the evening count
                    out[side].counted_on_hand += shelves[side][key].on_hand
                    out[side].counts += 1
            e = econ[key[1]]
            hours, p50, p90 = plan_fc.get(key, (np.empty(0), np.empty(0), np.empty(0)))
            decisions.append(_plan_decision(key, e, order_at, delivery, hours, p50, p90, shelves[PLAN][key], missing_forecast))
            last_week = sold.get((key[0], key[1], _day_number(delivery) - 7), 0)
            default_orders[key] = max(int(default_policy(last_week, shelves[DEFAULT][key].on_hand)), 0)
        transfers = pool(decisions, neighbours)
        for key in series:
            for side in (PLAN, DEFAULT):
                run_until(side, key, delivery)
                write_off(side, key, delivery)
        for t in transfers:
            moved = _move(shelves[PLAN][(t.from_community, t.sku)], shelves[PLAN][(t.to_community, t.sku)], t.qty, delivery)
            out[PLAN].pooled_units += moved
        for d in decisions:
            key = (d.community_id, d.sku)
            e = econ[d.sku]
            for side, qty in ((PLAN, d.order_qty), (DEFAULT, default_orders[key])):
                shelves[side][key].receive(qty, delivery + e.shelf_life_h, f"{side}-{day}", e.unit_cost)
                out[side].received += qty
        day += timedelta(days=1)
        days += 1
    for key in series:
        for side in (PLAN, DEFAULT):
            run_until(side, key, last_end)
            write_off(side, key, last_end)
    if missing_forecast:
        notes.append(f"{len(missing_forecast)} series had delivery days without a forecast; the plan ordered nothing for those days")
    return ReplayResult(start=start, end=end, series=len(series), plan=out[PLAN], default_policy=out[DEFAULT],
                        days=days, notes=notes)


def _day_number(t: float) -> int:
    """The selling day of an hour number: days run from one 05:00 delivery to the next."""
    return int((t - DELIVERY_HOUR) // 24)


def _economics(skus: pd.DataFrame, cost_share: float, goodwill_share: float) -> dict[str, Economics]:
    missing = {"sku", "unit_price", "shelf_life_days"} - set(skus.columns)
    if missing:
        raise ValueError(f"the SKU list lacks the column(s) {', '.join(sorted(missing))}")
    costs = skus["unit_cost"] if "unit_cost" in skus.columns else pd.Series([None] * len(skus), index=skus.index)
    return {str(s): Economics.of(float(p), float(life), cost_share, goodwill_share, None if pd.isna(c) else float(c))
            for s, p, life, c in zip(skus["sku"], skus["unit_price"], skus["shelf_life_days"], costs)}


def _past_sales(truth: pd.DataFrame, history: pd.DataFrame | None, tz: str, before: float) -> dict[tuple[str, str, int], int]:
    """Units sold per community, SKU and selling day before the window (the default policy's memory)."""
    source = history if history is not None else truth if "served" in truth.columns else None
    if source is None or source.empty:
        return {}
    t = _hours(source["hour"], tz)
    keep = t < before
    frame = pd.DataFrame({"c": source["community_id"].to_numpy()[keep], "s": source["sku"].to_numpy()[keep],
                          "d": ((t[keep] - DELIVERY_HOUR) // 24).astype(int), "n": source["served"].to_numpy()[keep]})
    sums = frame.groupby(["c", "s", "d"])["n"].sum()
    return {(str(c), str(s), int(d)): int(n) for (c, s, d), n in sums.items()}


def _forecast_at(fc: pd.DataFrame, order_at: float, delivery: float) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per series, the hourly forecast a buyer had at ``order_at`` for the hours up to a day after ``delivery``."""
    window = fc[(fc["t"] >= order_at) & (fc["t"] < delivery + 24)]
    if "origin_t" in window.columns:
        window = window[window["origin_t"] <= order_at]
        if not window.empty:
            latest = window.groupby(["community_id", "sku"])["origin_t"].transform("max")
            window = window[window["origin_t"] == latest]
    window = window.sort_values("t")
    return {key: (g["t"].to_numpy(), g["p50"].to_numpy(dtype=float), g["p90"].to_numpy(dtype=float))
            for key, g in window.groupby(["community_id", "sku"], sort=False)}


def _plan_decision(key: tuple[str, str], e: Economics, order_at: float, delivery: float, hours: np.ndarray,
                   p50: np.ndarray, p90: np.ndarray, stock: ShelfStock, missing: set[tuple[str, str]]) -> Decision:
    """The newsvendor's order for one series on the replay's clock (the arithmetic of :func:`newsvendor.decide`)."""
    period_end = delivery + e.selling_hours
    in_period = (hours >= delivery) & (hours < period_end)
    if not in_period.any():
        missing.add(key)
        target, p50_d, p90_d, usable, expiring, stale = 0, 0.0, 0.0, float(stock.on_hand), 0, 0
    else:
        mean, var = hourly_moments(p50, p90)
        m, v = period_moments(mean[in_period], var[in_period])
        target, p50_d, p90_d = (int(x) for x in demand_quantile([m, m, m], [v, v, v], [e.critical_ratio, 0.5, 0.9]))
        expiring, stale, usable = usable_on_hand(stock.lots, order_at, delivery, period_end, hours, mean)
    qty = max(int(np.ceil(target - usable - 1e-9)), 0)
    return Decision(community_id=key[0], sku=key[1], delivery_at=datetime(1970, 1, 1) + timedelta(hours=delivery),
                    order_qty=qty, on_hand=stock.on_hand, expiring_before_delivery=expiring, expiring_unsold=stale,
                    usable_on_hand=usable, p50_demand=float(p50_d), p90_demand=float(p90_d), target=target,
                    critical_ratio=e.critical_ratio)


def _move(giver: ShelfStock, taker: ShelfStock, qty: int, now: float) -> int:
    """Move ``qty`` good units (oldest first) from one shelf to another, best-before kept."""
    best_before = {lot.batch_id: (lot.best_before, lot.unit_cost) for lot in giver.lots}
    moved, batches = giver.sell(qty, now)
    for batch, n in batches:
        bb, cost = best_before[batch]
        taker.receive(n, bb, batch, cost)
    return moved


def _simulator_default_policy() -> DefaultPolicy:
    """The simulator's default stocking policy, as the replay calls it."""
    from lastmile.stocking.policies import last_week_plus_margin

    return lambda last_week, on_hand: last_week_plus_margin(last_week, on_hand)


def load_truth(home: Path) -> pd.DataFrame:
    """``truth/demand_hourly.jsonl`` of a simulated data directory."""
    path = home / "truth" / "demand_hourly.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the replay needs the simulator's true demand (run `lastmile simulate`)")
    return pd.read_json(path, lines=True, dtype={"community_id": str, "sku": str, "hour": str})


def load_reference_rows(home: Path, name: str) -> list[dict[str, Any]]:
    """Rows of ``reference/<name>.jsonl`` (empty when the file is absent)."""
    path = home / "reference" / f"{name}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
