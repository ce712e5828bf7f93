"""How many units to order for the next delivery: a newsvendor with shelf life.

A front warehouse (前置仓) receives each SKU once a day. The order for a delivery is the stock
level that the cheapest mix of lost orders and write-offs asks for, minus what is still good on
the shelf:

* **Demand over the selling period.** A delivered lot sells until the next delivery brings
  fresher stock, or until it expires if that comes first (leafy greens delivered at 05:00 with
  a 20-hour life do not see the next morning). The forecast gives P50 and P90 per hour; each
  hour is read as a gamma distribution through those two quantiles (a right-skewed,
  non-negative shape that fits sparse counts), hours are summed (means add; variances add
  with a small correlation, because a rainy day lifts every hour of it), and the sum is a
  negative binomial with that mean and variance (a Poisson when the spread is smaller).
* **The stock level.** Understocking by a unit loses the margin and the customer's
  goodwill; overstocking by a unit risks writing it off. A unit left over when the next lot
  arrives is not lost at once when its shelf life outlasts the delivery interval: it sells
  first next time, so it is written off only if demand over its whole shelf life falls short
  (:func:`stock_level`); keeping it meanwhile costs a little (cold space, capital:
  ``LASTMILE_STOCKING_HOLDING_SHARE``), which keeps frozen goods from being stocked for a
  month. With a one-day shelf life this is the textbook critical ratio
  ``underage / (underage + overage)``.
* **What is on the shelf.** Units expiring before the delivery are written off and count for
  nothing; demand between the order and the delivery takes the oldest units first; units
  expiring during the selling period count only as far as the demand before their
  best-before can sell them (first expiring, first out); the rest counts in full.

Times are hour numbers (floats, local business time, see :func:`hour_number`), so the plan
(real dates) and the replay (a simulated window) share this arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from scipy import stats

#: z of the 90th percentile of a standard normal.
_Z90 = float(stats.norm.ppf(0.9))
#: Hourly gamma shapes are clipped to this range. Below 0.3 the gamma through (P50, P90)
#: puts absurd mass in its tail (a sparse hour, P50 about 0); there the hour is anchored on
#: its P90 with shape 0.3, i.e. a mean of about a third of the P90, what a Poisson hour with
#: P90 = 1 has. Quantiles closer together than a gamma of shape 500 allows are read as a
#: normal around the P50.
_SHAPE_MIN, _SHAPE_MAX = 0.3, 500.0
_SHAPES = np.geomspace(_SHAPE_MIN, _SHAPE_MAX, 600)
#: log(P90 / P50) of a gamma of each shape: decreasing in the shape, so it can be inverted.
_LOG_RATIOS = np.log(stats.gamma.ppf(0.9, _SHAPES) / stats.gamma.ppf(0.5, _SHAPES))
_P90_AT_SHAPE = stats.gamma.ppf(0.9, _SHAPES)
#: Correlation of forecast errors between hours of one selling period: demand of a whole
#: day moves together with the weather, a holiday or a promotion, so hourly variances alone
#: would understate the spread of a day's total.
HOUR_CORRELATION = 0.15
#: Hours between two deliveries (one receipt a day at 05:00 local).
DELIVERY_INTERVAL_H = 24.0
#: Hour number of 1970-01-01 00:00 (the origin of :func:`hour_number`).
_EPOCH = datetime(1970, 1, 1)


def hour_number(moment: datetime) -> float:
    """Hours since 1970-01-01 00:00 of a naive local time (aware times: their local wall clock)."""
    return (moment.replace(tzinfo=None) - _EPOCH).total_seconds() / 3600.0


def from_hour_number(hours: float) -> datetime:
    """The naive local time of an hour number."""
    return _EPOCH + timedelta(hours=hours)


def hourly_moments(p50: Sequence[float] | np.ndarray, p90: Sequence[float] | np.ndarray,
                   point: Sequence[float] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of each hour's demand from its P50 and P90 (gamma through both).

    An hour whose P90 is 0 has no demand. Quantiles crossing (P90 < P50, which independent
    quantile models can produce) are read as P90 = P50. ``point``: the forecast's own mean
    per hour, when it has one: it is the expected value (quantile models fitted on sparse
    counts put the P90 of an hour that sells one unit in five near 0.2, below its mean), and
    the variance is at least a Poisson's.
    """
    if point is not None:
        given = np.maximum(np.asarray(point, dtype=float), 0.0)
        mean, var = hourly_moments(p50, p90)
        known = ~np.isnan(given)
        return np.where(known, given, mean), np.where(known, np.maximum(var, given), var)
    lo = np.maximum(np.asarray(p50, dtype=float), 0.0)
    hi = np.maximum(np.asarray(p90, dtype=float), lo)
    mean = np.zeros_like(hi)
    var = np.zeros_like(hi)
    some = hi > 0
    with np.errstate(divide="ignore"):
        log_ratio = np.where(lo[some] > 0, np.log(hi[some] / np.where(lo[some] > 0, lo[some], 1.0)), np.inf)
    # np.interp needs increasing x: the ratios fall as the shape grows, so read them reversed.
    shape = np.interp(log_ratio, _LOG_RATIOS[::-1], _SHAPES[::-1], left=_SHAPE_MAX, right=_SHAPE_MIN)
    scale = hi[some] / np.interp(shape, _SHAPES, _P90_AT_SHAPE)
    # Narrower than the narrowest gamma: read as a normal around the P50.
    narrow = log_ratio < _LOG_RATIOS[-1]
    spread = (hi[some] - lo[some]) / _Z90
    mean[some] = np.where(narrow, lo[some], shape * scale)
    var[some] = np.where(narrow, spread * spread, shape * scale * scale)
    return mean, var


