"""The world: communities, buildings, households, residents, leaders, lockers, merchants.

Built once per run from the config's seed, before any event exists. Each resident gets the
identifiers they will show in different channels (phone, WeChat unionid/openid, member card,
device) plus the moments those identifiers become visible (a phone bound to the mini-program
mid-window, a member card issued, a number changed), because OneID ground truth is only
meaningful if the events carry identifiers the way real channels do.

The locker layout uses its own random stream so :func:`count_compartments` can size a run
(for :func:`lastmile.simulator.sizing.for_total_events`) without building any people.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np

from .assortment import build_catalogue
from .catalog import (
    ACTIVITY,
    CITY,
    COMMUNITY_NAMES,
    DISTRICTS,
    MERCHANT_FOCUS,
    MERCHANT_NAMES,
    Sku,
)
from .config import SimulationConfig

JUNK_PHONES = ("13800000000", "11111111111")
JUNK_IDS = ("0", "null", "undefined")
_PHONE_PREFIXES = tuple(str(p) for p in (*range(130, 140), 150, 151, 152, 155, 156, 157, 158, 159,
                                         166, 176, 177, 178, *range(180, 190), 191, 198, 199))
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: App prefixes: every openid of one mini-program starts alike, as do unionids of one platform.
OPENID_PREFIX = "oMp7x"
UNIONID_PREFIX = "oWx2u"


@dataclass
class Compartment:
    index: int
    compartment_id: str
    locker_index: int
    locker_id: str
    community_id: str
    product_class: str


@dataclass
class Locker:
    index: int
    locker_id: str
    community_index: int
    community_id: str
    has_battery: bool
    compartments: list[Compartment] = field(default_factory=list)


@dataclass
class Community:
    index: int
    community_id: str
    name: str
    district: str
    alliance_id: str
    lockers: list[int] = field(default_factory=list)
    boxes: list[str] = field(default_factory=list)
    buildings: list[int] = field(default_factory=list)


@dataclass
class Building:
    index: int
    building_id: str
    community_index: int
    home_locker: int
    box_id: str
    leader_person: int = -1
    leader_id: str = ""
    households: list[int] = field(default_factory=list)
    residents: list[int] = field(default_factory=list)


@dataclass
class Household:
    index: int
    household_id: str
    building_index: int
    members: list[int] = field(default_factory=list)
    tablet: str | None = None


@dataclass(slots=True)
class Person:
    """A resident. Times are ms since the window start; 0 means "already before the window"."""

    index: int
    person_id: str
    persona: str
    age_band: str
    community_index: int
    building_index: int
    household_index: int
    dietary_need: bool
    claim_abuser: bool
    activity: float
    phone: str
    device_id: str
    is_leader: bool = False
    unionid: str | None = None
    openid: str | None = None
    member_card: str | None = None
    new_phone: str | None = None
    phone_change_ms: int | None = None
    #: When the mini-program learns the phone (bind): None never, 0 before the window.
    mp_phone_from_ms: int | None = None
    #: Registers in the window (first mini-program use); binds the phone right then if bind_at_register.
    new_user: bool = False
    bind_at_register: bool = False
    card_from_ms: int | None = None
    uses_tablet: bool = False

    def phone_at(self, t_ms: int) -> str:
        """The number this person uses at ``t_ms`` (after a change, the new one)."""
        if self.new_phone is not None and self.phone_change_ms is not None and t_ms >= self.phone_change_ms:
            return self.new_phone
        return self.phone


@dataclass
class Leader:
    leader_id: str
    community_id: str
    building_id: str
    person_index: int
    retired_teacher: bool


@dataclass
class Merchant:
    merchant_id: str
    name: str
    focus: str
    alliance_id: str | None


@dataclass
class World:
    cfg: SimulationConfig
    communities: list[Community]
    lockers: list[Locker]
    compartments: list[Compartment]
    buildings: list[Building]
    households: list[Household]
    persons: list[Person]
    leaders: list[Leader]
    merchants: list[Merchant]
    skus: tuple[Sku, ...]
    boxes: list[dict[str, Any]]

    def leader_of(self, building_index: int) -> Person:
        return self.persons[self.buildings[building_index].leader_person]

    def leader_record(self, building_index: int) -> Leader:
        return self.leaders[building_index]


# -- layout ---------------------------------------------------------------------------------


def _layout(cfg: SimulationConfig) -> tuple[list[Community], list[Locker], list[Compartment]]:
    """Communities with their lockers and compartments (own random stream: cheap, stable)."""
    rng = cfg.rng("layout")
    communities: list[Community] = []
    lockers: list[Locker] = []
    compartments: list[Compartment] = []
    n_districts = max(1, min(len(DISTRICTS), (cfg.n_communities + 2) // 3))
    for c in range(cfg.n_communities):
        cid = f"C{c + 1:02d}"
        base = COMMUNITY_NAMES[c % len(COMMUNITY_NAMES)]
        name = base if c < len(COMMUNITY_NAMES) else f"{base}{c // len(COMMUNITY_NAMES) + 1}期"
        district_no = c % n_districts
        community = Community(c, cid, name, DISTRICTS[district_no], f"AL{district_no + 1:02d}")
        communities.append(community)
        for k in range(cfg.lockers_per_community):
            lid = f"L-{cid}-{k + 1}"
            locker = Locker(len(lockers), lid, c, cid, has_battery=bool(rng.random() < 0.5))
            classes = ["chilled", "chilled", "frozen", "ambient"]
            if rng.random() < 0.5:
                classes.insert(2, "chilled" if rng.random() < 0.6 else "frozen")
            for j, cls in enumerate(classes):
                comp = Compartment(len(compartments), f"{lid}-K{j + 1:02d}", locker.index, lid, cid, cls)
                compartments.append(comp)
                locker.compartments.append(comp)
            lockers.append(locker)
            community.lockers.append(locker.index)
    return communities, lockers, compartments


def count_compartments(cfg: SimulationConfig) -> int:
    """How many compartments (telemetry series) a run of ``cfg`` has."""
    return len(_layout(cfg)[2])


# -- identifiers ----------------------------------------------------------------------------


class _IdMint:
    """Unique identifier values; a value is never handed out twice (nor to junk)."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.used: set[str] = set(JUNK_PHONES) | set(JUNK_IDS) | {"13800138000"}

    def _unique(self, make: Any) -> str:
        while True:
            value = make()
            if value not in self.used:
                self.used.add(value)
                return value

    def phone(self) -> str:
        r = self.rnd
        return self._unique(lambda: r.choice(_PHONE_PREFIXES) + f"{r.randrange(10**8):08d}")

    def _token(self, prefix: str, n: int) -> str:
        r = self.rnd
        return self._unique(lambda: prefix + "".join(r.choices(_ID_ALPHABET, k=n)))

    def openid(self) -> str:
        return self._token(OPENID_PREFIX, 23)

    def unionid(self) -> str:
        return self._token(UNIONID_PREFIX, 23)

    def member_card(self) -> str:
        r = self.rnd
        return self._unique(lambda: f"8800{r.randrange(10**8):08d}")

    def device(self) -> str:
        r = self.rnd
        if r.random() < 0.45:  # iOS identifierForVendor
            return self._unique(lambda: "-".join(
                f"{r.getrandbits(b * 4):0{b}X}" for b in (8, 4, 4, 4, 12)))
        return self._unique(lambda: f"{r.getrandbits(64):016x}")  # Android ID


