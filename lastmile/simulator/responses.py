"""Residents who respond: what a simulated neighbour does after a journey's message.

Lift can only be measured when the people messaged react. :class:`ResponseModel` takes a
send (journey, step, template, channel, OneID, time, the trigger's fields) and decides, once
and deterministically (a generator seeded by the send id), whether the resident responds, when,
and with which events of the contracts: a review of the order (kinder after compensation),
packaging back to the recycling box, an order of the nudged staple or of the usual basket, a
referred neighbour's first order. The probabilities are per journey, step and persona, raised
for regulars, and live in ``responses.yml`` beside this module (every key documented there).

The residents come from the simulation's own output (:class:`Residents`): who placed which
order (``truth/orders.jsonl``, ``truth/persons.jsonl``) and the identifiers they used
(``events/order.jsonl``), so a response carries identifiers OneID links to the same person.
Every decision, responded or not, is a truth row (:meth:`Decision.truth_row`) with its
probability and its cause, the send id.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import yaml

from .config import UTC_OFFSET

#: The shipped response probabilities (documented in the file).
DEFAULT_RULES = Path(__file__).with_name("responses.yml")
#: The truth file of every decision, under the simulation's ``truth/``.
TRUTH_FILE = "responses.jsonl"
KINDS = ("review", "packaging_return", "order", "referral")
#: The event type a run of the messaged person sees of each kind of response, and whether it is
#: theirs (a referral is a new neighbour's first order in their building: their ``neighbour_joined``).
EVENT_OF_KIND = {"review": ("review", True), "packaging_return": ("return", True), "order": ("order", True),
                 "referral": ("neighbour_joined", True)}
_ZONE = timezone(timedelta(hours=int(UTC_OFFSET[:3]), minutes=int(UTC_OFFSET[4:])))


class ResponseRulesError(ValueError):
    """A responses file that cannot be used, and what was expected."""


# --- the probabilities ----------------------------------------------------------------------

@dataclass(frozen=True)
class StepRule:
    """How residents answer one journey's sends (or one step's, when the step overrides)."""

    respond: str
    p: float
    delay_hours: tuple[float, float]
    stars: tuple[tuple[int, float], ...] = ()
    persona: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ResponseRules:
    """``responses.yml``: per journey (and step) the event answered with, its probability and delay."""

    seed: int
    regular_orders: int
    regular_days: int
    regular_factor: float
    max_p: float
    journeys: Mapping[str, StepRule]
    steps: Mapping[tuple[str, str], StepRule]

    def rule(self, journey: str, step: str) -> StepRule | None:
        return self.steps.get((journey, step)) or self.journeys.get(journey)


def _number(value: Any, where: str, low: float = 0.0, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ResponseRulesError(f"{where}: expected a number {bound}, got {value!r}")
    return float(value)


def _step_rule(raw: Mapping[str, Any], base: StepRule | None, where: str) -> StepRule:
    respond = raw.get("respond", base.respond if base else None)
    if respond not in KINDS:
        raise ResponseRulesError(f"{where}.respond: expected one of {', '.join(KINDS)}, got {respond!r}")
    p = _number(raw["p"], f"{where}.p", 0, 1) if "p" in raw else (base.p if base else None)
    if p is None:
        raise ResponseRulesError(f"{where}: p (the probability of a response) is missing")
    delay = raw.get("delay_hours", list(base.delay_hours) if base else [1, 24])
    if not isinstance(delay, list) or len(delay) != 2:
        raise ResponseRulesError(f"{where}.delay_hours: expected [from, to] in hours, got {delay!r}")
    low, high = (_number(d, f"{where}.delay_hours") for d in delay)
    if high < low:
        raise ResponseRulesError(f"{where}.delay_hours: {low} is after {high}")
    stars_raw = raw.get("stars")
    stars = base.stars if base and stars_raw is None else tuple(
        (int(k), _number(v, f"{where}.stars.{k}")) for k, v in sorted((stars_raw or {5: 1}).items()))
    if any(not 1 <= s <= 5 for s, _ in stars) or sum(w for _, w in stars) <= 0:
        raise ResponseRulesError(f"{where}.stars: expected weights of stars 1 to 5, got {stars_raw!r}")
    persona_raw = raw.get("persona", dict(base.persona) if base else {})
    persona = {str(k): _number(v, f"{where}.persona.{k}") for k, v in persona_raw.items()}
    return StepRule(respond, p, (low, high), stars, persona)


def load_rules(path: Path | None = None) -> ResponseRules:
    """Read a responses file (default: the shipped ``responses.yml``)."""
    path = path or DEFAULT_RULES
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ResponseRulesError(f"{path}: cannot read the responses file ({exc})") from None
    history = raw.get("history") or {}
    journeys: dict[str, StepRule] = {}
    steps: dict[tuple[str, str], StepRule] = {}
    for name, body in (raw.get("journeys") or {}).items():
        where = f"{path.name}: journeys.{name}"
        if not isinstance(body, dict):
            raise ResponseRulesError(f"{where}: expected a mapping (respond, p, delay_hours, ...)")
        rule = journeys[name] = _step_rule(body, None, where)
        for step, override in (body.get("steps") or {}).items():
            steps[(name, step)] = _step_rule(override or {}, rule, f"{where}.steps.{step}")
    return ResponseRules(
        seed=int(raw.get("seed", 0)),
        regular_orders=int(_number(history.get("regular_orders", 4), "history.regular_orders")),
        regular_days=int(_number(history.get("regular_days", 28), "history.regular_days")),
        regular_factor=_number(history.get("regular_factor", 1.0), "history.regular_factor"),
        max_p=_number(history.get("max_p", 0.95), "history.max_p", 0, 1),
        journeys=journeys, steps=steps)


# --- the residents --------------------------------------------------------------------------

@dataclass
class Resident:
    """A simulated neighbour as their orders show them."""

    person_id: str
    persona: str
    identifiers: dict[str, Any]
    place: dict[str, Any]  # community, building, leader, merchant, locker, compartment of their latest order
    orders: list[tuple[datetime, str]] = field(default_factory=list)  # (time, order_id), by time
    latest_items: list[dict[str, Any]] = field(default_factory=list)

    def orders_between(self, start: datetime, end: datetime) -> int:
        times = [t for t, _ in self.orders]
        return bisect.bisect_right(times, end) - bisect.bisect_right(times, start)

    def latest_order(self, before: datetime) -> str | None:
        times = [t for t, _ in self.orders]
        i = bisect.bisect_right(times, before)
        return self.orders[i - 1][1] if i else None


def _read_jsonl(path: Path) -> Iterable[dict[str, Any]]:
    if not path.exists():
        return
    with path.open("rb") as handle:
        for line in handle:
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # the simulator's injected malformed lines
            if isinstance(row, dict):
                yield row


def _aware(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(timezone.utc)


class Residents:
    """Who is who in a simulation's output: order -> person, person -> persona, identifiers, place."""

    def __init__(self, residents: dict[str, Resident], order_person: dict[str, str], boxes: dict[str, list[str]],
                 skus: dict[str, dict[str, Any]]) -> None:
        self.by_person = residents
        self.order_person = order_person
        self.boxes = boxes
        self.skus = skus

    @classmethod
    def from_simulation(cls, home: Path) -> Residents:
        """Read ``home`` (what :func:`lastmile.simulator.simulate` wrote). Missing files: nobody."""
        home = Path(home)
        order_person = {r["order_id"]: r["person_id"] for r in _read_jsonl(home / "truth" / "orders.jsonl")}
        persona = {r["person_id"]: r["persona"] for r in _read_jsonl(home / "truth" / "persons.jsonl")}
        seen_ids: dict[str, Counter[bytes]] = {}
        residents: dict[str, Resident] = {}
        for event in _read_jsonl(home / "events" / "order.jsonl"):
            person = order_person.get(str(event.get("order_id")))
            if person is None or not isinstance(event.get("buyer"), dict) or not isinstance(event.get("items"), list):
                continue
            try:
                at = _aware(str(event["occurred_at"]))
            except (KeyError, ValueError):
                continue
            r = residents.get(person)
            if r is None:
                r = residents[person] = Resident(person, persona.get(person, "unknown"), {}, {})
            if not r.orders or at >= r.orders[-1][0]:
                r.place = {k: event.get(k) for k in ("community_id", "building_id", "leader_id", "merchant_id", "locker_id",
                                                     "compartment_id", "channel")}
                r.latest_items = event["items"]
            r.orders.append((at, event["order_id"]))
            seen_ids.setdefault(person, Counter())[orjson.dumps(event["buyer"], option=orjson.OPT_SORT_KEYS)] += 1
        for person, r in residents.items():
            r.orders = sorted(set(r.orders))
            r.identifiers = orjson.loads(seen_ids[person].most_common(1)[0][0])  # the identifiers they use most
        boxes: dict[str, list[str]] = {}
        for box in _read_jsonl(home / "reference" / "recycling_boxes.jsonl"):
            boxes.setdefault(box["community_id"], []).append(box["box_id"])
        skus = {s["sku"]: s for s in _read_jsonl(home / "reference" / "skus.jsonl")}
        return cls(residents, order_person, boxes, skus)

    def __len__(self) -> int:
        return len(self.by_person)

    def of_orders(self, order_ids: Iterable[str]) -> Resident | None:
        """The person who placed most of ``order_ids`` (a OneID's orders)."""
        people = Counter(self.order_person[o] for o in order_ids if o in self.order_person)
        if not people:
            return None
        person = min(people, key=lambda p: (-people[p], p))
        return self.by_person.get(person)