def period_moments(mean: np.ndarray, var: np.ndarray, correlation: float = HOUR_CORRELATION) -> tuple[float, float]:
    """Mean and variance of the sum of hours whose errors share ``correlation``."""
    sd = np.sqrt(var)
    total_var = float(var.sum()) + correlation * (float(sd.sum()) ** 2 - float(var.sum()))
    return float(mean.sum()), max(total_var, 0.0)


def demand_quantile(mean: np.ndarray | Sequence[float] | float, var: np.ndarray | Sequence[float] | float,
                    q: np.ndarray | Sequence[float] | float) -> np.ndarray:
    """The ``q`` quantile of a count with this mean and variance (negative binomial, or Poisson
    when the variance is at most the mean); 0 where the mean is 0."""
    mean, var, q = np.broadcast_arrays(np.asarray(mean, dtype=float), np.asarray(var, dtype=float), np.asarray(q, dtype=float))
    out = np.zeros(mean.shape)
    pos = mean > 1e-9
    over = pos & (var > mean * 1.0001)
    poisson = pos & ~over
    if poisson.any():
        out[poisson] = stats.poisson.ppf(q[poisson], mean[poisson])
    if over.any():
        m, v = mean[over], var[over]
        out[over] = stats.nbinom.ppf(q[over], m * m / (v - m), m / v)
    return out


@dataclass(frozen=True)
class Economics:
    """What a unit short and a unit too many cost, per SKU (CNY)."""

    unit_price: float
    unit_cost: float
    goodwill: float
    shelf_life_h: float
    #: Cost of keeping a unit one more day, as a share of its unit cost (cold space, capital).
    holding_share: float = 0.0

    @classmethod
    def of(cls, unit_price: float, shelf_life_days: float, cost_share: float, goodwill_share: float,
           unit_cost: float | None = None, holding_share: float = 0.0) -> "Economics":
        """From the SKU's price and shelf life and the configured shares (``LASTMILE_STOCKING_*``)."""
        cost = unit_price * cost_share if unit_cost is None or not unit_cost > 0 else unit_cost
        return cls(unit_price, cost, unit_price * goodwill_share, max(shelf_life_days, 1 / 24) * 24.0, holding_share)

    @property
    def underage(self) -> float:
        """A lost unit: the margin and the goodwill."""
        return max(self.unit_price - self.unit_cost, 0.0) + self.goodwill

    def selling_hours(self, interval_h: float = DELIVERY_INTERVAL_H) -> float:
        """How long a delivered lot sells: until the next delivery, or its expiry if sooner."""
        return min(self.shelf_life_h, interval_h)


