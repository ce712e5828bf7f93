"""The supply side: every community front warehouse (前置仓) stocks its SKUs by the default
policy, sells first-expiring-first-out, writes off what rots, and loses what it cannot serve.

Shoppers' demand is drawn first (unconstrained, the truth); this module then walks the
window in time order. At 05:00 each day the evening's orders arrive (lots with a best-before
from the SKU's shelf life; a few units damaged in handling), every order line takes what
the shelf has (:class:`~lastmile.stocking.ledger.ShelfStock`, the same ledger the replay
uses), and at 22:00 the shelf is counted and the default policy
(:func:`~lastmile.stocking.policies.last_week_plus_margin`) orders for the next morning from
last week's same-day SALES, which stock-outs censor. A line beyond stock is lost: sales are
censored, demand is not. Now and then a cold-room fault writes off part of the chilled stock.

What the warehouse sees becomes ``inventory`` events (receipts, write-offs, the 22:00 counts
and a count of 0 the moment a SKU sells out); what really happened becomes
``truth/demand_hourly.jsonl`` and ``truth/stock_daily.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np

from lastmile.stocking.ledger import Expired, ShelfStock
from lastmile.stocking.policies import last_week_plus_margin, sellable_on_hand

from .calendar import Calendar
from .catalog import CATEGORY_FOCUS, Sku
from .clock import DAY_MS, HOUR_MS, MINUTE_MS, iso_seconds
from .config import SimulationConfig
from .world import World

#: Local hour the evening's orders arrive (the first day's opening stock arrives at 00:00).
RECEIPT_HOUR = 5
#: Local hour the shelf is counted and the next order placed.
COUNT_HOUR = 22
#: Damaged units are found and written off this long after the receipt.
DAMAGE_FOUND_MS = 30 * MINUTE_MS
#: Share of the chilled stock on hand a cold-room fault spoils.
COLD_ROOM_FAULT_LOSS = 0.3


def warehouse_id(community_id: str) -> str:
    """The front warehouse of a community (one each)."""
    return f"fw-{community_id}"


@dataclass
class Demand:
    """Demanded orders in time order: when, which community, and the lines (SKU index, units)."""

    t_ms: list[int] = field(default_factory=list)
    person: list[int] = field(default_factory=list)
    community: list[int] = field(default_factory=list)
    basket_class: list[str] = field(default_factory=list)
    lines: list[list[tuple[int, int]]] = field(default_factory=list)
    #: Impulse units the spending-health cap talked capped at-risk residents out of (truth rows).
    suppressed: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Supply:
    """What the front warehouses did: the lines served per demanded order (SKU index, units,
    batch), the inventory events, the truth rows and the headline figures."""

    served: list[list[tuple[int, int, str]]]
    events: list[tuple[int, dict[str, Any]]]
    demand_hourly: list[dict[str, Any]]
    stock_daily: list[dict[str, Any]]
    figures: dict[str, float]


class _Shelf:
    __slots__ = ("stock", "sold_out")

    def __init__(self) -> None:
        self.stock = ShelfStock()
        self.sold_out = True  # nothing on the shelf before the first delivery


def unconstrained(world: World, cfg: SimulationConfig, demand: Demand) -> Supply:
    """Every line served in full (``supply`` off): no stock, no inventory events."""
    served = [[(s, q, "") for s, q in lines] for lines in demand.lines]
    hourly, _, _ = _demand_truth(world, cfg, demand, served)
    return Supply(served, [], hourly, [], {})


def run_supply(world: World, cfg: SimulationConfig, skus: tuple[Sku, ...], cal: Calendar, demand: Demand) -> Supply:
    """Stock every front warehouse by the default policy and serve ``demand`` from it."""
    return _Run(world, cfg, skus, cal, demand).run()


class _Run:
    def __init__(self, world: World, cfg: SimulationConfig, skus: tuple[Sku, ...], cal: Calendar,
                 demand: Demand) -> None:
        self.world, self.cfg, self.skus, self.cal, self.demand = world, cfg, skus, cal, demand
        n_c, n_s, n_d = len(world.communities), len(skus), len(cal.days)
        self.n_c, self.n_s, self.n_d = n_c, n_s, n_d
        self.available = [[s.available_on(day.date) for day in cal.days] for s in skus]
        self.first_day = [next((d for d in range(n_d) if av[d]), n_d) for av in self.available]
        self.shelves = [[_Shelf() for _ in range(n_s)] for _ in range(n_c)]
        self.sales = [[[0] * n_d for _ in range(n_s)] for _ in range(n_c)]
        self.pending = [[0] * n_s for _ in range(n_c)]
        self.daily = {k: np.zeros((n_c, n_s, n_d)) for k in ("received", "written_off", "written_off_cny")}
        self.events: list[tuple[int, dict[str, Any]]] = []
        self.receipts: list[tuple[dict[str, Any], int]] = []  # (event, best-before ms) to stamp at the end
        self.rng = cfg.rng("supply")
        self.cost = [s.unit_cost for s in skus]
        self.shelf_ms = [int(s.shelf_life_days * DAY_MS) for s in skus]
        stamps = [(cfg.start + timedelta(days=d)).strftime("%Y%m%d") for d in range(n_d)]
        self.day_stamp = stamps
        self.cids = [c.community_id for c in world.communities]
        self.merchant = self._merchants()
        self.opening = self._opening()

    # -- set-up ------------------------------------------------------------------------------

    def _merchants(self) -> list[list[str]]:
        """The supplier per community and SKU: the first merchant of the community's alliance
        with the SKU's category focus."""
        first: dict[tuple[str | None, str], str] = {}
        for m in self.world.merchants:
            first.setdefault((m.alliance_id, m.focus), m.merchant_id)
        return [[first[(c.alliance_id, CATEGORY_FOCUS[s.category])] for s in self.skus] for c in self.world.communities]

    def _opening(self) -> list[list[float]]:
        """The supplier's suggested daily quantity: the mean demand per day on sale."""
        units = np.zeros((self.n_c, self.n_s))
        for c, lines in zip(self.demand.community, self.demand.lines):
            for s, q in lines:
                units[c, s] += q
        days_on_sale = np.array([max(1, sum(av)) for av in self.available], dtype=float)
        return (units / days_on_sale).tolist()

    def _checkpoints(self) -> list[tuple[int, int, str, int]]:
        """(time, tie order, kind, argument): receipts, counts and cold-room faults."""
        out: list[tuple[int, int, str, int]] = []
        for d in range(self.n_d):
            out.append((d * DAY_MS + (RECEIPT_HOUR * HOUR_MS if d else 0), 0, "receipt", d))
            out.append((d * DAY_MS + COUNT_HOUR * HOUR_MS, 1, "count", d))
        faults = self.rng.poisson(self.cfg.cold_room_faults_per_week * self.cfg.weeks, self.n_c)
        for c, n in enumerate(faults.tolist()):
            for _ in range(n):
                day = int(self.rng.integers(self.n_d))
                t = day * DAY_MS + int(self.rng.integers(8 * HOUR_MS, 20 * HOUR_MS))
                out.append((t, 2, "fault", c))
        out.sort()
        return out

    # -- the walk ----------------------------------------------------------------------------

    def run(self) -> Supply:
        points = self._checkpoints()
        k = 0
        served: list[list[tuple[int, int, str]]] = []
        d = self.demand
        for t, c, lines in zip(d.t_ms, d.community, d.lines):
            while k < len(points) and points[k][0] <= t:
                self._checkpoint(*points[k])
                k += 1
            served.append([x for x in (self._sell(c, s, q, t) for s, q in lines) if x is not None])
        for point in points[k:]:
            self._checkpoint(*point)
        self._stamp_best_before()
        hourly, demanded, sold = _demand_truth(self.world, self.cfg, d, served)
        return Supply(served, self.events, hourly, self._daily_rows(demanded, sold), self._figures(demanded, sold))

    def _checkpoint(self, t: int, _tie: int, kind: str, arg: int) -> None:
        if kind == "receipt":
            self._receive(arg, t)
        elif kind == "count":
            self._count(arg, t)
        else:
            self._fault(arg, t)

    def _event(self, t: int, c: int, s: int, movement: str, qty: int, source: str = "front_warehouse",
               **extra: Any) -> dict[str, Any]:
        cid = self.cids[c]
        event: dict[str, Any] = {
            "event_id": None, "event_type": "inventory", "schema_version": 1, "occurred_at": None,
            "source": source, "warehouse_id": warehouse_id(cid), "community_id": cid, "sku": self.skus[s].sku,
            "movement": movement, "qty": qty,
        }
        event.update(extra)
        self.events.append((t, event))
        return event

    def _write_off(self, c: int, s: int, t: int, batch_id: str, qty: int, reason: str) -> None:
        self._event(t, c, s, "write_off", qty, batch_id=batch_id, reason=reason)
        day = min(self.n_d - 1, t // DAY_MS)
        self.daily["written_off"][c, s, day] += qty
        self.daily["written_off_cny"][c, s, day] += qty * self.cost[s]

    def _expire(self, c: int, s: int, now: int, signal: bool = True) -> None:
        """Write off the lots past their best-before at ``now``; if that empties the shelf, the
        SKU sold out when the last of them expired (``signal``: say so then)."""
        lots: list[Expired] = self.shelves[c][s].stock.expire(now)
        for lot in lots:
            self._write_off(c, s, int(lot.best_before), lot.batch_id, lot.qty, "expired")
        if lots and signal:
            self._signal_sold_out(c, s, int(lots[-1].best_before))

    def _signal_sold_out(self, c: int, s: int, t: int) -> None:
        shelf = self.shelves[c][s]
        if not shelf.sold_out and shelf.stock.on_hand == 0:
            shelf.sold_out = True
            self._event(t, c, s, "stock_count", 0, source="mini_program")

    def _receive(self, d: int, now: int) -> None:
        deliveries = self.cal.days[d].deliveries
        if d == 0:
            self._plan(-1)
        binomial = self.rng.binomial
        for c in range(self.n_c):
            for s in range(self.n_s):
                shelf = self.shelves[c][s]
                if shelf.stock.lots:
                    self._expire(c, s, now, signal=False)  # the delivery decides whether it is sold out
                qty = self.pending[c][s]
                self.pending[c][s] = 0
                if qty and deliveries:
                    batch = f"{self.skus[s].sku}-{self.cids[c]}-{self.day_stamp[d]}"
                    best_before = now + self.shelf_ms[s]
                    damaged = int(binomial(qty, self.cfg.damaged_share)) if self.cfg.damaged_share else 0
                    shelf.stock.receive(qty - damaged, best_before, batch, self.cost[s])
                    event = self._event(now, c, s, "receipt", qty, batch_id=batch, best_before=None,
                                        unit_cost=self.cost[s], merchant_id=self.merchant[c][s])
                    self.receipts.append((event, best_before))
                    self.daily["received"][c, s, d] += qty
                    if damaged:
                        self._write_off(c, s, now + DAMAGE_FOUND_MS, batch, damaged, "damaged")
                    shelf.sold_out = shelf.stock.on_hand == 0
                elif self.available[s][d]:
                    self._signal_sold_out(c, s, now)

    def _count(self, d: int, now: int) -> None:
        for c in range(self.n_c):
            for s in range(self.n_s):
                shelf = self.shelves[c][s]
                if shelf.stock.lots:
                    self._expire(c, s, now)
                on_hand = shelf.stock.on_hand
                if on_hand or self.available[s][d]:
                    self._event(now, c, s, "stock_count", on_hand)
                    shelf.sold_out = on_hand == 0
        self._plan(d)

    def _plan(self, d: int) -> None:
        """The evening order of day ``d`` for the delivery of day ``d + 1`` (none in a typhoon)."""
        nxt = d + 1
        if nxt >= self.n_d or not self.cal.days[nxt].deliveries:
            return
        # The operator counts what will still be sellable at the next day's close.
        close = nxt * DAY_MS + COUNT_HOUR * HOUR_MS
        cfg = self.cfg
        for c in range(self.n_c):
            for s in range(self.n_s):
                if not self.available[s][nxt]:
                    continue
                stock = self.shelves[c][s].stock
                usable = sellable_on_hand(stock, close) if stock.lots else 0
                self.pending[c][s] = last_week_plus_margin(
                    self.sales[c][s], nxt, usable, opening=self.opening[c][s],
                    first_day=self.first_day[s], margin=cfg.stock_margin, min_facing=cfg.stock_min_facing)

    def _fault(self, c: int, now: int) -> None:
        """A cold-room fault: part of every chilled SKU's stock is too warm to sell."""
        for s, sku in enumerate(self.skus):
            if sku.product_class != "chilled":
                continue
            stock = self.shelves[c][s].stock
            if not stock.lots:
                continue
            self._expire(c, s, now)
            lost = round(stock.on_hand * COLD_ROOM_FAULT_LOSS)
            if lost:
                _, batches = stock.sell(lost, now)
                for batch, n in batches:
                    self._write_off(c, s, now, batch, n, "temperature")
                self._signal_sold_out(c, s, now)

    def _sell(self, c: int, s: int, qty: int, t: int) -> tuple[int, int, str] | None:
        shelf = self.shelves[c][s]
        stock = shelf.stock
        if stock.lots and stock.lots[0].best_before <= t:
            self._expire(c, s, t)
        if not stock.lots:
            self._signal_sold_out(c, s, t)
            return None
        served, batches = stock.sell(qty, t)
        self.sales[c][s][t // DAY_MS] += served
        if not stock.lots:
            self._signal_sold_out(c, s, t)
        return (s, served, batches[0][0]) if served else None

    # -- results -----------------------------------------------------------------------------

    def _stamp_best_before(self) -> None:
        if self.receipts:
            stamps = iso_seconds(self.cfg.start, [bb for _, bb in self.receipts])
            for (event, _), stamp in zip(self.receipts, stamps):
                event["best_before"] = stamp

    def _daily_rows(self, demanded: np.ndarray, sold: np.ndarray) -> list[dict[str, Any]]:
        rec, wo, cny = self.daily["received"], self.daily["written_off"], self.daily["written_off_cny"]
        cells = np.nonzero((rec + wo + demanded) > 0)
        dates = [(self.cfg.start + timedelta(days=d)).isoformat() for d in range(self.n_d)]
        names = [s.sku for s in self.skus]
        columns = zip(*(a.tolist() for a in cells), rec[cells].tolist(), wo[cells].tolist(), cny[cells].tolist(),
                      sold[cells].tolist(), demanded[cells].tolist())
        return [{"community_id": self.cids[c], "sku": names[s], "date": dates[d], "received": int(r),
                 "written_off": int(w), "written_off_cny": round(x, 2), "served": int(q), "demanded": int(n),
                 "lost": int(n - q)} for c, s, d, r, w, x, q, n in columns]

    def _figures(self, demanded: np.ndarray, sold_daily: np.ndarray) -> dict[str, float]:
        """Fill rate and write-off share of the fresh SKUs (shelf life up to a week), and the
        spoilage in CNY: the figures the default policy is calibrated to."""
        fresh = np.array([s.is_fresh for s in self.skus])
        sold = sold_daily.sum(axis=(0, 2))
        want = demanded.sum(axis=(0, 2))
        received = self.daily["received"].sum(axis=(0, 2))
        written = self.daily["written_off"].sum(axis=(0, 2))
        return {
            "fresh_fill_rate": round(float(sold[fresh].sum() / max(1.0, want[fresh].sum())), 4),
            "fresh_write_off_share": round(float(written[fresh].sum() / max(1.0, received[fresh].sum())), 4),
            "fill_rate": round(float(sold.sum() / max(1.0, want.sum())), 4),
            "written_off_cny": round(float(self.daily["written_off_cny"].sum()), 2),
        }


def _demand_truth(world: World, cfg: SimulationConfig, demand: Demand,
                  served: list[list[tuple[int, int, str]]]) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """truth/demand_hourly.jsonl rows (demanded > 0), and demanded and served units per
    community, SKU and day."""
    n_c, n_s, n_h = len(world.communities), len(world.skus), cfg.weeks * 168
    key: list[int] = []
    want: list[int] = []
    got: list[int] = []
    for t, c, lines, sold_lines in zip(demand.t_ms, demand.community, demand.lines, served):
        base = c * n_s
        h = t // HOUR_MS
        sold = {s: q for s, q, _ in sold_lines}
        for s, q in lines:
            key.append((base + s) * n_h + h)
            want.append(q)
            got.append(sold.get(s, 0))
    size = n_c * n_s * n_h
    keys = np.asarray(key, dtype=np.int64)
    demanded = np.bincount(keys, weights=np.asarray(want, dtype=float), minlength=size)
    sold_units = np.bincount(keys, weights=np.asarray(got, dtype=float), minlength=size)
    cells = np.nonzero(demanded)[0]
    hour_stamps = iso_seconds(cfg.start, np.arange(n_h, dtype=np.int64) * HOUR_MS)
    cids = [c.community_id for c in world.communities]
    names = [s.sku for s in world.skus]
    rows = [{"community_id": cids[k // (n_s * n_h)], "sku": names[k // n_h % n_s], "hour": hour_stamps[k % n_h],
             "demanded": int(dq), "served": int(sq)}
            for k, dq, sq in zip(cells.tolist(), demanded[cells].tolist(), sold_units[cells].tolist())]
    shape = (n_c, n_s, cfg.weeks * 7, 24)
    return rows, demanded.reshape(shape).sum(axis=3), sold_units.reshape(shape).sum(axis=3)
