"""After the pickup: claims, packaging returns and reviews, driven by what really happened.

An order that sat in a compartment during a real excursion (between being loaded and being
collected) is the main source of temperature claims and of bad reviews tagged ``not_cold``;
late deliveries and damage pull stars down too. A few claim-abusers claim on many orders.
This is the signal later models are scored against, so the causal links are explicit here.

Bad batches: a share of production batches (``SimulationConfig.bad_batch_share``) sold on
at least :data:`BAD_BATCH_MIN_ORDERS` orders is of degraded quality. Most buyers of such a batch get poor goods: they review more often, with
1-2 stars, a quality tag of the product's kind (not_fresh, overripe, wilted, ...) and a text
naming the product, and some claim (reason quality). These effects draw from their own
generator, so every order without a bad batch keeps exactly the events it had without them.
truth/bad_batches.jsonl lists the bad batches and their first bad signal (lastmile.batches
measures its alerts against it).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from .catalog import REVIEW_TEXT
from .clock import DAY_MS, HOUR_MS, iso_ms
from .config import SimulationConfig
from .identities import IdentityBook
from .incidents import ColdChain
from .orders import Orders
from .world import Person, World

#: Chance that an order caught in a real excursion leads to a temperature claim.
TEMPERATURE_CLAIM_IF_AFFECTED = 0.5
#: Base rates per collected order (an unaffected temperature claim is rare but happens).
BASE_CLAIM_RATES = (("temperature", 0.0015), ("damaged", 0.008), ("quality", 0.012), ("missing", 0.004), ("other", 0.002))

#: Only batches sold on at least this many orders are made bad: a lot of two or three orders
#: cannot be told from bad luck by any statistical rule (nor should it), and procurement acts
#: on the lots that reach many neighbours.
BAD_BATCH_MIN_ORDERS = 8
#: A buyer of a bad batch's line gets poor goods with this chance (not every unit is bad) ...
BAD_BATCH_HIT = 0.9
#: ... and then reviews badly (a new review, or their review turned bad) with this chance ...
BAD_BATCH_REVIEW = 0.85
#: ... and claims (reason quality) with this chance, unless the order is claimed already.
BAD_BATCH_CLAIM = 0.35
#: Quality tags a buyer picks for a bad product, by category (any other: poor_quality).
BAD_BATCH_TAGS = {"fruit": ("overripe", "not_fresh"), "vegetables": ("wilted", "not_fresh"),
                  "meat": ("bad_smell", "not_fresh"), "seafood": ("bad_smell", "not_fresh"),
                  "dairy": ("sour", "not_fresh"), "eggs": ("not_fresh",), "tofu": ("sour", "not_fresh")}
#: Review texts of a bad product, by quality tag; ``{name}`` is the product's name.
BAD_BATCH_TEXT = {
    "zh": {"not_fresh": ("{name}不新鲜，有股味道", "这批{name}一看就不新鲜"), "overripe": ("{name}熟过头了，软塌塌的", "{name}一半都烂了"),
           "wilted": ("{name}蔫了，叶子发黄", "这次的{name}都打蔫了"), "bad_smell": ("{name}有异味，不敢吃", "{name}闻着不对劲"),
           "sour": ("{name}酸了，像是放坏了", "{name}有点变质"), "poor_quality": ("这批{name}质量很差", "{name}和以前完全不一样")},
    "en": {"not_fresh": ("The {name} were not fresh at all", "This batch of {name} looked old"),
           "overripe": ("{name} overripe and mushy", "Half of the {name} had gone bad"),
           "wilted": ("{name} wilted and yellow", "The {name} were limp"), "bad_smell": ("The {name} smelled off", "{name} had a bad smell"),
           "sour": ("{name} had turned sour", "The {name} tasted off"), "poor_quality": ("Very poor {name} this time", "{name} not like before")},
}


def excursion_affected(orders: Orders, chain: ColdChain) -> np.ndarray:
    """Which orders were in a compartment while it was out of range (a real excursion)."""
    comp = np.asarray(orders.compartment)
    load = np.asarray(orders.load_ms, dtype=np.int64)
    until = orders.in_locker_until()
    affected = np.zeros(len(orders), dtype=bool)
    for exc in chain.excursions:
        affected |= (comp == exc["compartment_index"]) & (load <= exc["end_ms"]) & (until >= exc["start_ms"])
    return affected


def build_aftersales(world: World, cfg: SimulationConfig, orders: Orders, affected: np.ndarray, book: IdentityBook,
                     ) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int, dict[str, Any]]], list[str | None],
                                list[dict[str, Any]]]:
    """(return events, review events, claim reason per order or None, truth rows of the bad batches)."""
    rnd = random.Random(cfg.seed * 1_000_003 + 53)
    bad = BadBatches(world, cfg, orders)
    returns: list[tuple[int, dict[str, Any]]] = []
    reviews: list[tuple[int, dict[str, Any]]] = []
    claims: list[str | None] = []
    affected_list = affected.tolist()
    for n in range(len(orders)):
        p = world.persons[orders.person[n]]
        if not orders.picked[n]:
            claims.append(None)
            continue
        at = orders.pickup_ms[n]
        reason = _claim_reason(rnd, p, affected_list[n])
        claim = _claim(book, rnd, p, orders, n, reason, at) if reason is not None else None
        packaging = None
        if orders.basket_class[n] != "ambient" and rnd.random() < (0.25 if p.persona in ("senior_health", "family") else 0.12):
            packaging = _packaging(book, rnd, world, p, orders, n, at)
        review = _review(book, rnd, world, p, orders, n, at, affected_list[n], reason)
        hit = bad.hit(orders, n)
        if hit:
            claim, review = bad.worsen(book, p, orders, n, at, hit, claim, review)
            reason = claim[1]["reason"] if claim is not None else None
        claims.append(reason)
        returns.extend(r for r in (claim, packaging) if r is not None)
        if review is not None:
            reviews.append(review)
    return returns, reviews, claims, bad.truth_rows(cfg)


class BadBatches:
    """Which batches are bad, what their buyers experience, and the truth about them."""

    def __init__(self, world: World, cfg: SimulationConfig, orders: Orders) -> None:
        self.rnd = random.Random(cfg.seed * 1_000_003 + 61)
        pick = random.Random(cfg.seed * 1_000_003 + 59)
        sizes: dict[str, int] = {}
        self.sku_of: dict[str, str] = {}
        for items in orders.items:
            for line in items:
                if line.get("batch_id"):
                    sizes[line["batch_id"]] = sizes.get(line["batch_id"], 0) + 1
                    self.sku_of[line["batch_id"]] = line["sku"]
        self.bad = {b for b in sorted(sizes) if pick.random() < cfg.bad_batch_share and sizes[b] >= BAD_BATCH_MIN_ORDERS}
        self.orders = {b: sizes[b] for b in self.bad}
        self.skus = {s.sku: s for s in world.skus}
        self.first_signal: dict[str, int] = {}
        self.signals: dict[str, int] = {}

    def hit(self, orders: Orders, n: int) -> list[dict[str, Any]]:
        """The order's lines of bad batches whose units were bad for this buyer."""
        if not self.bad:
            return []
        return [line for line in orders.items[n] if line.get("batch_id") in self.bad and self.rnd.random() < BAD_BATCH_HIT]

    def worsen(self, book: IdentityBook, p: Person, orders: Orders, n: int, picked_at: int, hit: list[dict[str, Any]],
               claim: tuple[int, dict[str, Any]] | None, review: tuple[int, dict[str, Any]] | None,
               ) -> tuple[tuple[int, dict[str, Any]] | None, tuple[int, dict[str, Any]] | None]:
        """The order's claim and review once a buyer met bad goods (either may be new or changed)."""
        rnd = self.rnd
        line = hit[0]
        sku = self.skus.get(line["sku"])
        signals: list[int] = []
        if claim is None and rnd.random() < BAD_BATCH_CLAIM:
            claim = _claim(book, rnd, p, orders, n, "quality", picked_at)
            claim[1]["amount"] = round(min(orders.total[n], line["unit_price"] * rnd.randint(1, line["qty"])), 2)
            signals.append(claim[0])
        if rnd.random() < BAD_BATCH_REVIEW:
            if review is None:
                t = picked_at + int(rnd.uniform(0.5, 48) * HOUR_MS)
                source, reviewer = _who(book, rnd, p, t)
                review = (t, {"event_id": None, "event_type": "review", "schema_version": 1, "occurred_at": None,
                              "source": source, "order_id": orders.order_id[n], "reviewer": reviewer, "stars": 0})
            event = review[1]
            category = sku.category if sku is not None else ""
            tag = rnd.choice(BAD_BATCH_TAGS.get(category, ("poor_quality",)))
            event["stars"] = rnd.choice((1, 1, 2))
            event["tags"] = [t for t in event.get("tags", []) if t in ("late", "not_cold", "thawed")] + [tag]
            if rnd.random() < 0.7:
                english = {"young_night": 0.3, "impulse": 0.3, "family": 0.08}.get(p.persona, 0.0)
                lang = "en" if rnd.random() < english else "zh"
                name = (sku.name_en.lower() if lang == "en" else sku.name) if sku is not None else line["sku"]
                event["text"] = rnd.choice(BAD_BATCH_TEXT[lang][tag]).format(name=name)
            else:
                event.pop("text", None)
            signals.append(review[0])
        if signals:
            for line in hit:
                batch = line["batch_id"]
                self.signals[batch] = self.signals.get(batch, 0) + len(signals)
                self.first_signal[batch] = min(self.first_signal.get(batch, min(signals)), min(signals))
        return claim, review

    def truth_rows(self, cfg: SimulationConfig) -> list[dict[str, Any]]:
        """truth/bad_batches.jsonl: every bad batch, its orders, bad signals and first bad signal (or null)."""
        batches = sorted(self.bad)
        firsts = iso_ms(cfg.start, [self.first_signal.get(b, 0) for b in batches])
        return [{"batch_id": b, "sku": self.sku_of[b], "orders": self.orders[b], "bad_signals": self.signals.get(b, 0),
                 "first_bad_signal_at": first if b in self.first_signal else None}
                for b, first in zip(batches, firsts)]


