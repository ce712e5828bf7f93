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
SKU × hours with demand left unserved), spoilage (units written off and their cost in CNY),
units moved between neighbours and what moving them cost (``LASTMILE_POOL_UNIT_COST`` a unit) and
inventory turnover (units served / average units on hand at the 22:00 counts).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lastmile.config import Settings, settings
from lastmile.stocking.ledger import ShelfStock
from lastmile.stocking.newsvendor import Decision, Economics, hour_number, hourly_moments, order_for
from lastmile.stocking.policies import DEFAULT_MARGIN, DEFAULT_MIN_FACING, last_week_plus_margin, sellable_on_hand
from lastmile.stocking.pooling import neighbours_within, pool

#: Local hour of the daily receipt and of the evening count at which the next order is placed.
DELIVERY_HOUR = 5
ORDER_HOUR = 22

#: Names of the two sides.
PLAN, DEFAULT = "plan", "default_policy"
#: Shelf-life classes the replay reports separately (upper bound in days, label): one-day
#: SKUs cannot carry a leftover, so they are where write-offs and lost orders concentrate.
SHELF_LIFE_CLASSES = ((1.0, "1 day"), (2.0, "1.5-2 days"), (7.0, "3-7 days"), (30.0, "8-30 days"), (float("inf"), "longer"))