# --- sends and decisions --------------------------------------------------------------------

@dataclass(frozen=True)
class Send:
    """A message a resident received: what a journey's allowed send step carries."""

    send_id: str
    journey: str
    step: str
    oneid: str
    at: datetime
    template: str = ""
    channel: str = ""
    trigger: Mapping[str, Any] = field(default_factory=dict)
    run_id: str = ""


@dataclass
class Decision:
    """What a resident did about one send: the probability used, whether they responded, the events."""

    send: Send
    person_id: str | None
    persona: str | None
    p: float
    responded: bool
    respond: str | None = None
    respond_at: datetime | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    why_not: str = ""

    def truth_row(self) -> dict[str, Any]:
        s = self.send
        return {"cause": s.send_id, "journey": s.journey, "step": s.step, "oneid": s.oneid, "run_id": s.run_id, "sent_at": _iso(s.at),
                "person_id": self.person_id, "persona": self.persona, "p": round(self.p, 6), "responded": self.responded,
                "respond": self.respond, "respond_at": _iso(self.respond_at) if self.respond_at else None,
                "events": [{"event_id": e["event_id"], "event_type": e["event_type"]} for e in self.events],
                "why_not": self.why_not}


def _iso(moment: datetime) -> str:
    return moment.astimezone(_ZONE).isoformat(timespec="milliseconds")