def demand_cdf(units: np.ndarray, mean: float, var: float) -> np.ndarray:
    """P(demand <= units) for the count of :func:`demand_quantile` (negative binomial or Poisson)."""
    if mean <= 1e-9:
        return np.ones(len(units))
    if var > mean * 1.0001:
        return stats.nbinom.cdf(units, mean * mean / (var - mean), mean / var)
    return stats.poisson.cdf(units, mean)


def stock_level(econ: Economics, mean: float, var: float, life_periods: float,
                interval_h: float = DELIVERY_INTERVAL_H, life: tuple[float, float] | None = None) -> tuple[int, float]:
    """The stock to aim for at the delivery, and the share of periods it serves in full.

    The S-th unit is worth stocking while what it saves is more than what it risks: it is
    sold in the period when demand exceeds S - 1 (saving the lost order), and it is written
    off when demand over the lot's whole shelf life (``life_periods`` selling periods:
    leftovers sell first next time) stays below S, or kept another day at the holding cost.
    With a shelf life of one period this is the textbook critical ratio; a longer life makes
    a write-off less likely, so more is stocked, and slow movers are held back by how little
    of them sells before they expire. ``life``: the mean and variance of demand over the whole
    shelf life when the forecast gives them (else ``life_periods`` times the period's).
    """
    life_mean, life_var = life if life is not None else (mean * life_periods, var * life_periods)
    periods = max(life_periods, 1.0)
    ceiling = int(demand_quantile(mean, var, 0.99999)[()]) + 2
    units = np.arange(ceiling + 1)
    in_period = demand_cdf(units, mean, var)
    over_life = in_period if periods <= 1.0 else demand_cdf(units, max(life_mean, mean), max(life_var, var))
    holding = econ.unit_cost * econ.holding_share * interval_h / 24.0
    worth = econ.underage * (1.0 - in_period) > econ.unit_cost * over_life + holding * in_period
    target = int(units[np.argmin(worth)]) if not worth.all() else ceiling
    return target, float(in_period[target])


@dataclass(frozen=True)
class Lot:
    """Units on the shelf sharing a best-before (hour number)."""

    qty: int
    best_before: float


def usable_on_hand(lots: Sequence[Lot], order_at: float, delivery_at: float, period_end: float,
                   hours: np.ndarray, mean: np.ndarray) -> tuple[int, int, float]:
    """(units expiring before the delivery, units expiring in the selling period that will
    not sell in time, units that count against the order).

    ``hours``/``mean``: the hourly expected demand from ``order_at`` on. Lots sell oldest
    first: demand before the delivery is taken from the lots still good then, and a lot
    expiring at ``t`` inside the period can only sell what demand arrives before ``t`` after
    older lots took their share.
    """
    ordered = sorted((lot for lot in lots if lot.qty > 0), key=lambda lot: lot.best_before)
    expiring = sum(lot.qty for lot in ordered if lot.best_before <= delivery_at)
    cum = np.concatenate([[0.0], np.cumsum(mean)])

    def demand_until(t: float) -> float:
        return float(np.interp(t, np.concatenate([[hours[0]], hours + 1.0]), cum)) if len(hours) else 0.0

    sold_before = 0.0  # expected units already taken from earlier lots (and before the delivery)
    usable = 0.0
    stale = 0.0
    before_delivery = demand_until(delivery_at) - demand_until(order_at)
    budget_pre = before_delivery
    for lot in ordered:
        if lot.best_before <= delivery_at:
            continue
        # Pre-delivery demand takes the oldest good units first.
        take = min(lot.qty, budget_pre)
        budget_pre -= take
        left = lot.qty - take
        if lot.best_before >= period_end:
            usable += left
            continue
        can_sell = max(demand_until(lot.best_before) - demand_until(delivery_at) - sold_before, 0.0)
        sells = min(left, can_sell)
        sold_before += sells
        usable += sells
        stale += left - sells
    return expiring, int(round(stale)), usable