def _claim_reason(rnd: random.Random, p: Person, affected: bool) -> str | None:
    if affected and rnd.random() < TEMPERATURE_CLAIM_IF_AFFECTED:
        return "temperature"
    if p.claim_abuser and rnd.random() < 0.3:
        return rnd.choice(("quality", "missing", "damaged", "other"))
    for reason, rate in BASE_CLAIM_RATES:
        if rnd.random() < rate:
            return reason
    return None


def _who(book: IdentityBook, rnd: random.Random, p: Person, t: int) -> tuple[str, dict[str, str]]:
    """(source, identifiers) of a customer acting in the mini-program, or via the group chat."""
    if p.openid and p.unionid:
        ids = {"unionid": book.show("unionid", p.unionid, p)}
        if rnd.random() < 0.7:
            ids["openid"] = book.show("openid", p.openid, p)
        return "mini_program", ids
    return "group_chat", {"phone": book.show("phone", p.phone_at(t), p, messy=2.0)}


def _claim(book: IdentityBook, rnd: random.Random, p: Person, orders: Orders, n: int, reason: str,
           picked_at: int) -> tuple[int, dict[str, Any]]:
    t = picked_at + int(rnd.uniform(0.5, 36) * HOUR_MS)
    source, claimant = _who(book, rnd, p, t)
    total = orders.total[n]
    if reason == "temperature":
        amount = total * rnd.uniform(0.5, 1.0)
    elif reason in ("damaged", "missing", "quality"):
        line = rnd.choice(orders.items[n])
        amount = line["unit_price"] * rnd.randint(1, line["qty"])
    else:
        amount = total * rnd.uniform(0.1, 0.4)
    event: dict[str, Any] = {
        "event_id": None, "event_type": "return", "schema_version": 1, "occurred_at": None, "source": source,
        "kind": "claim", "claimant": claimant, "order_id": orders.order_id[n], "reason": reason,
        "amount": round(min(amount, total), 2),
    }
    if rnd.random() < 0.85:
        event["evidence"] = [f"img://claims/{orders.order_id[n]}/{k + 1}.jpg" for k in range(rnd.randint(1, 3))]
    return t, event