def _digest(*parts: Any) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()


class ResponseModel:
    """Decides residents' responses to sends (see the module docstring). Same send, same decision."""

    def __init__(self, rules: ResponseRules, residents: Residents) -> None:
        self.rules = rules
        self.residents = residents

    def probability(self, send: Send, resident: Resident) -> float:
        """The response probability for this send and resident (0: the journey gets no response)."""
        rule = self.rules.rule(send.journey, send.step)
        if rule is None:
            return 0.0
        p = rule.p * rule.persona.get(resident.persona, 1.0)
        window = timedelta(days=self.rules.regular_days)
        if resident.orders_between(send.at - window, send.at) >= self.rules.regular_orders:
            p *= self.rules.regular_factor
        return min(p, self.rules.max_p)

    def resident_of(self, send: Send, order_ids: Iterable[str] = ()) -> Resident | None:
        """The resident behind a send: by the OneID's orders (``order_ids``), else the trigger's order."""
        resident = self.residents.of_orders(order_ids)
        if resident is None and send.trigger.get("order_id"):
            resident = self.residents.of_orders([str(send.trigger["order_id"])])
        return resident

    def decide(self, send: Send, order_ids: Iterable[str] = ()) -> Decision:
        """One draw for ``send``; ``order_ids``: the orders OneID attributes to the send's person."""
        resident = self.resident_of(send, order_ids)
        if resident is None:
            return Decision(send, None, None, 0.0, False, why_not="not a simulated resident")
        rule = self.rules.rule(send.journey, send.step)
        p = self.probability(send, resident)
        rng = random.Random(_digest(self.rules.seed, send.send_id))
        draw, delay_draw, detail = rng.random(), rng.random(), random.Random(rng.random())
        decision = Decision(send, resident.person_id, resident.persona, p, False, rule.respond if rule else None)
        if rule is None:
            decision.why_not = "no response configured for the journey"
            return decision
        if draw >= p:
            decision.why_not = "did not respond"
            return decision
        low, high = rule.delay_hours
        at = send.at + timedelta(hours=low + (high - low) * delay_draw)
        events = _build(rule, send, resident, at, detail, self.residents)
        if not events:
            decision.why_not = "nothing to respond with (no order to review or repeat)"
            return decision
        decision.responded, decision.respond_at, decision.events = True, at, events
        return decision


# --- the events -----------------------------------------------------------------------------

def _envelope(event_type: str, send: Send, at: datetime, source: str, suffix: str = "") -> dict[str, Any]:
    return {"event_id": f"ev-rsp-{_digest(send.send_id, event_type, suffix)[:32]}", "event_type": event_type,
            "schema_version": 1, "occurred_at": _iso(at), "source": source}