@dataclass
class Decision:
    """The order for one front warehouse, SKU and delivery, with the numbers behind it."""

    community_id: str
    sku: str
    delivery_at: datetime
    order_qty: int
    on_hand: int
    expiring_before_delivery: int
    expiring_unsold: int
    usable_on_hand: float
    p50_demand: float
    p90_demand: float
    target: int
    service_level: float
    peak: str = ""
    selling_until: datetime | None = None
    sku_name: str = ""
    pool_from: str | None = None
    pooled_qty: int = 0
    notes: list[str] = field(default_factory=list)
    #: Days a lot keeps when that outlasts its selling period (a leftover sells next time,
    #: which is why such SKUs are stocked deeper); 0 when it does not.
    keeps_days: float = 0.0

    @property
    def shortfall(self) -> int:
        """Units the target asks for beyond what is on the shelf (before pooling)."""
        return self.order_qty + self.pooled_qty

    @property
    def surplus(self) -> int:
        """Good units beyond this warehouse's own target (what a neighbour could take)."""
        return max(int(math.floor(self.usable_on_hand)) - self.target, 0)

    @property
    def reason(self) -> str:
        return reason(self)


def reason(d: Decision) -> str:
    """The decision in a buyer's words: demand, stock, what expires, the order."""
    until = f" to {d.selling_until:%a %H:%M}" if d.selling_until else ""
    parts = [f"P90 demand {d.p90_demand:.0f} (P50 {d.p50_demand:.0f}) {d.delivery_at:%a %H:%M}{until}"
             + (f", {d.peak}" if d.peak else "")]
    stock = f"on hand {d.on_hand}"
    expiring = [f"{n} {what}" for n, what in ((d.expiring_before_delivery, "expire before delivery"),
                                              (d.expiring_unsold, "would expire unsold")) if n]
    parts.append(stock + (": " + ", ".join(expiring) if expiring else ""))
    if d.pool_from and d.pooled_qty:
        parts.append(f"{d.pooled_qty} from neighbour {d.pool_from}")
    keeps = f", a leftover keeps {d.keeps_days:g} days" if d.keeps_days else ""
    parts.append(f"order {d.order_qty} to stock {d.target} ({d.service_level:.0%} service level{keeps})")
    return "; ".join(parts + d.notes)


def peak_label(hours: np.ndarray, p90: np.ndarray) -> str:
    """The two-hour window with the highest P90 demand when it stands out ("peak Fri 16:00-18:00 (12)")."""
    if len(hours) < 4 or not np.any(p90 > 0):
        return ""
    pair = p90[:-1] + p90[1:]
    i = int(np.argmax(pair))
    if pair[i] < 2.5 * pair.mean() or pair[i] < 2:
        return ""
    start = from_hour_number(float(hours[i]))
    return f"peak {start:%a %H}:00-{(start + timedelta(hours=2)):%H}:00 ({pair[i]:.0f})"


