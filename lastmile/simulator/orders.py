"""Orders and their pickups: who buys what, when, through which channel, from which locker.

Demand comes first (:func:`draw_demand`): order times follow a weekly rhythm per persona
(young night owls order late, seniors in the morning, everyone before the Friday-afternoon
cut-off, nobody on Wednesday mid-afternoon) as the calendar bends it, and baskets hold one
product class so they fit one compartment. The front warehouses then serve what they stock
(:mod:`lastmile.simulator.supply`), and :func:`build_orders` turns the demanded orders with at
least one line served into placed orders. Buyer identifiers are what the
channel would see, including the leader-phone trap: a 团长 typing neighbours' group-chat
orders with their own phone, while the neighbour's openid or member card rides along.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import numpy as np

from .catalog import (
    BASKET_LINES,
    CATEGORY_FOCUS,
    CATEGORY_TASTE,
    CHANNEL_MIX,
    CLASS_MIX,
    FRIDAY_PEAK,
    HOUR_CURVE,
    IMPULSE_BIAS,
    PERSONAS,
    PRODUCT_CLASSES,
    SLOT_PREF,
    SLOTS,
    WEDNESDAY_LULL,
    WEEKDAY_FACTOR,
)
from .calendar import Calendar, hourly_intensity
from .clock import DAY_MS, HOUR_MS, MINUTE_MS, iso_seconds
from .config import SimulationConfig
from .identities import IdentityBook
from .spending_cap import SpendingCap
from .supply import Demand, Supply
from .world import Person, World

CHANNELS = ("mini_program", "group_chat", "store")
COLLECTOR_ROLES = ("buyer", "family", "neighbour", "leader", "staff")
#: Orders nobody collects stay in the compartment until staff clear them this long after the
#: slot ends (the cold-chain job assumes the same).
UNCOLLECTED_CLEAR_MS = 48 * HOUR_MS
#: Day-to-day swings of a SKU's appeal (a good batch, a leader's push in the group chat, a
#: neighbour's post): its pick weight is multiplied by a lognormal shock of mean 1 and this
#: sigma per day. Real demand varies more than independent shoppers would make it.
DAILY_SHOCK_SIGMA = 0.4


def weekly_profile(persona: str) -> np.ndarray:
    """Probability of an order falling in each of the 168 hours of the week (Monday 00:00 first)."""
    hours = np.array(HOUR_CURVE[persona])
    prof = np.concatenate([hours * f for f in WEEKDAY_FACTOR])
    day, peak_hours, factor = FRIDAY_PEAK
    for h in peak_hours:
        prof[day * 24 + h] *= factor
    day, lull_hours, factor = WEDNESDAY_LULL
    for h in lull_hours:
        prof[day * 24 + h] *= factor
    return prof / prof.sum()


@dataclass
class Orders:
    """One row per order (time order) plus the order and pickup events."""

    order_id: list[str] = field(default_factory=list)
    t_ms: list[int] = field(default_factory=list)
    person: list[int] = field(default_factory=list)
    channel: list[str] = field(default_factory=list)
    leader_placed: list[bool] = field(default_factory=list)
    basket_class: list[str] = field(default_factory=list)
    compartment: list[int] = field(default_factory=list)
    items: list[list[dict[str, Any]]] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    load_ms: list[int] = field(default_factory=list)
    slot_end_ms: list[int] = field(default_factory=list)
    delivery_late: list[bool] = field(default_factory=list)
    picked: list[bool] = field(default_factory=list)
    pickup_ms: list[int] = field(default_factory=list)  # -1 when never collected
    collector_role: list[str | None] = field(default_factory=list)
    order_events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    pickup_events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.order_id)

    def in_locker_until(self) -> np.ndarray:
        """When each order left its compartment (pickup, or cleared by staff)."""
        slot_end = np.asarray(self.slot_end_ms, dtype=np.int64)
        pick = np.asarray(self.pickup_ms, dtype=np.int64)
        return np.where(pick >= 0, pick, slot_end + UNCOLLECTED_CLEAR_MS)


class _Sampler:
    """SKU draws per (day, persona, class, dietary need), as cumulative weights for random.choices.

    A SKU's weight is its category's appeal to the persona (impulse and healthy biases
    applied), times its popularity, times the price-cut lift in a week it is cut, times the
    day's shock; SKUs not on sale that day (out of season, not launched yet) have none.
    Tables are built on first use.
    """

    def __init__(self, world: World, cal: Calendar, shocks: np.ndarray) -> None:
        self.skus = world.skus
        self.cal = cal
        self.shocks = shocks
        self.base: dict[tuple[str, str, bool], list[tuple[int, float]]] = {}
        for persona in PERSONAS:
            taste = CATEGORY_TASTE[persona]
            for cls in PRODUCT_CLASSES:
                for diet in (False, True):
                    rows = []
                    for i, s in enumerate(self.skus):
                        if s.product_class != cls:
                            continue
                        w = taste.get(s.category, 0.0) + 0.05
                        if s.is_impulse:
                            w *= IMPULSE_BIAS[persona] * (0.3 if diet else 1.0)
                        if s.is_healthy and (diet or persona == "senior_health"):
                            w *= 2.0
                        rows.append((i, w * s.popularity))
                    self.base[(persona, cls, diet)] = rows
        self.table: dict[tuple[int, str, str, bool], tuple[list[int], list[float]]] = {}

    def draw(self, rnd: random.Random, day: int, persona: str, cls: str, diet: bool, k: int) -> list[int]:
        key = (day, persona, cls, diet)
        if key not in self.table:
            when, week = self.cal.days[day].date, day // 7
            shock = self.shocks[:, day]
            rows = [(i, w * self.cal.pick_factor(i, week) * shock[i]) for i, w in self.base[(persona, cls, diet)]
                    if self.skus[i].available_on(when)]
            self.table[key] = ([i for i, _ in rows], list(accumulate(w for _, w in rows)))
        idx, cum = self.table[key]
        return rnd.choices(idx, cum_weights=cum, k=k)


def _cum(p: tuple[float, ...] | list[float]) -> list[float]:
    return list(accumulate(p))


def _pick(rnd: random.Random, cum: list[float]) -> int:
    return bisect_right(cum, rnd.random() * cum[-1])


def _sample_times(world: World, cfg: SimulationConfig, rng: np.random.Generator,
                  cal: Calendar) -> tuple[np.ndarray, np.ndarray]:
    """(order time ms, person index) for every demanded order, sorted by time.

    Each persona's orders fall on the window's hours in proportion to its weekly rhythm as
    the calendar bends it (holidays, weather, blind boxes), and the impulse persona's
    spending velocity rises week by week.
    """
    persons = world.persons
    weights = np.array([p.activity for p in persons])
    who = rng.choice(len(persons), size=cfg.orders, p=weights / weights.sum())
    persona_of = np.array([PERSONAS.index(p.persona) for p in persons])[who]
    hour = np.zeros(cfg.orders, dtype=np.int64)
    week_of_hour = np.arange(cfg.weeks * 168) // 168
    for k, persona in enumerate(PERSONAS):
        mask = persona_of == k
        n = int(mask.sum())
        if not n:
            continue
        ramp = 1.0 + (0.25 if persona == "impulse" else 0.0) * week_of_hour
        intensity = hourly_intensity(cal, weekly_profile(persona)) * ramp
        hour[mask] = rng.choice(len(intensity), size=n, p=intensity / intensity.sum())
    t = hour * HOUR_MS + rng.integers(0, HOUR_MS, cfg.orders)
    order = np.lexsort((who, t))
    return t[order], who[order]


def draw_demand(world: World, cfg: SimulationConfig, cal: Calendar, cap: SpendingCap | None = None) -> Demand:
    """Every demanded order: when, who, and the basket they want (one product class, SKUs to
    taste and as the day's assortment and price cuts allow). Nothing here knows about stock.

    ``cap``: the spending-health cap, which talks capped at-risk residents out of some impulse
    units after the basket is drawn (so the draws are the same with or without it); a basket
    left empty is still a demanded order, and is never placed."""
    rng = cfg.rng("orders")
    rnd = random.Random(cfg.seed * 1_000_003 + 43)
    times, who = _sample_times(world, cfg, rng, cal)
    shocks = cfg.rng("demand_shocks").lognormal(-DAILY_SHOCK_SIGMA ** 2 / 2, DAILY_SHOCK_SIGMA,
                                                (len(world.skus), cfg.weeks * 7))
    sampler = _Sampler(world, cal, shocks)
    class_cum = {p: _cum(CLASS_MIX[p]) for p in PERSONAS}
    demand = Demand()
    for t, pi in zip(times.tolist(), who.tolist()):
        p = world.persons[pi]
        week = t // (7 * DAY_MS)
        cls = PRODUCT_CLASSES[_pick(rnd, class_cum[p.persona])]
        lo, hi = BASKET_LINES[p.persona]
        if p.persona == "impulse":
            hi += week // 2
        picks = sampler.draw(rnd, t // DAY_MS, p.persona, cls, p.dietary_need, rnd.randint(lo, hi))
        qty_max = 4 if p.persona == "impulse" else (3 if p.persona == "family" else 2)
        lines: dict[int, int] = {}
        for s in picks:
            lines[s] = lines[s] + 1 if s in lines else rnd.randint(1, qty_max)
        demand.t_ms.append(t)
        demand.person.append(pi)
        demand.community.append(p.community_index)
        demand.basket_class.append(cls)
        demand.lines.append(cap.basket(t, p, list(lines.items())) if cap is not None else list(lines.items()))
    return demand


def build_orders(world: World, cfg: SimulationConfig, book: IdentityBook, cal: Calendar, demand: Demand,
                 supply: Supply) -> Orders:
    """The placed orders (demanded orders with at least one line served) and their pickups."""
    rnd = random.Random(cfg.seed * 1_000_003 + 41)
    skus = world.skus
    cut = cal.price_cut
    prices = [[round(s.unit_price * (1.0 - float(cut[i, w])), 2) for w in range(cfg.weeks)]
              for i, s in enumerate(skus)]
    merchants_by = _merchant_index(world)
    slot_cum = {p: _cum(SLOT_PREF[p]) for p in PERSONAS}
    slot_stamp: dict[int, str] = {}

    def stamp(ms: int) -> str:
        if ms not in slot_stamp:
            slot_stamp[ms] = iso_seconds(cfg.start, [ms])[0]
        return slot_stamp[ms]

    out = Orders()
    leaders = world.leaders
    for t, pi, cls, got in zip(demand.t_ms, demand.person, demand.basket_class, supply.served):
        if not got:  # nothing of the basket was in stock: the order is never placed
            continue
        p = world.persons[pi]
        building = world.buildings[p.building_index]
        community = world.communities[p.community_index]
        leader = world.persons[building.leader_person]
        order_id = f"ord-{len(out) + 1:09d}"
        week = t // (7 * DAY_MS)

        # channel, and whether the leader keys this order in with their own phone
        channel = _channel(rnd, p, t)
        trap = False
        if channel == "group_chat" and pi != building.leader_person and (p.openid or p.member_card):
            share = 0.35 if p.age_band == "60+" else 0.08
            if leaders[building.index].retired_teacher:
                share *= 1.5
            trap = rnd.random() < share
        buyer = _buyer(book, rnd, world, p, channel, t, leader if trap else None)

        # the lines the front warehouse could serve, at the week's prices
        slot_day, slot = _slot(rnd, slot_cum[p.persona], t)
        slot_start = slot_day * DAY_MS + SLOTS[slot][0] * HOUR_MS
        slot_end = slot_day * DAY_MS + SLOTS[slot][1] * HOUR_MS
        batch_day = stamp(slot_start - DAY_MS)[5:10].replace("-", "")
        items: list[dict[str, Any]] = []
        for s, qty, batch in got:
            sku = skus[s]
            items.append({"sku": sku.sku, "category": sku.category, "qty": qty,
                          "unit_price": prices[s][week], "origin": sku.origin,
                          "batch_id": batch or f"{sku.sku}-{batch_day}"})
        gross = sum(it["qty"] * it["unit_price"] for it in items)
        coupon = (5.0 if gross >= 39 else 0.0) if rnd.random() < 0.15 else 0.0
        total = round(max(0.0, gross - coupon), 2)
        top = max(items, key=lambda it: it["qty"] * it["unit_price"])
        merchant = _merchant(rnd, merchants_by, community.alliance_id, CATEGORY_FOCUS[top["category"]])

        # locker and compartment of the basket's class
        locker_index = building.home_locker if rnd.random() < 0.85 else rnd.choice(community.lockers)
        locker = world.lockers[locker_index]
        comp = rnd.choice([c for c in locker.compartments if c.product_class == cls])

        # delivery into the locker, then the pickup (or not)
        late_share = 0.09 if slot_day % 7 == 5 else 0.05  # Saturday after the Friday rush
        late = rnd.random() < late_share
        if late:
            load = slot_start + int(rnd.uniform(30, 180) * MINUTE_MS)
        else:
            load = slot_start - int(rnd.uniform(15, 120) * MINUTE_MS)
        load = max(load, t + 20 * MINUTE_MS)

        event = {
            "event_id": None, "event_type": "order", "schema_version": 1, "occurred_at": None,
            "source": channel, "order_id": order_id, "buyer": buyer,
            "community_id": community.community_id, "building_id": building.building_id,
            "leader_id": building.leader_id, "merchant_id": merchant, "items": items, "total_amount": total,
            "delivery_slot_start": stamp(slot_start), "delivery_slot_end": stamp(slot_end),
            "locker_id": locker.locker_id, "compartment_id": comp.compartment_id, "channel": channel,
        }
        out.order_events.append((t, event))
        picked_at, role = _pickup(book, rnd, world, out, p, t, order_id, locker.locker_id, comp.compartment_id,
                                  load, slot_start, slot_end, trap)

        out.order_id.append(order_id)
        out.t_ms.append(t)
        out.person.append(pi)
        out.channel.append(channel)
        out.leader_placed.append(trap)
        out.basket_class.append(cls)
        out.compartment.append(comp.index)
        out.items.append(items)
        out.total.append(total)
        out.load_ms.append(load)
        out.slot_end_ms.append(slot_end)
        out.delivery_late.append(late)
        out.picked.append(picked_at >= 0)
        out.pickup_ms.append(picked_at)
        out.collector_role.append(role)
    return out


def _channel(rnd: random.Random, p: Person, t: int) -> str:
    mini, group, store = CHANNEL_MIX[p.persona]
    if p.openid is None:
        group, mini = group + mini, 0.0
    u = rnd.random() * (mini + group + store)
    return "mini_program" if u < mini else ("group_chat" if u < mini + group else "store")


def _buyer(book: IdentityBook, rnd: random.Random, world: World, p: Person, channel: str, t: int,
           typed_by: Person | None) -> dict[str, str]:
    """The buyer's identifiers as this channel records them."""
    ids: dict[str, str] = {}
    if channel == "mini_program":
        ids["openid"] = book.show("openid", p.openid, p)  # type: ignore[arg-type]
        if rnd.random() < 0.9:
            ids["unionid"] = book.show("unionid", p.unionid, p)  # type: ignore[arg-type]
        hh = world.households[p.household_index]
        if p.uses_tablet and hh.tablet and rnd.random() < 0.4:
            owner = world.persons[hh.members[0]]
            ids["device_id"] = book.show("device_id", hh.tablet, owner, p, shared=True)
        elif rnd.random() < 0.85:
            ids["device_id"] = book.show("device_id", p.device_id, p)
        if p.mp_phone_from_ms is not None and t >= p.mp_phone_from_ms:
            ids["phone"] = book.show("phone", p.phone_at(t), p, messy=0.5)
    elif channel == "group_chat":
        if typed_by is not None:  # the leader's phone on a neighbour's order: the over-merge trap
            ids["phone"] = book.show("phone", typed_by.phone_at(t), typed_by, p, messy=1.5)
            if p.openid and (not p.member_card or rnd.random() < 0.7):
                ids["openid"] = book.show("openid", p.openid, p)
            else:
                ids["member_card"] = book.show("member_card", p.member_card, p)  # type: ignore[arg-type]
        else:
            ids["phone"] = book.show("phone", p.phone_at(t), p, messy=2.0)
            if p.openid and rnd.random() < 0.5:
                ids["openid"] = book.show("openid", p.openid, p)
    else:
        if p.member_card and p.card_from_ms is not None and t >= p.card_from_ms:
            ids["member_card"] = book.show("member_card", p.member_card, p, messy=0.5)
            if rnd.random() < 0.35:
                ids["phone"] = book.show("phone", p.phone_at(t), p, messy=0.5)
        else:
            ids["phone"] = book.show("phone", p.phone_at(t), p)
    return ids


def _slot(rnd: random.Random, cum: list[float], t: int) -> tuple[int, int]:
    """(day index, slot index): next-day pickup; early-morning orders can make today's later slots."""
    day, hour = t // DAY_MS, (t % DAY_MS) // HOUR_MS
    slot = _pick(rnd, cum)
    if hour < 6 and SLOTS[slot][0] >= hour + 4:
        return day, slot
    return day + 1, slot


def _merchant_index(world: World) -> dict[tuple[str | None, str], list[str]]:
    index: dict[tuple[str | None, str], list[str]] = {}
    for m in world.merchants:
        index.setdefault((m.alliance_id, m.focus), []).append(m.merchant_id)
    return index


def _merchant(rnd: random.Random, index: dict[tuple[str | None, str], list[str]], alliance: str, focus: str) -> str:
    """Mostly a merchant of the community's alliance; now and then an independent one."""
    outside = index.get((None, focus))
    if outside and rnd.random() < 0.07:
        return rnd.choice(outside)
    return rnd.choice(index[(alliance, focus)])


def _pickup(book: IdentityBook, rnd: random.Random, world: World, out: Orders, p: Person, t: int, order_id: str,
            locker_id: str, compartment_id: str, load: int, slot_start: int, slot_end: int,
            trap: bool) -> tuple[int, str | None]:
    """Emit the pickup event if the order is collected; return (pickup time or -1, collector role)."""
    never = {"senior_health": 0.015, "family": 0.025, "young_night": 0.045, "impulse": 0.04}[p.persona]
    if rnd.random() < never:
        return -1, None
    u = rnd.random()
    earliest = load + 2 * MINUTE_MS
    if u < 0.72:
        if earliest >= slot_end:
            at = earliest + int(rnd.uniform(3, 180) * MINUTE_MS)
        else:
            at = int(rnd.uniform(max(earliest, slot_start), slot_end))
    elif u < 0.92:
        at = max(earliest, slot_end + int(rnd.uniform(0, 8) * HOUR_MS))
    else:
        at = max(earliest, slot_end + int(rnd.uniform(12, 30) * HOUR_MS))

    hh = world.households[p.household_index]
    building = world.buildings[p.building_index]
    u = rnd.random()
    if trap:
        role = "leader" if u < 0.45 else "buyer"
    elif u < 0.83:
        role = "buyer"
    elif u < 0.91:
        role = "family" if len(hh.members) > 1 else "buyer"
    elif u < 0.95:
        role = "neighbour"
    elif u < 0.98:
        role = "leader"
    else:
        role = "staff"

    collector: dict[str, str] | None
    code_verified = True
    if role == "buyer":
        if p.openid and rnd.random() < 0.15:  # opened by scanning in the mini-program
            collector = {"openid": book.show("openid", p.openid, p)}
        else:
            collector = {"phone": book.show("phone", p.phone_at(at), p, messy=0.3)}
    elif role == "family":
        kin = world.persons[rnd.choice([m for m in hh.members if m != p.index])]
        collector = {"phone": book.show("phone", kin.phone_at(at), kin, messy=0.3)}
    elif role == "neighbour":
        other = world.persons[rnd.choice(building.residents)]
        collector = {"phone": book.show("phone", other.phone_at(at), other, messy=0.3)}
        if other.index == p.index:
            role = "buyer"
    elif role == "leader":
        leader = world.persons[building.leader_person]
        collector = {"phone": book.show("phone", leader.phone_at(at), leader, messy=0.3)}
        code_verified = False
        if leader.index == p.index:
            role, code_verified = "buyer", True
    else:
        collector = None
        code_verified = False

    event: dict[str, Any] = {
        "event_id": None, "event_type": "pickup", "schema_version": 1, "occurred_at": None, "source": "locker",
        "order_id": order_id, "locker_id": locker_id, "compartment_id": compartment_id,
        "code_verified": code_verified, "collector_role": role,
    }
    if collector is not None:
        event["collector"] = collector
    out.pickup_events.append((at, event))
    return at, role