# -- people ---------------------------------------------------------------------------------

_HAS_MP = {"young_night": 0.97, "senior_health": 0.55, "family": 0.9, "impulse": 0.98}
_HAS_CARD = {"young_night": 0.25, "senior_health": 0.7, "family": 0.55, "impulse": 0.4}


def _household_ages(rnd: random.Random) -> list[str]:
    kind = rnd.random()
    if kind < 0.33:  # young singles and couples
        return ["18-35"] * (1 if rnd.random() < 0.55 else 2)
    if kind < 0.75:  # families: parents, maybe an adult child, maybe a grandparent
        ages = ["36-59", "36-59"]
        if rnd.random() < 0.3:
            ages.append("18-35")
        if rnd.random() < 0.25:
            ages.append("60+")
        return ages
    return ["60+"] * (1 if rnd.random() < 0.4 else 2)


def _persona(age: str, rnd: random.Random) -> str:
    if age == "18-35":
        return "impulse" if rnd.random() < 0.12 else "young_night"
    if age == "36-59":
        return "impulse" if rnd.random() < 0.08 else "family"
    return "senior_health"


def build_world(cfg: SimulationConfig) -> World:
    """Everything that exists before the first event: places, people and their identifiers."""
    communities, lockers, compartments = _layout(cfg)
    rnd = random.Random(cfg.seed * 1_000_003 + 17)
    rng = cfg.rng("people")
    mint = _IdMint(random.Random(cfg.seed * 1_000_003 + 29))
    window = cfg.window_ms

    buildings: list[Building] = []
    households: list[Household] = []
    persons: list[Person] = []
    boxes: list[dict[str, Any]] = []
    per_community = cfg.n_persons / len(communities)
    for community in communities:
        n_buildings = max(2, round(per_community / 88))
        n_boxes = max(1, round(n_buildings / 6))
        for b in range(n_boxes):
            box_id = f"RB-{community.community_id}-{b + 1}"
            community.boxes.append(box_id)
            boxes.append({"box_id": box_id, "community_id": community.community_id,
                          "location": f"{b + 1}号回收点", "accepts": ["crate", "ice_pack", "insulated_bag", "tray"]})
        targets = rng.uniform(0.6, 1.4, n_buildings)
        targets = np.maximum(12, np.round(targets / targets.sum() * per_community)).astype(int)
        for b in range(n_buildings):
            bid = f"{community.community_id}-B{b + 1:02d}"
            home = community.lockers[b * len(community.lockers) // n_buildings]
            building = Building(len(buildings), bid, community.index, home,
                                community.boxes[b * n_boxes // n_buildings])
            buildings.append(building)
            community.buildings.append(building.index)
            while len(building.residents) < targets[b]:
                hh = Household(len(households), f"{bid}-H{len(building.households) + 1:03d}", building.index)
                households.append(hh)
                building.households.append(hh.index)
                for age in _household_ages(rnd):
                    persona = _persona(age, rnd)
                    p = Person(
                        index=len(persons),
                        person_id=f"P{len(persons) + 1:06d}",
                        persona=persona,
                        age_band=age,
                        community_index=community.index,
                        building_index=building.index,
                        household_index=hh.index,
                        dietary_need=rnd.random() < (0.08 if age == "60+" else 0.02),
                        claim_abuser=rnd.random() < 0.012,
                        activity=float(rng.gamma(1.5, 1 / 1.5)) * ACTIVITY[persona],
                        phone=mint.phone(),
                        device_id=mint.device(),
                    )
                    _give_identifiers(p, mint, rnd, window)
                    persons.append(p)
                    hh.members.append(p.index)
                    building.residents.append(p.index)
    for hh in households:
        if len(hh.members) >= 2 and rnd.random() < 0.45:
            hh.tablet = mint.device()
            for m in hh.members:
                person = persons[m]
                person.uses_tablet = person.openid is not None and (m == hh.members[0] or rnd.random() < 0.6)

    leaders = _choose_leaders(buildings, persons, rnd)
    merchants = _merchants(communities, rnd)
    return World(cfg, communities, lockers, compartments, buildings, households, persons, leaders,
                 merchants, build_catalogue(cfg.start, cfg.extended_catalogue), boxes)


def _give_identifiers(p: Person, mint: _IdMint, rnd: random.Random, window: int) -> None:
    """Which channels know this person, and from when (binds, cards, a number change)."""
    if rnd.random() < _HAS_MP[p.persona]:
        p.unionid, p.openid = mint.unionid(), mint.openid()
        p.new_user = rnd.random() < 0.15
        r = rnd.random()
        if p.new_user:
            p.bind_at_register = r < 0.7
            p.mp_phone_from_ms = 0 if p.bind_at_register else None
        elif r < 0.65:
            p.mp_phone_from_ms = 0
        elif r < 0.85:
            p.mp_phone_from_ms = int(rnd.uniform(0.05, 0.9) * window)
        if rnd.random() < 0.03:
            p.new_phone = mint.phone()
            p.phone_change_ms = int(rnd.uniform(0.1, 0.9) * window)
    if rnd.random() < _HAS_CARD[p.persona]:
        p.member_card = mint.member_card()
        p.card_from_ms = 0 if rnd.random() < 0.8 else int(rnd.uniform(0.05, 0.9) * window)


def _choose_leaders(buildings: list[Building], persons: list[Person], rnd: random.Random) -> list[Leader]:
    """One 团长 per building: often a retiree, and retired teachers run the big buildings."""
    leaders: list[Leader] = []
    for b in buildings:
        seniors = [i for i in b.residents if persons[i].age_band == "60+"]
        adults = [i for i in b.residents if persons[i].age_band == "36-59"]
        if seniors and rnd.random() < 0.5:
            pick = rnd.choice(seniors)
        elif adults:
            pick = rnd.choice(adults)
        else:
            pick = rnd.choice(b.residents)
        teacher = persons[pick].age_band == "60+" and len(b.residents) > 60 and rnd.random() < 0.6
        b.leader_person = pick
        b.leader_id = f"LDR-{b.building_id}"
        persons[pick].is_leader = True
        persons[pick].activity *= 1.3
        leaders.append(Leader(b.leader_id, b.building_id.split("-")[0], b.building_id, pick, teacher))
    if not any(l.retired_teacher for l in leaders):  # the trap needs at least one such leader
        b = max(buildings, key=lambda x: (len(x.residents), -x.index))
        seniors = [i for i in b.residents if persons[i].age_band == "60+"]
        if seniors:
            old = b.leader_person
            persons[old].is_leader = False
            persons[old].activity /= 1.3
            b.leader_person = seniors[0]
            persons[seniors[0]].is_leader = True
            persons[seniors[0]].activity *= 1.3
            leaders[b.index] = Leader(b.leader_id, leaders[b.index].community_id, b.building_id, seniors[0], True)
    return leaders


def _merchants(communities: list[Community], rnd: random.Random) -> list[Merchant]:
    """Each district's alliance covers every focus; a few merchants stay outside any alliance."""
    merchants: list[Merchant] = []
    alliances = sorted({c.alliance_id for c in communities})
    for alliance in alliances:
        for focus in MERCHANT_FOCUS:
            for k in range(1 + (rnd.random() < 0.35)):
                name = rnd.choice(MERCHANT_NAMES[focus])
                merchants.append(Merchant(f"M{len(merchants) + 1:03d}", f"{name}·{alliance}{k + 1}店", focus, alliance))
    for focus in ("produce", "deli", "snacks_drinks", "seafood"):
        name = rnd.choice(MERCHANT_NAMES[focus])
        merchants.append(Merchant(f"M{len(merchants) + 1:03d}", f"{name}(独立)", focus, None))
    return merchants


# -- reference and truth rows ----------------------------------------------------------------


def reference_rows(world: World) -> dict[str, list[dict[str, Any]]]:
    """Non-secret master data, as the business would publish it to the warehouse."""
    persons = world.persons
    return {
        "communities": [
            {"community_id": c.community_id, "name": c.name, "city": CITY, "district": c.district,
             "alliance_id": c.alliance_id, "building_count": len(c.buildings), "locker_count": len(c.lockers)}
            for c in world.communities
        ],
        "buildings": [
            {"building_id": b.building_id, "community_id": world.communities[b.community_index].community_id,
             "name": f"{int(b.building_id.split('-B')[1])}幢", "leader_id": b.leader_id,
             "households": len(b.households), "residents": len(b.residents),
             "home_locker_id": world.lockers[b.home_locker].locker_id, "box_id": b.box_id}
            for b in world.buildings
        ],
        "leaders": [
            {"leader_id": l.leader_id, "community_id": l.community_id, "building_id": l.building_id,
             "person_id": persons[l.person_index].person_id, "retired_teacher": l.retired_teacher,
             "neighbours": len(world.buildings[i].residents) - 1}
            for i, l in enumerate(world.leaders)
        ],
        "lockers": [
            {"locker_id": lk.locker_id, "community_id": lk.community_id, "has_battery": lk.has_battery,
             "compartments": [{"compartment_id": c.compartment_id, "product_class": c.product_class}
                              for c in lk.compartments]}
            for lk in world.lockers
        ],
        "recycling_boxes": list(world.boxes),
        "merchants": [
            {"merchant_id": m.merchant_id, "name": m.name, "category_focus": m.focus, "alliance_id": m.alliance_id}
            for m in world.merchants
        ],
        "skus": [
            {"sku": s.sku, "name": s.name, "name_en": s.name_en, "category": s.category, "origin": s.origin,
             "unit_price": s.unit_price, "product_class": s.product_class, "is_impulse": s.is_impulse,
             "is_healthy": s.is_healthy, "shelf_life_days": s.shelf_life_days, "unit_cost": s.unit_cost,
             "available_from": _iso(s.available_from), "available_until": _iso(s.available_until),
             "launched_on": _iso(s.launched_on)}
            for s in world.skus
        ],
    }


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day is not None else None


def person_rows(world: World) -> list[dict[str, Any]]:
    """truth/persons.jsonl: who everyone really is (never ingested)."""
    rows = []
    for p in world.persons:
        b = world.buildings[p.building_index]
        rows.append({
            "person_id": p.person_id, "persona": p.persona, "age_band": p.age_band,
            "community_id": world.communities[p.community_index].community_id, "building_id": b.building_id,
            "household_id": world.households[p.household_index].household_id,
            "dietary_need": p.dietary_need, "is_leader": p.is_leader, "claim_abuser": p.claim_abuser,
        })
    return rows