def decide(community_id: str, sku: str, econ: Economics, order_at: datetime, delivery_at: datetime,
           forecast_hours: Sequence[datetime] | np.ndarray, p50: Sequence[float], p90: Sequence[float],
           lots: Sequence[Lot], sku_name: str = "", next_delivery_at: datetime | None = None,
           point: Sequence[float] | None = None) -> Decision:
    """The order for one delivery from the hourly forecast and the lots on the shelf.

    ``forecast_hours`` (local hour starts) must cover the selling period after
    ``delivery_at``; hours before ``order_at`` are ignored. ``next_delivery_at``: when the
    following lot arrives (default a day later; later when a typhoon cancels a delivery).
    ``point``: the forecast's hourly mean, when it has one (see :func:`hourly_moments`).
    """
    hours = np.asarray([hour_number(h) for h in forecast_hours], dtype=float)
    t_delivery = hour_number(delivery_at)
    t_next = hour_number(next_delivery_at) if next_delivery_at else t_delivery + DELIVERY_INTERVAL_H
    return order_for(community_id, sku, econ, hour_number(order_at), t_delivery, t_next, hours,
                     np.asarray(p50, dtype=float), np.asarray(p90, dtype=float), lots, sku_name,
                     None if point is None else np.asarray(point, dtype=float))


def order_for(community_id: str, sku: str, econ: Economics, t_order: float, t_delivery: float, t_next: float,
              hours: np.ndarray, p50: np.ndarray, p90: np.ndarray, lots: Sequence[Lot] | Sequence[object],
              sku_name: str = "", point: np.ndarray | None = None) -> Decision:
    """:func:`decide` on hour numbers (the replay's clock). ``lots``: anything with ``qty`` and
    ``best_before`` (the ledger's lots too). Raises ValueError when the forecast does not
    cover the selling period."""
    keep = hours >= math.floor(t_order)
    if np.isnan(p50[keep]).any() or np.isnan(p90[keep]).any():
        raise ValueError(f"{community_id}/{sku}: the forecast has hours without a P50 or P90")
    order = np.argsort(hours[keep], kind="stable")
    hours, lo, hi = hours[keep][order], p50[keep][order], p90[keep][order]
    mean, var = hourly_moments(lo, hi, None if point is None else point[keep][order])
    interval = t_next - t_delivery
    selling = econ.selling_hours(interval)
    period_end = t_delivery + selling
    in_period = (hours >= t_delivery) & (hours < period_end)
    covered = float(in_period.sum())
    delivery_at = from_hour_number(t_delivery)
    if covered < selling - 0.5:
        raise ValueError(f"{community_id}/{sku}: the forecast covers {covered:.0f} of the {selling:.0f} selling "
                         f"hours after the delivery at {delivery_at:%Y-%m-%d %H:%M}")
    m, v = period_moments(mean[in_period], var[in_period])
    life = None
    if econ.shelf_life_h > selling:
        # Demand over the whole shelf life: the forecast's own hours as far as it reaches
        # (a leftover sells in the next morning's peak, not in an average half day), the
        # period's rate beyond.
        in_life = (hours >= t_delivery) & (hours < t_delivery + econ.shelf_life_h)
        m_l, v_l = period_moments(mean[in_life], var[in_life])
        rest = max(econ.shelf_life_h - float(in_life.sum()), 0.0) / selling
        life = (m_l + m * rest, v_l + v * rest)
    target, level = stock_level(econ, m, v, econ.shelf_life_h / selling, interval, life)
    p50_d, p90_d = (int(x) for x in demand_quantile([m, m], [v, v], [0.5, 0.9]))
    expiring, stale, usable = usable_on_hand(lots, t_order, t_delivery, period_end, hours, mean)  # type: ignore[arg-type]
    qty = max(int(math.ceil(target - usable - 1e-9)), 0)
    return Decision(community_id=community_id, sku=sku, delivery_at=delivery_at, order_qty=qty,
                    on_hand=sum(lot.qty for lot in lots), expiring_before_delivery=expiring,  # type: ignore[attr-defined]
                    expiring_unsold=stale, usable_on_hand=usable, p50_demand=float(p50_d), p90_demand=float(p90_d),
                    target=target, service_level=level, peak=peak_label(hours[in_period], hi[in_period]),
                    selling_until=from_hour_number(period_end), sku_name=sku_name,
                    keeps_days=round(econ.shelf_life_h / 24.0, 1) if econ.shelf_life_h > selling else 0.0)