def _packaging(book: IdentityBook, rnd: random.Random, world: World, p: Person, orders: Orders, n: int,
               picked_at: int) -> tuple[int, dict[str, Any]]:
    t = picked_at + int(rnd.uniform(1, 6) * DAY_MS) + int(rnd.uniform(-3, 3) * HOUR_MS)
    building = world.buildings[p.building_index]
    items: list[dict[str, Any]] = []
    if rnd.random() < 0.7:
        items.append({"kind": "ice_pack", "qty": rnd.randint(1, 4)})
    if rnd.random() < 0.35:
        items.append({"kind": "insulated_bag", "qty": 1})
    if p.persona == "family" and rnd.random() < 0.3:
        items.append({"kind": "crate", "qty": rnd.randint(1, 2)})
    if not items or rnd.random() < 0.2:
        items.append({"kind": "tray", "qty": rnd.randint(1, 3)})
    if p.openid and rnd.random() < 0.3:  # scanned the box's QR code in the mini-program
        claimant = {"openid": book.show("openid", p.openid, p)}
    else:
        claimant = {"phone": book.show("phone", p.phone_at(t), p, messy=0.5)}
    return t, {
        "event_id": None, "event_type": "return", "schema_version": 1, "occurred_at": None,
        "source": "recycling_box", "kind": "packaging", "claimant": claimant, "box_id": building.box_id,
        "community_id": world.communities[p.community_index].community_id, "packaging_items": items,
    }


