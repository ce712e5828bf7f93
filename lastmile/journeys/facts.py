"""History, trait and place conditions of journey branches, answered by the warehouse.

A branch condition that is not about the events since entry is written in the audience rule
language (``{trait: credit_tier, op: "=", value: gold}``, ``{event: order, at_least: 2,
days: 30}``, ``{community: C01}``) and compiled by the same compiler, so it means exactly
what it means in an audience file. It is evaluated for one person at the step's time.

A pass asks for many people at once, so the runner first names them (:meth:`WarehouseFacts.prepare`):
a trait or place condition is then one query for all of them, and an event-history condition
one query for their matching events over the pass's time span, counted per person and step
time here, with the audience rule's window: events in ``(time - window, time]``, each counted
once by its id. A question outside the prepared people or span is one query of its own.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from lastmile.audiences.contact_rules import events_of_people_sql
from lastmile.audiences.definition import EVENT_TABLES, TRAITS_VIEW, _plain_to_node, _RuleCompiler
from lastmile.streaming.present import present
from lastmile.warehouse import Warehouse

_TRAIT_KEYS = {"trait", "community", "building", "leader"}
_WHERE = Path("journey condition")


def _reads_traits(rule: Any) -> bool:
    if isinstance(rule, dict):
        return bool(_TRAIT_KEYS & set(rule)) or any(_reads_traits(v) for v in rule.values())
    if isinstance(rule, list):
        return any(_reads_traits(v) for v in rule)
    return False


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


class WarehouseFacts:
    """:class:`~lastmile.journeys.engine.Facts` over the warehouse (``audience_traits`` and the raw events).

    A trait condition for a person the marts do not know yet (a neighbour newer than the
    last ``lastmile transform``) is false: nothing is known about them.
    """

    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse
        self.queries = 0
        self._people: set[str] = set()
        self._span: tuple[datetime, datetime] | None = None
        self._members: dict[str, set[str]] = {}  # trait / place rule -> people of the prepared set it selects
        self._events: dict[str, dict[str, list[tuple[datetime, str]]]] = {}  # event rule -> person -> (time, id), by time

    def prepare(self, people: Iterable[str], start: datetime, end: datetime) -> None:
        """The people and the span of step times the next questions are about (answers are fetched
        for all of them at the first question of each condition)."""
        self._people = set(people)
        self._span = (start, end)
        self._members, self._events = {}, {}

    def matches(self, oneid: str, rule: Any, as_of: datetime) -> bool:
        prepared = self._span is not None and oneid in self._people and self._span[0] <= as_of <= self._span[1]
        if not prepared:
            return self._one(oneid, rule, as_of)
        key = json.dumps(rule, sort_keys=True, default=str)
        if "event" in rule:
            events = self._events.get(key)
            if events is None:
                events = self._events[key] = self._history(rule)
            window = timedelta(days=rule["days"]) if "days" in rule else timedelta(hours=rule["hours"])
            times = events.get(oneid, [])
            first = bisect.bisect_right(times, (as_of - window, "\uffff"))
            last = bisect.bisect_right(times, (as_of, "\uffff"))
            return len({event_id for _, event_id in times[first:last]}) >= int(rule.get("at_least", 1))
        members = self._members.get(key)
        if members is None:
            members = self._members[key] = self._selected(rule)
        return oneid in members

    def _one(self, oneid: str, rule: Any, as_of: datetime) -> bool:
        compiler = _RuleCompiler(_WHERE)
        predicate = compiler.compile(_plain_to_node(rule))
        parameters = dict(compiler.parameters, oneid=oneid, as_of=_utc(as_of))
        if _reads_traits(rule):
            if not present(self.warehouse, TRAITS_VIEW):
                return False
            source = f"{TRAITS_VIEW} WHERE oneid = {{oneid:String}} AND"
        else:
            source = "(SELECT {oneid:String} AS oneid) WHERE"
        self.queries += 1
        return bool(self.warehouse.scalar(f"SELECT count() FROM {source} {predicate}", parameters))

    def _selected(self, rule: Any) -> set[str]:
        """The prepared people a trait or place condition selects (one query)."""
        if not present(self.warehouse, TRAITS_VIEW):
            return set()
        compiler = _RuleCompiler(_WHERE)
        predicate = compiler.compile(_plain_to_node(rule))
        self.queries += 1
        rows = self.warehouse.rows(f"SELECT oneid FROM {TRAITS_VIEW} WHERE oneid IN {{people:Array(String)}} AND {predicate}",
                                   dict(compiler.parameters, people=sorted(self._people)))
        return {r[0] for r in rows}

    def _history(self, rule: Any) -> dict[str, list[tuple[datetime, str]]]:
        """The prepared people's events matching an event condition over the span, by person (one query)."""
        assert self._span is not None
        table = EVENT_TABLES[rule["event"]]
        if not present(self.warehouse, table, "event_oneid"):
            return {}
        compiler = _RuleCompiler(_WHERE)
        filters = compiler._where(rule["event"], _plain_to_node(rule["where"])) if rule.get("where") else ""
        window = timedelta(days=rule["days"]) if "days" in rule else timedelta(hours=rule["hours"])
        self.queries += 1
        rows = self.warehouse.rows(
            f"""SELECT e.oneid, r.occurred_at, r.event_id
            FROM (SELECT event_type, event_id, oneid FROM event_oneid
                  WHERE event_id IN ({events_of_people_sql(rule["event"], "people")})) AS e
            INNER JOIN (SELECT event_id, occurred_at FROM {table} FINAL
                        WHERE occurred_at > {{lo:DateTime64(3, 'UTC')}} AND occurred_at <= {{hi:DateTime64(3, 'UTC')}}{filters}) AS r
                ON r.event_id = e.event_id
            WHERE e.event_type = {{event:String}} AND e.oneid IN {{people:Array(String)}}""",
            dict(compiler.parameters, lo=_utc(self._span[0] - window), hi=_utc(self._span[1]), event=rule["event"],
                 people=sorted(self._people)))
        out: dict[str, list[tuple[datetime, str]]] = {}
        for oneid, at, event_id in rows:
            out.setdefault(oneid, []).append((at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at, event_id))
        for times in out.values():
            times.sort()
        return out
