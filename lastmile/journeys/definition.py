"""Journey files: reading and checking them, with the file and line of every error.

A journey is a YAML file in ``journeys/`` (or ``LASTMILE_JOURNEYS_DIR``), reviewed like an
audience file::

    name: review_reward
    description: After a pickup, ask for 1-5 stars with points; remind once after a day.
    owner: marketing@community-ops
    trigger: {event: pickup, where: {collector_role: buyer}}
    once_per: order_id
    holdout: 0.1
    goal: {event: review, same: order_id, within: {days: 3}}
    steps:
      - send: {template: review_prompt, channel: mini_program_push, purposes: [marketing]}
      - wait: {days: 1}
      - send: {template: review_reminder, channel: mini_program_push, purposes: [marketing]}

The trigger is an event type with an optional ``where`` filter, or an audience entry
(``{audience: NAME}``). Steps are ``send``, ``wait`` (a duration, a local time, or an event
with a time limit), ``branch`` (a condition over the events since entry, the person's
traits or their event history) and ``exit``. Branches jump forward only, so a run is a
path through the steps that never repeats one: a step's index identifies it within a run,
which is what makes step ids deterministic.

Event filters and history conditions are checked by the audience rule compiler (contract
fields, trait names, windows), so a journey and an audience mean the same thing by
``{event: return, where: {kind: claim}}``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import time as clock_time
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from lastmile.audiences.contact_rules import CHANNELS, CONSENT_PURPOSES, SERVICE
from lastmile.audiences.definition import EVENT_TABLES, AudienceError, _mapping, _RuleCompiler, _scalar, _text
from lastmile.yaml_documents import compose_document

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TOP_KEYS = {"name", "description", "owner", "trigger", "once_per", "reentry", "holdout", "goal", "steps"}
#: Signals the stream worker derives (not contract events), and the fields each carries.
SIGNALS: dict[str, tuple[str, ...]] = {
    # the first event naming a person none of whose identifiers was seen before
    "new_neighbour": ("id_type", "community_id", "channel"),
    # a staple bought at regular intervals is due and no new purchase came
    "replenishment_due": ("sku", "due", "last_purchase", "purchases", "mean_interval_days"),
    # a neighbour's first order delivered to the person's home building (a goal: what a referral asks for)
    "neighbour_joined": ("building_id", "community_id", "order_id"),
}
_UNITS = {"minutes": 60, "hours": 3600, "days": 86400}
#: Where a branch may go besides a step name.
EXIT, NEXT = "exit", "next"


class JourneyError(AudienceError):
    """A journey file that cannot be used: where (file and line) and what was expected."""

    whole_message = True


def _fail(path: Path, node: yaml.Node | None, message: str) -> JourneyError:
    where = f"{path}:{node.start_mark.line + 1}" if node is not None else str(path)
    return JourneyError(f"{where}: {message}")


def _plain(node: yaml.Node) -> Any:
    return yaml.safe_load(yaml.serialize(node))


@dataclass(frozen=True)
class EventMatch:
    """An event type with equality filters on its top-level contract fields.

    ``same``: fields whose value must equal the trigger event's (the review of *that* order).
    """

    event: str
    where: dict[str, Any] = field(default_factory=dict)
    same: tuple[str, ...] = ()

    def matches(self, event_type: str, fields: dict[str, Any], context: dict[str, Any]) -> bool:
        if event_type != self.event:
            return False
        for key, wanted in self.where.items():
            value = fields.get(key)
            if isinstance(wanted, list):
                if value not in wanted:
                    return False
            elif value != wanted:
                return False
        return all(fields.get(key) is not None and fields.get(key) == context.get(key) for key in self.same)


@dataclass(frozen=True)
class Trigger:
    """What starts a run: an event or a signal (``event``) or an entry into an audience (``audience``)."""

    event: EventMatch | None = None
    audience: str | None = None


@dataclass(frozen=True)
class Goal:
    """What counts as converted; ``within_s``: how long a run that finished its steps waits for it."""

    match: EventMatch
    within_s: int = 0


@dataclass(frozen=True)
class Send:
    template: str
    channel: str
    purposes: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Wait:
    """One of: ``seconds`` (a duration); ``until`` (the next local time of day, or ``tomorrow``'s);
    ``event`` (resume when it happens, at the latest after ``seconds``)."""

    seconds: int = 0
    until: clock_time | None = None
    tomorrow: bool = False
    event: EventMatch | None = None


@dataclass(frozen=True)
class Branch:
    """``condition`` as plain data (see :mod:`lastmile.journeys.engine`); ``then``/``otherwise``:
    a step index, ``exit`` or ``next``."""

    condition: Any
    then: str
    otherwise: str


@dataclass(frozen=True)
class Step:
    name: str
    kind: str  # send | wait | branch | exit
    send: Send | None = None
    wait: Wait | None = None
    branch: Branch | None = None


@dataclass(frozen=True)
class Journey:
    """One journey file, checked."""

    name: str
    description: str
    owner: str
    path: Path
    trigger: Trigger
    steps: tuple[Step, ...]
    goal: Goal | None = None
    once_per: str | None = None
    reentry: bool = True
    holdout: float = 0.0
    definition: Any = None  # what decides behaviour, as plain data (for the version)

    @cached_property
    def version(self) -> str:
        """A hash of the trigger, steps, goal and entry rules: rewording the description keeps it.
        Computed once per loaded journey: a pass asks it for every step it records."""
        body = json.dumps(self.definition, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(body.encode()).hexdigest()[:12]

    def index_of(self, name: str) -> int:
        return next(i for i, s in enumerate(self.steps) if s.name == name)

    def event_types(self) -> set[str]:
        """The event types this journey reacts to (trigger, goal, event waits, since-entry conditions)."""
        found: set[str] = set()
        if self.trigger.event:
            found.add(self.trigger.event.event)
        if self.goal:
            found.add(self.goal.match.event)
        for step in self.steps:
            if step.wait and step.wait.event:
                found.add(step.wait.event.event)
            if step.branch:
                found |= _since_entry_events(step.branch.condition)
        return found


def _since_entry_events(condition: Any) -> set[str]:
    if "since_entry" in condition:
        return {str(condition["since_entry"]["event"])}
    if "rule" in condition:
        return set()
    children = condition.get("all") or condition.get("any") or [condition["not"]]
    return set().union(*(_since_entry_events(c) for c in children))


# --- reading -------------------------------------------------------------------------------

def load_journey(path: Path, audiences: set[str] | None = None) -> Journey:
    """Read and check one journey file. ``audiences``: known audience names (None: not checked)."""
    path = Path(path)
    root = compose_document(path, JourneyError, "journey", "name, description, owner, trigger and steps")
    return _Reader(path, audiences).journey(root)


def load_journeys(folder: Path, audiences: set[str] | None = None) -> list[Journey]:
    """Every ``*.yml`` / ``*.yaml`` journey of a folder, sorted by name; names must be unique."""
    folder = Path(folder)
    if not folder.is_dir():
        raise JourneyError(f"{folder}: no journeys folder (set LASTMILE_JOURNEYS_DIR)")
    journeys = [load_journey(p, audiences) for p in sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")])]
    seen: dict[str, Path] = {}
    for journey in journeys:
        if journey.name in seen:
            raise JourneyError(f"{journey.path}: journey name {journey.name!r} is also used by {seen[journey.name]}")
        seen[journey.name] = journey.path
    return sorted(journeys, key=lambda j: j.name)


class _Reader:
    def __init__(self, path: Path, audiences: set[str] | None) -> None:
        self.path = path
        self.audiences = audiences
        self.rules = _RuleCompiler(path)  # checks event filters and history conditions

    def fail(self, node: yaml.Node | None, message: str) -> JourneyError:
        return _fail(self.path, node, message)

    def map(self, node: yaml.Node, what: str, allowed: Collection[str], required: Collection[str] = frozenset()) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        try:
            found = _mapping(self.path, node, what)
        except AudienceError as exc:
            raise JourneyError(str(exc)) from None
        for key, (key_node, _) in found.items():
            if key not in allowed:
                raise self.fail(key_node, f"unknown key {key!r} in {what}; expected {', '.join(sorted(allowed))}")
        missing = sorted(set(required) - set(found))
        if missing:
            raise self.fail(node, f"{what} needs {', '.join(missing)}")
        return found

    def text(self, node: yaml.Node, what: str) -> str:
        try:
            return _text(self.path, node, what)
        except AudienceError as exc:
            raise JourneyError(str(exc)) from None

    def scalar(self, node: yaml.Node, what: str) -> Any:
        try:
            return _scalar(self.path, node, what)
        except AudienceError as exc:
            raise JourneyError(str(exc)) from None

    def journey(self, root: yaml.Node) -> Journey:
        top = self.map(root, "a journey file", _TOP_KEYS, {"name", "description", "owner", "trigger", "steps"})
        name = self.text(top["name"][1], "name")
        if not _NAME.match(name):
            raise self.fail(top["name"][1], f"name {name!r} must be lower-case letters, digits and _ (starting with a letter)")
        trigger = self.trigger(top["trigger"][1])
        once_per = None
        if "once_per" in top:
            once_per = self.text(top["once_per"][1], "once_per")
            if trigger.event is None:
                raise self.fail(top["once_per"][1], "once_per names a field of the trigger event; an audience trigger has none")
            self.field(trigger.event.event, top["once_per"][1], once_per)
        reentry = True
        if "reentry" in top:
            reentry = self.scalar(top["reentry"][1], "reentry")
            if not isinstance(reentry, bool):
                raise self.fail(top["reentry"][1], f"reentry must be true or false, got {reentry!r}")
        holdout = 0.0
        if "holdout" in top:
            holdout = self.scalar(top["holdout"][1], "holdout")
            if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
                raise self.fail(top["holdout"][1], f"holdout is the share of entrants who get nothing, from 0 up to (not including) 1, got {holdout!r}")
            holdout = float(holdout)
        goal = self.goal(top["goal"][1], trigger) if "goal" in top else None
        steps = self.steps(top["steps"][1], trigger)
        definition = {k: _plain(v) for k, (_, v) in top.items() if k not in ("name", "description", "owner")}
        return Journey(name, self.text(top["description"][1], "description"), self.text(top["owner"][1], "owner"), self.path,
                       trigger, steps, goal, once_per, reentry, holdout, definition)

    def field(self, event: str, node: yaml.Node, name: str) -> None:
        from lastmile.contracts import contract

        if event in SIGNALS:
            if name not in SIGNALS[event]:
                raise self.fail(node, f"unknown field {name!r} of the signal {event}; expected one of {', '.join(SIGNALS[event])}")
            return
        properties = contract(event).properties
        fields = sorted(k for k, v in properties.items() if v.get("type") not in ("object", "array"))
        if name not in fields:
            raise self.fail(node, f"unknown field {name!r} of {event}; expected one of {', '.join(fields)}")

    def event_match(self, node: yaml.Node, what: str, trigger: Trigger | None, extra: Collection[str] = frozenset()) -> tuple[EventMatch, dict[str, tuple[yaml.Node, yaml.Node]]]:
        body = self.map(node, what, {"event", "where", "same", *extra}, {"event"})
        event = self.scalar(body["event"][1], "event")
        if event not in EVENT_TABLES and event not in SIGNALS:
            raise self.fail(body["event"][1], f"unknown event {event!r}; expected one of {', '.join([*EVENT_TABLES, *SIGNALS])}")
        where: dict[str, Any] = {}
        if "where" in body and event in SIGNALS:  # a signal's fields are plain values
            for key_node, _ in self.map(body["where"][1], "where", set(SIGNALS[event])).values():
                self.field(event, key_node, key_node.value)
            where = _plain(body["where"][1])
        elif "where" in body:
            try:
                self.rules._where(event, body["where"][1])  # field names against the contract, values typed
            except AudienceError as exc:
                raise JourneyError(str(exc)) from None
            where = _plain(body["where"][1])
        same: tuple[str, ...] = ()
        if "same" in body:
            same_node = body["same"][1]
            names = [self.text(n, "same") for n in same_node.value] if isinstance(same_node, yaml.SequenceNode) else [self.text(same_node, "same")]
            if trigger is None or trigger.event is None:
                raise self.fail(same_node, "same compares with the trigger event's fields; an audience trigger has none")
            for n in names:
                self.field(event, same_node, n)
                self.field(trigger.event.event, same_node, n)
            same = tuple(names)
        return EventMatch(event, where, same), body

    def trigger(self, node: yaml.Node) -> Trigger:
        body = self.map(node, "trigger", {"event", "where", "audience", "signal"})
        if len({"event", "audience", "signal"} & set(body)) != 1:
            raise self.fail(node, "a trigger is exactly one of {event: TYPE, where: {...}}, {audience: NAME} or {signal: NAME}")
        if "signal" in body:
            if "where" in body:
                raise self.fail(body["where"][0], "where filters an event trigger; a signal trigger takes none")
            signal = self.text(body["signal"][1], "signal")
            if signal not in SIGNALS:
                raise self.fail(body["signal"][1], f"unknown signal {signal!r}; expected one of {', '.join(SIGNALS)}")
            return Trigger(event=EventMatch(signal))
        if "audience" in body:
            if "where" in body:
                raise self.fail(body["where"][0], "where filters an event trigger; an audience trigger takes none")
            audience = self.text(body["audience"][1], "audience")
            if self.audiences is not None and audience not in self.audiences:
                raise self.fail(body["audience"][1], f"unknown audience {audience!r}; the audiences are {', '.join(sorted(self.audiences)) or 'none'}")
            return Trigger(audience=audience)
        match, _ = self.event_match(node, "trigger", None)
        return Trigger(event=match)

    def duration(self, node: yaml.Node, what: str) -> int:
        body = self.map(node, what, set(_UNITS))
        if len(body) != 1:
            raise self.fail(node, f"{what} is one of {{minutes: N}}, {{hours: N}} or {{days: N}}")
        ((unit, (_, value_node)),) = body.items()
        value = self.scalar(value_node, unit)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise self.fail(value_node, f"{unit} must be a number above 0, got {value!r}")
        return int(value * _UNITS[unit])

    def goal(self, node: yaml.Node, trigger: Trigger) -> Goal:
        match, body = self.event_match(node, "goal", trigger, {"within"})
        within = self.duration(body["within"][1], "within") if "within" in body else 0
        return Goal(match, within)

    def steps(self, node: yaml.Node, trigger: Trigger) -> tuple[Step, ...]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.fail(node, "steps takes a non-empty list of send, wait, branch or exit steps")
        names: dict[str, int] = {}
        for index, item in enumerate(node.value):
            if isinstance(item, yaml.MappingNode):
                for key_node, value_node in item.value:
                    if key_node.value == "name":
                        step_name = self.text(value_node, "name")
                        if not _NAME.match(step_name) or step_name in (EXIT, NEXT):
                            raise self.fail(value_node, f"step name {step_name!r} must be lower-case letters, digits and _ (and not exit or next)")
                        if step_name in names:
                            raise self.fail(value_node, f"step name {step_name!r} is used twice")
                        names[step_name] = index
        steps = [self.step(item, index, names, trigger) for index, item in enumerate(node.value)]
        return tuple(steps)

    def step(self, node: yaml.Node, index: int, names: dict[str, int], trigger: Trigger) -> Step:
        if isinstance(node, yaml.ScalarNode) and node.value == EXIT:
            return Step(f"step_{index + 1}", "exit")
        body = self.map(node, f"step {index + 1}", {"name", "send", "wait", "branch", "exit"})
        kinds = [k for k in body if k != "name"]
        if len(kinds) != 1:
            raise self.fail(node, f"step {index + 1} is exactly one of send, wait, branch or exit, found {', '.join(kinds) or 'none'}")
        kind = kinds[0]
        name = next((n for n, i in names.items() if i == index), f"step_{index + 1}")
        value = body[kind][1]
        if kind == "exit":
            return Step(name, "exit")
        if kind == "send":
            return Step(name, "send", send=self.send(value))
        if kind == "wait":
            return Step(name, "wait", wait=self.wait(value, trigger))
        return Step(name, "branch", branch=self.branch(value, index, names, trigger))

    def send(self, node: yaml.Node) -> Send:
        body = self.map(node, "send", {"template", "channel", "purposes", "params"}, {"template", "channel", "purposes"})
        template = self.text(body["template"][1], "template")
        if not _NAME.match(template):
            raise self.fail(body["template"][1], f"template {template!r} must be lower-case letters, digits and _")
        channel = self.text(body["channel"][1], "channel")
        if channel not in CHANNELS:
            raise self.fail(body["channel"][1], f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}")
        purposes_node = body["purposes"][1]
        if not isinstance(purposes_node, yaml.SequenceNode) or not purposes_node.value:
            raise self.fail(purposes_node, f"purposes takes a non-empty list of {', '.join((*CONSENT_PURPOSES, SERVICE))}")
        purposes = tuple(self.text(p, "purpose") for p in purposes_node.value)
        for p, p_node in zip(purposes, purposes_node.value):
            if p not in (*CONSENT_PURPOSES, SERVICE):
                raise self.fail(p_node, f"unknown purpose {p!r}; expected {', '.join((*CONSENT_PURPOSES, SERVICE))}")
        if SERVICE in purposes and len(purposes) > 1:
            raise self.fail(purposes_node, "a service message has the one purpose service (it needs no consent); marketing is another send")
        params = {}
        if "params" in body:
            params = _plain(body["params"][1])
            if not isinstance(params, dict):
                raise self.fail(body["params"][1], "params is a mapping of values the template fills in (e.g. {coupon_cny: 20})")
        return Send(template, channel, purposes, params)

    def wait(self, node: yaml.Node, trigger: Trigger) -> Wait:
        if isinstance(node, yaml.MappingNode) and any(k.value == "event" for k, _ in node.value):
            match, body = self.event_match(node, "wait", trigger, {"at_most"})
            if "at_most" not in body:
                raise self.fail(node, "waiting for an event needs at_most: {hours: N} (how long before going on without it)")
            return Wait(seconds=self.duration(body["at_most"][1], "at_most"), event=match)
        body = self.map(node, "wait", {*_UNITS, "until"})
        if "until" in body:
            if len(body) != 1:
                raise self.fail(node, "wait takes either a duration or until, not both")
            text = str(self.scalar(body["until"][1], "until"))
            tomorrow = text.startswith("tomorrow ")
            try:
                at = clock_time.fromisoformat(text.removeprefix("tomorrow ").strip())
            except ValueError:
                raise self.fail(body["until"][1], f"until is a local time like \"07:00\" (the next one) or \"tomorrow 07:00\", got {text!r}") from None
            return Wait(until=at, tomorrow=tomorrow)
        return Wait(seconds=self.duration(node, "wait"))

    def branch(self, node: yaml.Node, index: int, names: dict[str, int], trigger: Trigger) -> Branch:
        body = self.map(node, "branch", {"if", "then", "else"}, {"if"})
        condition = self.condition(body["if"][1], trigger)

        def target(key: str) -> str:
            if key not in body:
                return NEXT
            value_node = body[key][1]
            value = self.text(value_node, key)
            if value in (EXIT, NEXT):
                return value
            if value not in names:
                raise self.fail(value_node, f"{key}: no step named {value!r}; expected exit, next or one of {', '.join(names) or '(no named steps)'}")
            if names[value] <= index:
                raise self.fail(value_node, f"{key}: {value!r} is not after this step; branches jump forward only (a run never repeats a step)")
            return str(names[value])

        then, otherwise = target("then"), target("else")
        if then == otherwise == NEXT:
            raise self.fail(node, "a branch needs then or else (exit or a later step's name)")
        return Branch(condition, then, otherwise)

    def condition(self, node: yaml.Node, trigger: Trigger) -> Any:
        """A condition as plain data: all/any/not of since-entry events and audience rules."""
        body = self.map(node, "a condition", {"all", "any", "not", "event", "since_entry", "at_least", "where", "same",
                                              "days", "hours", "trait", "op", "value", "community", "building", "leader"})
        if not body:
            raise self.fail(node, "empty condition")
        keys = set(body)
        if keys & {"all", "any", "not"}:
            if len(keys) != 1:
                raise self.fail(node, "all/any/not stands alone in its mapping")
            (key,) = keys
            child = body[key][1]
            if key == "not":
                return {"not": self.condition(child, trigger)}
            if not isinstance(child, yaml.SequenceNode) or not child.value:
                raise self.fail(child, f"{key} takes a non-empty list of conditions")
            return {key: [self.condition(c, trigger) for c in child.value]}
        if "since_entry" in body:
            flag = self.scalar(body["since_entry"][1], "since_entry")
            if flag is not True:
                raise self.fail(body["since_entry"][1], "since_entry: true counts the events since the person entered; leave it out for a window (days or hours)")
            rest = yaml.MappingNode(node.tag, [(k, v) for k, v in node.value if k.value not in ("since_entry", "at_least")],
                                    start_mark=node.start_mark, end_mark=node.end_mark)
            match, _ = self.event_match(rest, "a since_entry condition", trigger)
            at_least = 1
            if "at_least" in body:
                at_least = self.scalar(body["at_least"][1], "at_least")
                if isinstance(at_least, bool) or not isinstance(at_least, int) or at_least < 1:
                    raise self.fail(body["at_least"][1], f"at_least must be a whole number of at least 1, got {at_least!r}")
            return {"since_entry": {"event": match.event, "where": match.where, "same": list(match.same), "at_least": at_least}}
        if "same" in body:
            raise self.fail(body["same"][0], "same applies to since_entry conditions")
        try:
            _RuleCompiler(self.path).compile(node)  # traits, history windows, places: the audience rule language
        except JourneyError:
            raise
        except AudienceError as exc:
            raise JourneyError(str(exc)) from None
        return {"rule": _plain(node)}