_BASE_STARS = {"senior_health": (0.02, 0.02, 0.06, 0.22, 0.68), "family": (0.03, 0.03, 0.09, 0.27, 0.58),
               "young_night": (0.04, 0.04, 0.12, 0.30, 0.50), "impulse": (0.03, 0.04, 0.10, 0.28, 0.55)}


def _review(book: IdentityBook, rnd: random.Random, world: World, p: Person, orders: Orders, n: int,
            picked_at: int, affected: bool, claim: str | None) -> tuple[int, dict[str, Any]] | None:
    late = orders.delivery_late[n]
    trouble = affected or late or claim in ("damaged", "quality", "missing", "temperature")
    if rnd.random() >= (0.6 if trouble else 0.3):
        return None
    stars = 1 + rnd.choices(range(5), weights=_BASE_STARS[p.persona])[0]
    tags: list[str] = []
    if affected:
        stars -= rnd.choice((2, 3, 3, 4))
        tags.append("not_cold")
        if orders.basket_class[n] == "frozen" and rnd.random() < 0.6:
            tags.append("thawed")
    if late:
        stars -= rnd.choice((1, 1, 2))
        tags.append("late")
    if claim in ("damaged", "quality", "missing"):
        stars -= rnd.choice((1, 2, 2))
        tags.append("damaged" if claim == "damaged" else ("missing_item" if claim == "missing" else "poor_quality"))
    stars = max(1, min(5, stars))
    if stars >= 4:
        teacher = world.leaders[p.building_index].retired_teacher
        for tag, chance in (("fresh", 0.5), ("on_time", 0.0 if late else 0.4),
                            ("friendly_leader", 0.6 if teacher else 0.25), ("good_value", 0.2)):
            if rnd.random() < chance:
                tags.append(tag)
    t = picked_at + int(rnd.uniform(0.5, 72) * HOUR_MS)
    source, reviewer = _who(book, rnd, p, t)
    event: dict[str, Any] = {
        "event_id": None, "event_type": "review", "schema_version": 1, "occurred_at": None, "source": source,
        "order_id": orders.order_id[n], "reviewer": reviewer, "stars": stars,
    }
    if rnd.random() < 0.45:
        english = {"young_night": 0.3, "impulse": 0.3, "family": 0.08}.get(p.persona, 0.0)
        lang = REVIEW_TEXT["en" if rnd.random() < english else "zh"]
        mood = ("not_cold" if affected else "late" if late else "damaged" if claim == "damaged"
                else "good" if stars >= 4 else "meh")
        event["text"] = rnd.choice(lang[mood])
    if tags:
        event["tags"] = tags
    return t, event