def shelf_life_class(days: float) -> str:
    """The label of :data:`SHELF_LIFE_CLASSES` a shelf life in days falls in."""
    return next(label for upper, label in SHELF_LIFE_CLASSES if days <= upper)


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
    pooled_cny: float = 0.0
    counted_on_hand: int = 0
    counts: int = 0

    @property
    def fill_rate(self) -> float:
        return self.served / self.demanded if self.demanded else 1.0

    @property
    def average_on_hand(self) -> float:
        """Units on hand over all shelves at an evening count, on average over the counts."""
        return self.counted_on_hand / self.counts if self.counts else 0.0

    @property
    def turnover(self) -> float:
        """Units served per unit held on average: how often the shelf turned over in the window."""
        return self.served / self.average_on_hand if self.average_on_hand else 0.0

    def add(self, other: "Outcome") -> None:
        """Add another shelf's counts to these (evening counts are shared, not added)."""
        for name in ("demanded", "served", "lost_units", "stockout_hours", "received", "written_off", "written_off_cny",
                     "pooled_units", "pooled_cny", "counted_on_hand"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, Any]:
        return {"demanded": self.demanded, "served": self.served, "fill_rate": round(self.fill_rate, 4),
                "lost_units": self.lost_units, "stockout_hours": self.stockout_hours, "received": self.received,
                "written_off_units": self.written_off, "written_off_cny": round(self.written_off_cny, 2),
                "pooled_units": self.pooled_units, "pooling_handling_cny": round(self.pooled_cny, 2),
                "average_on_hand": round(self.average_on_hand, 1),
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
    #: Per shelf-life class (:data:`SHELF_LIFE_CLASSES`): both sides' outcomes and the units
    #: the forecasts the plan read expected over the same selling periods.
    by_shelf_life: dict[str, tuple[Outcome, Outcome, float]] = field(default_factory=dict)

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
                "meets_target": self.meets_target, "notes": list(self.notes),
                "by_shelf_life": {label: {PLAN: p.as_dict(), DEFAULT: d.as_dict(), "forecast_units": round(f, 1),
                                          "forecast_to_demand": round(f / p.demanded, 3) if p.demanded else None}
                                  for label, (p, d, f) in self.by_shelf_life.items()}}

    def text(self) -> str:
        rows = [("fill rate (served / demanded)", "fill_rate", "{:.3f}"), ("units demanded", "demanded", "{:,}"),
                ("units served", "served", "{:,}"), ("lost units", "lost_units", "{:,}"),
                ("stock-out hours", "stockout_hours", "{:,}"), ("units received", "received", "{:,}"),
                ("units written off", "written_off_units", "{:,}"), ("written off, CNY", "written_off_cny", "{:,.2f}"),
                ("units moved between neighbours", "pooled_units", "{:,}"),
                ("moving them, CNY", "pooling_handling_cny", "{:,.2f}"),
                ("average units on hand (22:00)", "average_on_hand", "{:,.1f}"),
                ("inventory turnover", "inventory_turnover", "{:.2f}")]
        plan, default = self.plan.as_dict(), self.default_policy.as_dict()
        lines = [f"Stocking replay {self.start} to {self.end} ({self.days} days, {self.series} community x SKU series), "
                 "same true demand:", f"  {'':34} {'plan':>12} {'default policy':>15}"]
        lines += [f"  {label:34} {fmt.format(plan[key]):>12} {fmt.format(default[key]):>15}" for label, key, fmt in rows]
        ratio = self.spoilage_ratio
        lines.append("  (inventory turnover: units served over the window / average units on hand at the evening counts)")
        lines.append(f"  spoilage (CNY) of the plan / default policy: {'n/a' if ratio is None else f'{ratio:.2f}'}")
        verdict = "meets" if self.meets_target else "misses"
        lines.append(f"  target (fill rate >= 0.95 and >= default, spoilage <= 0.5 x default): {verdict}")
        if self.by_shelf_life:
            lines.append(f"  by shelf life: {'demanded':>9} {'forecast/true':>13} {'fill plan':>10} {'default':>8} "
                         f"{'written off CNY plan':>21} {'default':>10}")
            for label, (p, d, f) in self.by_shelf_life.items():
                ratio = f"{f / p.demanded:.2f}" if p.demanded else "n/a"
                lines.append(f"  {label:14} {p.demanded:>9,} {ratio:>13} {p.fill_rate:>10.3f} {d.fill_rate:>8.3f} "
                             f"{p.written_off_cny:>21,.0f} {d.written_off_cny:>10,.0f}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _hours(values: pd.Series, tz: str | None) -> np.ndarray:
    """Hour numbers (:func:`lastmile.stocking.newsvendor.hour_number`) of timestamps or ISO texts:
    times with an offset are read on the ``tz`` clock (the business time zone,
    ``LASTMILE_BUSINESS_TZ``, when ``tz`` is not given), naive ones are local already."""
    tz = tz or settings().business_tz
    try:
        ts = pd.to_datetime(values)
    except (ValueError, TypeError):  # texts with several offsets
        ts = pd.to_datetime(values, utc=True)
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        ts = ts.dt.tz_convert(tz).dt.tz_localize(None)
    return (ts - pd.Timestamp("1970-01-01")).dt.total_seconds().to_numpy() / 3600.0


def replay(truth: pd.DataFrame, forecasts: pd.DataFrame, skus: pd.DataFrame, start: date, end: date, *,
           cost_share: float, goodwill_share: float, holding_share: float = 0.0, distances: pd.DataFrame | None = None,
           pool_km: float = 0.0, pool_unit_cost: float = 0.0,
           no_delivery: set[date] | frozenset[date] = frozenset(), margin: float = DEFAULT_MARGIN,
           min_facing: int = DEFAULT_MIN_FACING, tz: str | None = None) -> ReplayResult:
    """Replay deliveries ``start`` .. ``end`` (inclusive) for every community × SKU with demand.

    ``truth``: ``community_id, sku, hour, demanded`` and ``served`` (the simulator's
    unconstrained demand and what its default policy sold; ``hour`` ISO text with offset or
    timestamps). The default policy looks back at ``served`` before the window and at its own
    sales inside it. ``forecasts``: ``community_id, sku, hour, p50, p90`` (or ``unique_id``,
    ``ds``) and optionally ``origin``, the first hour a forecast was made for (or mlforecast's
    ``cutoff``): each delivery reads the newest forecast made by its order time (22:00 the
    evening before), never one from after it, and that forecast must reach the next delivery. ``skus``: ``sku, unit_price,
    shelf_life_days`` (``unit_cost`` optional: else the configured share of the price).
    ``distances``: ``community_id, neighbour_id, km`` for pooling within ``pool_km``; each unit
    moved costs ``pool_unit_cost`` CNY (counted in the plan's ``pooled_cny``).
    ``no_delivery``: days whose delivery is cancelled (typhoon): nothing arrives, and the day
    before orders for two days. ``tz``: the clock offset times are read on (the configured
    business time zone when not given).
    """
    if end < start:
        raise ValueError(f"the replay window ends ({end}) before it starts ({start})")
    missing = {"community_id", "sku", "hour", "demanded"} - set(truth.columns)
    if missing:
        raise ValueError(f"the true demand lacks the column(s) {', '.join(sorted(missing))}")
    forecasts = _forecast_frame(forecasts)

    econ = _economics(skus, cost_share, goodwill_share, holding_share)
    first_delivery = _at(start, DELIVERY_HOUR)
    last_end = _at(end + timedelta(days=1), DELIVERY_HOUR)

    frame = pd.DataFrame({"community_id": truth["community_id"].astype(str).to_numpy(), "sku": truth["sku"].astype(str).to_numpy(),
                          "t": _hours(truth["hour"], tz), "demanded": truth["demanded"].to_numpy().astype(int),
                          "served": (truth["served"] if "served" in truth.columns else truth["demanded"] * 0).to_numpy().astype(int)})
    frame["d"] = (frame["t"] // 24).astype(int)
    base_day = int(frame["d"].min()) if len(frame) else int(first_delivery // 24)
    n_days = int(last_end // 24) - base_day + 2
    demand = frame[(frame["t"] >= first_delivery) & (frame["t"] < last_end) & (frame["demanded"] > 0)]
    unknown = sorted(set(demand["sku"]) - set(econ))
    if unknown:
        raise ValueError(f"{len(unknown)} SKU(s) with demand are not in the SKU list (e.g. {unknown[0]}): "
                         "their price and shelf life are needed")
    forecast_series = set(zip(forecasts["community_id"].astype(str), forecasts["sku"].astype(str)))
    wanted_series = set(zip(demand["community_id"], demand["sku"]))
    unforecast = wanted_series - forecast_series
    # Series the forecast does not cover at all (too young for the backtest) are left out of
    # both sides: the comparison is on the same demand.
    if unforecast:
        left_out = demand[[k in unforecast for k in zip(demand["community_id"], demand["sku"])]]
        demand = demand.drop(left_out.index)
    series = sorted(wanted_series - unforecast)
    by_series: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {
        key: (g["t"].to_numpy(), g["demanded"].to_numpy()) for key, g in demand.sort_values("t").groupby(["community_id", "sku"], sort=False)}

    # The default policy's memory: calendar-day sales (what the till showed), its opening
    # quantity (mean daily demand on sale, the supplier's suggestion) and each SKU's first day.
    sales: dict[tuple[str, str], list[int]] = {key: [0] * n_days for key in series}
    before = frame[frame["t"] < first_delivery]
    for (c, sku, d), n in before.groupby(["community_id", "sku", "d"])["served"].sum().items():
        if (c, sku) in sales:
            sales[(c, sku)][int(d) - base_day] = int(n)
    wanted = frame[frame["demanded"] > 0]
    first_day = {str(sku): int(d) - base_day for sku, d in wanted.groupby("sku")["d"].min().items()}
    on_sale_days = wanted.groupby("sku")["d"].nunique()
    opening = {key: float(n) / max(int(on_sale_days.get(key[1], 1)), 1)
               for key, n in wanted.groupby(["community_id", "sku"])["demanded"].sum().items() if key in sales}

    fc = pd.DataFrame({"community_id": forecasts["community_id"].astype(str).to_numpy(), "sku": forecasts["sku"].astype(str).to_numpy(),
                       "p50": forecasts["p50"].to_numpy(dtype=float), "p90": forecasts["p90"].to_numpy(dtype=float),
                       "mean": forecasts["mean"].to_numpy(dtype=float) if "mean" in forecasts.columns else np.nan,
                       "t": _hours(forecasts["hour"], tz)})
    if "origin" in forecasts.columns:
        fc["origin_t"] = _hours(forecasts["origin"], tz)

    on_sale = _on_sale(skus)
    unit_costs = {sku: e.unit_cost for sku, e in econ.items()}
    neighbours = neighbours_within(distances.to_dict("records"), pool_km) if distances is not None and pool_km > 0 else {}
    shelves: dict[str, dict[tuple[str, str], ShelfStock]] = {PLAN: defaultdict(ShelfStock), DEFAULT: defaultdict(ShelfStock)}
    per: dict[str, dict[tuple[str, str], Outcome]] = {PLAN: defaultdict(Outcome), DEFAULT: defaultdict(Outcome)}
    counts = 0
    forecast_units: dict[tuple[str, str], float] = defaultdict(float)
    cursor: dict[str, dict[tuple[str, str], int]] = {PLAN: defaultdict(int), DEFAULT: defaultdict(int)}
    missing_forecast: set[tuple[str, str]] = set()

    def write_off(side: str, key: tuple[str, str], now: float) -> None:
        o = per[side][key]
        for lot in shelves[side][key].expire(now):
            o.written_off += lot.qty
            o.written_off_cny += lot.qty * lot.unit_cost

    def run_until(side: str, key: tuple[str, str], until: float) -> None:
        """Serve the series' demand hours before ``until``, writing off what expires on the way."""
        times, qty = by_series.get(key, (np.empty(0), np.empty(0, dtype=int)))
        i = cursor[side][key]
        stock = shelves[side][key]
        o = per[side][key]
        while i < len(times) and times[i] < until:
            write_off(side, key, times[i])
            n = int(qty[i])
            served, _ = stock.sell(n, times[i])
            o.demanded += n
            o.served += served
            if served < n:
                o.lost_units += n - served
                o.stockout_hours += 1
            if side == DEFAULT:
                sales[key][int(times[i] // 24) - base_day] += served
            i += 1
        cursor[side][key] = i

    window_days = [start + timedelta(days=k) for k in range((end - start).days + 1)]
    delivery_days = [d for d in window_days if d not in no_delivery]
    for n, day in enumerate(delivery_days):
        delivery = _at(day, DELIVERY_HOUR)
        order_at = delivery - DELIVERY_HOUR - (24 - ORDER_HOUR)
        following = delivery_days[n + 1] if n + 1 < len(delivery_days) else end + timedelta(days=1)
        t_next = _at(following, DELIVERY_HOUR)
        plan_fc = _forecast_at(fc, order_at)
        counts += 1 if n else 0
        decisions: list[Decision] = []
        default_orders: dict[tuple[str, str], int] = {}
        day_index = int(delivery // 24) - base_day
        for key in series:
            for side in (PLAN, DEFAULT):
                run_until(side, key, order_at)
                write_off(side, key, order_at)
                if n:  # the evening count (before the first delivery both shelves are empty)
                    per[side][key].counted_on_hand += shelves[side][key].on_hand
            hours, p50, p90, point = plan_fc.get(key, (np.empty(0), np.empty(0), np.empty(0), np.empty(0)))
            period = (hours >= delivery) & (hours < t_next)
            forecast_units[key] += float(hourly_moments(p50[period], p90[period], point[period])[0].sum())
            try:
                decisions.append(order_for(key[0], key[1], econ[key[1]], order_at, delivery, t_next, hours, p50, p90,
                                           shelves[PLAN][key].lots, point=point))
            except ValueError:
                missing_forecast.add(key)
            first = max(first_day.get(key[1], 0), 0)
            if day_index >= first and on_sale(key[1], day):
                # The operator counts what will still be sellable at the delivery day's close (22:00).
                usable = max(sellable_on_hand(shelves[DEFAULT][key], delivery - DELIVERY_HOUR + ORDER_HOUR), 0)
                default_orders[key] = last_week_plus_margin(sales[key], day_index, usable, opening=opening.get(key, 0.0),
                                                            first_day=first, margin=margin, min_facing=min_facing)
        transfers = pool(decisions, neighbours, unit_costs, pool_unit_cost)
        for key in series:
            for side in (PLAN, DEFAULT):
                run_until(side, key, delivery)
                write_off(side, key, delivery)

        for t in transfers:
            moved = _move(shelves[PLAN][(t.from_community, t.sku)], shelves[PLAN][(t.to_community, t.sku)], t.qty, delivery)
            per[PLAN][(t.to_community, t.sku)].pooled_units += moved
            per[PLAN][(t.to_community, t.sku)].pooled_cny += moved * pool_unit_cost
        plan_orders = {(d.community_id, d.sku): d.order_qty for d in decisions}
        for key in series:
            e = econ[key[1]]
            for side, qty in ((PLAN, plan_orders.get(key, 0)), (DEFAULT, default_orders.get(key, 0))):
                shelves[side][key].receive(qty, delivery + e.shelf_life_h, f"{side}-{day}", e.unit_cost)
                per[side][key].received += qty
    for key in series:
        for side in (PLAN, DEFAULT):
            run_until(side, key, last_end)
            write_off(side, key, last_end)
    notes = []
    if unforecast:
        notes.append(f"{len(unforecast)} series with demand but no forecast ({int(left_out['demanded'].sum()):,} units "
                     "demanded) are left out of both sides")
    if missing_forecast:
        notes.append(f"{len(missing_forecast)} series lacked a forecast for some delivery days; the plan ordered nothing for those")
    cancelled = [d for d in window_days if d in no_delivery]
    if cancelled:
        notes.append("deliveries cancelled on " + ", ".join(str(d) for d in cancelled))
    out = {PLAN: Outcome(counts=counts), DEFAULT: Outcome(counts=counts)}
    classes: dict[str, tuple[Outcome, Outcome, float]] = {}
    life_days = {sku: e.shelf_life_h / 24.0 for sku, e in econ.items()}
    for label in (label for _, label in SHELF_LIFE_CLASSES):
        keys = [key for key in series if shelf_life_class(life_days[key[1]]) == label]
        if not keys:
            continue
        classes[label] = (Outcome(counts=counts), Outcome(counts=counts), sum(forecast_units[k] for k in keys))
        for key in keys:
            for side, total, part in ((PLAN, out[PLAN], classes[label][0]), (DEFAULT, out[DEFAULT], classes[label][1])):
                total.add(per[side][key])
                part.add(per[side][key])
    return ReplayResult(start=start, end=end, series=len(series), plan=out[PLAN], default_policy=out[DEFAULT], by_shelf_life=classes,
                        days=len(window_days), notes=notes)


def _at(day: date, hour: int) -> float:
    """Hour number of ``hour``:00 local on ``day``."""
    return hour_number(datetime.combine(day, datetime.min.time())) + hour


def _economics(skus: pd.DataFrame, cost_share: float, goodwill_share: float, holding_share: float) -> dict[str, Economics]:
    missing = {"sku", "unit_price", "shelf_life_days"} - set(skus.columns)
    if missing:
        raise ValueError(f"the SKU list lacks the column(s) {', '.join(sorted(missing))}")
    costs = skus["unit_cost"] if "unit_cost" in skus.columns else pd.Series([None] * len(skus), index=skus.index)
    return {str(s): Economics.of(float(p), float(life), cost_share, goodwill_share, None if pd.isna(c) else float(c),
                                 holding_share)
            for s, p, life, c in zip(skus["sku"], skus["unit_price"], skus["shelf_life_days"], costs)}


def _forecast_frame(forecasts: pd.DataFrame) -> pd.DataFrame:
    """The forecast with ``community_id, sku, hour, p50, p90`` (and ``origin`` if known).

    Also takes the forecast frame's own names (``unique_id`` = community/sku, ``ds``) and
    mlforecast's cross-validation ``cutoff`` (the last hour of data: the forecast was made for
    the hour after it).
    """
    frame = forecasts
    if not {"community_id", "sku"} <= set(frame.columns) and "unique_id" in frame.columns:
        ids = frame["unique_id"].astype(str)
        split = {uid: uid.split("/", 1) + [""] for uid in ids.unique()}  # each series once, not each hour
        frame = frame.assign(community_id=ids.map({k: v[0] for k, v in split.items()}),
                             sku=ids.map({k: v[1] for k, v in split.items()}))
    if "hour" not in frame.columns and "ds" in frame.columns:
        frame = frame.assign(hour=frame["ds"])
    if "origin" not in frame.columns and "cutoff" in frame.columns:
        frame = frame.assign(origin=pd.to_datetime(frame["cutoff"]) + pd.Timedelta(hours=1))
    missing = {"community_id", "sku", "hour", "p50", "p90"} - set(frame.columns)
    if missing:
        raise ValueError(f"the forecast lacks the column(s) {', '.join(sorted(missing))}")
    return frame


def _on_sale(skus: pd.DataFrame) -> Any:
    """``on_sale(sku, day)``: launched and in season (``launched_on``, ``available_from``/``_until`` when listed)."""
    bounds: dict[str, tuple[date | None, date | None]] = {}
    for row in skus.to_dict("records"):
        lo = [pd.Timestamp(row[c]).date() for c in ("launched_on", "available_from") if c in row and row[c] is not None and not pd.isna(row[c])]
        hi = row.get("available_until")
        bounds[str(row["sku"])] = (max(lo) if lo else None, pd.Timestamp(hi).date() if hi is not None and not pd.isna(hi) else None)

    def on_sale(sku: str, day: date) -> bool:
        lo, hi = bounds.get(sku, (None, None))
        return (lo is None or day >= lo) and (hi is None or day <= hi)

    return on_sale


def _forecast_at(fc: pd.DataFrame, order_at: float) -> dict[tuple[str, str], tuple[np.ndarray, ...]]:
    """Per series, the hourly forecast a buyer had at ``order_at``, every hour it reaches from
    then on (the selling period, and the rest of a longer shelf life as far as it goes), as the
    plan reads the stored forecast."""
    window = fc[fc["t"] >= order_at]
    if "origin_t" in window.columns:
        window = window[window["origin_t"] <= order_at]
        if not window.empty:
            latest = window.groupby(["community_id", "sku"])["origin_t"].transform("max")
            window = window[window["origin_t"] == latest]
    window = window.sort_values("t")
    return {key: (g["t"].to_numpy(), g["p50"].to_numpy(dtype=float), g["p90"].to_numpy(dtype=float),
                  g["mean"].to_numpy(dtype=float)) for key, g in window.groupby(["community_id", "sku"], sort=False)}


def _move(giver: ShelfStock, taker: ShelfStock, qty: int, now: float) -> int:
    """Move ``qty`` good units (oldest first) from one shelf to another, best-before kept."""
    best_before = {lot.batch_id: (lot.best_before, lot.unit_cost) for lot in giver.lots}
    moved, batches = giver.sell(qty, now)
    for batch, n in batches:
        bb, cost = best_before[batch]
        taker.receive(n, bb, batch, cost)
    return moved


def load_truth(home: Path) -> pd.DataFrame:
    """``truth/demand_hourly.jsonl`` of a simulated data directory."""
    path = home / "truth" / "demand_hourly.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the replay needs the simulator's true demand (run `lastmile simulate`)")
    return pd.read_json(path, lines=True, dtype={"community_id": str, "sku": str, "hour": str}, convert_dates=False)


def load_reference_rows(home: Path, name: str) -> list[dict[str, Any]]:
    """Rows of ``reference/<name>.jsonl`` (empty when the file is absent)."""
    path = home / "reference" / f"{name}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def delivery_window(forecasts: pd.DataFrame, tz: str | None = None) -> tuple[date, date]:
    """The deliveries a rolling-origin forecast can plan: from the day after the first origin
    (ordered that evening) to the day after the last one."""
    frame = _forecast_frame(forecasts)
    if "origin" not in frame.columns:
        hours = _hours(frame["hour"], tz)
        first, last = float(hours.min()), float(hours.max()) - 24
    else:
        origins = _hours(frame["origin"], tz)
        first, last = float(origins.min()), float(origins.max())
    start = (datetime(1970, 1, 1) + timedelta(hours=first)).date() + timedelta(days=1)
    end = (datetime(1970, 1, 1) + timedelta(hours=last)).date() + timedelta(days=1)
    if end < start:
        raise ValueError("the forecast does not reach a full selling day after its first origin")
    return start, end


def replay_simulation(cfg: Settings, forecasts: pd.DataFrame, start: date | None = None, end: date | None = None,
                      home: Path | None = None) -> ReplayResult:
    """:func:`replay` on a simulated data directory (default ``$LASTMILE_HOME``): its true demand,
    SKUs (prices, unit costs, shelf lives, seasons), distances, typhoon days and the default
    policy's margin and facing from its manifest; costs and pooling from ``cfg``. Without
    ``start``/``end``, the deliveries the forecast covers (:func:`delivery_window`)."""
    home = home or cfg.home
    if start is None or end is None:
        first, last = delivery_window(forecasts, cfg.business_tz)
        start, end = start or first, end or last
    skus = pd.DataFrame(load_reference_rows(home, "skus"))
    if skus.empty:
        raise FileNotFoundError(f"{home / 'reference' / 'skus.jsonl'} is missing: run `lastmile simulate`")
    distances = pd.DataFrame(load_reference_rows(home, "community_distances"))
    no_delivery = {date.fromisoformat(r["date"]) for r in load_reference_rows(home, "calendar") if r.get("weather") == "typhoon"}
    manifest = home / "manifest.json"
    sim = json.loads(manifest.read_text(encoding="utf-8")).get("config", {}) if manifest.is_file() else {}
    return configured_replay(cfg, load_truth(home), forecasts, skus, start, end, distances=distances if not distances.empty else None,
                             no_delivery=no_delivery, margin=float(sim.get("stock_margin", DEFAULT_MARGIN)),
                             min_facing=int(sim.get("stock_min_facing", DEFAULT_MIN_FACING)))


def configured_replay(cfg: Settings, truth: pd.DataFrame, forecasts: pd.DataFrame, skus: pd.DataFrame, start: date, end: date, *,
                      distances: pd.DataFrame | None = None, no_delivery: set[date] | frozenset[date] = frozenset(),
                      margin: float = DEFAULT_MARGIN, min_facing: int = DEFAULT_MIN_FACING) -> ReplayResult:
    """:func:`replay` with the configured costs, holding share and pooling (``cfg``) in the
    business time zone: every caller (``lastmile forecast --replay``, ``lastmile run``, the
    forecast benchmark) replays the same plan the live stocking plan would make."""
    return replay(truth, forecasts, skus, start, end, cost_share=cfg.stocking_cost_share,
                  goodwill_share=cfg.stocking_goodwill_share, holding_share=cfg.stocking_holding_share, distances=distances,
                  pool_km=cfg.pool_km, pool_unit_cost=cfg.pool_unit_cost, no_delivery=no_delivery, margin=margin,
                  min_facing=min_facing, tz=cfg.business_tz)