def _build(rule: StepRule, send: Send, resident: Resident, at: datetime, rng: random.Random,
           residents: Residents) -> list[dict[str, Any]]:
    if rule.respond == "review":
        order_id = str(send.trigger.get("order_id") or resident.latest_order(send.at) or "")
        if not order_id:
            return []
        stars = rng.choices([s for s, _ in rule.stars], weights=[w for _, w in rule.stars])[0]
        tags = ["fresh", "on_time"] if stars >= 4 else ["ok"]
        return [{**_envelope("review", send, at, "mini_program"), "order_id": order_id,
                 "reviewer": dict(resident.identifiers), "stars": stars, "tags": tags}]
    if rule.respond == "packaging_return":
        community = resident.place.get("community_id")
        boxes = residents.boxes.get(str(community)) or []
        if not community or not boxes:
            return []
        items = [{"kind": "ice_pack", "qty": rng.randint(1, 4)}] + ([{"kind": "crate", "qty": 1}] if rng.random() < 0.5 else [])
        return [{**_envelope("return", send, at, "recycling_box"), "kind": "packaging", "claimant": dict(resident.identifiers),
                 "box_id": rng.choice(sorted(boxes)), "community_id": community, "packaging_items": items}]
    if rule.respond == "order":
        lines = _lines(send, resident, residents, at)
        if not lines or not resident.place.get("community_id"):
            return []
        return [_order(send, at, resident.identifiers, resident.place, lines, "order")]
    if rule.respond == "referral":
        lines = _lines(send, resident, residents, at)[:2]
        if not lines or not resident.place.get("community_id"):
            return []
        phone = "170" + str(int(_digest("referral", send.send_id)[:12], 16) % 10**8).zfill(8)  # a new neighbour's number
        return [_order(send, at, {"phone": phone}, resident.place, lines, "referral")]
    return []


def _lines(send: Send, resident: Resident, residents: Residents, at: datetime) -> list[dict[str, Any]]:
    """The lines of a response order: the nudged SKU when the trigger names one, else the usual basket."""
    batch = f"{at.astimezone(_ZONE):%Y%m%d}"
    community = resident.place.get("community_id")
    sku = send.trigger.get("sku")
    if sku:
        known = next((dict(line) for line in resident.latest_items if line.get("sku") == sku), None)
        ref = residents.skus.get(str(sku))
        if known is None and ref is None:
            return []
        line = known or {"sku": sku, "category": ref.get("category", "other"), "qty": 1,  # type: ignore[union-attr]
                         "unit_price": ref.get("unit_price", 1.0), "origin": ref.get("origin", "unknown")}  # type: ignore[union-attr]
        lines = [line]
    else:
        lines = [dict(line) for line in resident.latest_items]
    for line in lines:
        line["batch_id"] = f"{line['sku']}-{community}-{batch}"
    return lines


def _order(send: Send, at: datetime, buyer: dict[str, Any], place: dict[str, Any], lines: list[dict[str, Any]],
           suffix: str) -> dict[str, Any]:
    local = at.astimezone(_ZONE)
    day = (local + timedelta(days=1)).replace(hour=18, minute=0, second=0, microsecond=0)
    total = round(sum(float(line["qty"]) * float(line["unit_price"]) for line in lines), 2)
    channel = place.get("channel") if place.get("channel") in ("mini_program", "group_chat", "store") else "mini_program"
    return {**_envelope("order", send, at, str(channel), suffix),
            "order_id": f"ord-rsp-{_digest(send.send_id, suffix)[:16]}", "buyer": dict(buyer),
            **{k: place[k] for k in ("community_id", "building_id", "leader_id", "merchant_id")},
            "items": lines, "total_amount": total,
            "delivery_slot_start": day.isoformat(timespec="milliseconds"),
            "delivery_slot_end": (day + timedelta(hours=2)).isoformat(timespec="milliseconds"),
            "locker_id": place["locker_id"], "compartment_id": place["compartment_id"], "channel": channel}


def write_truth(path: Path, decisions: Iterable[Decision]) -> int:
    """Write (replace) the truth file: one row per decision, ordered by send time and id."""
    rows = sorted((d.truth_row() for d in decisions), key=lambda r: (r["sent_at"], r["cause"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return len(rows)


def read_truth(path: Path) -> list[dict[str, Any]]:
    """The rows of a truth file written by :func:`write_truth` (none when it does not exist)."""
    return list(_read_jsonl(path))


__all__ = ["DEFAULT_RULES", "KINDS", "TRUTH_FILE", "Decision", "Resident", "Residents", "ResponseModel", "ResponseRules",
           "ResponseRulesError", "Send", "load_rules", "read_truth", "write_truth"]
