"""Event audiences behind the stream: a person enters within seconds of the event that qualifies them.

An audience file with ``freshness: event`` is decided by a person's own events alone (``all``
/ ``any`` of ``{event, at_least, days}``). The worker notes the events each written batch
carries (:meth:`EventAudiences.handler`); after each OneID resolution (a callback of
:class:`~lastmile.streaming.identity.IdentityRefresher`, on its thread, holding the warehouse
lock) the noted events that now have a person are looked up in ``event_oneid``, the event
audiences are evaluated for those people only, and the ones who newly match are published:
a row in ``audience_membership_changes`` and ``audience_members`` (the tables and row shapes
of :mod:`lastmile.audiences.membership`), and an entry message queued for the worker to send
to ``lastmile.audience_changes``, keyed by OneID, with the deterministic ``event_id`` of
:func:`lastmile.audiences.destinations.event_id` (the same id ``lastmile audience deliver``
gives that change, so consumers deduplicate a change sent by both).

Only entries are published here: an event cannot make a person stop matching an event-only
rule. Leaving, when events age out of a window, is left to a refresh over the warehouse.

Events whose person is not resolved yet stay noted for the next resolutions (at most
``patience`` of them: an event of a forgotten person never gets one). With no event audience
the worker does not create this at all: no handler, no callback, no work.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from lastmile.audiences.definition import EVENT_TABLES, Audience
from lastmile.audiences.destinations import CHANGES_TOPIC, Destination, event_id
from lastmile.audiences.destinations import ensure_tables as ensure_destination_tables
from lastmile.audiences.membership import ensure_tables, newest_event_time
from lastmile.streaming.sink import BatchHandler, WrittenBatch
from lastmile.warehouse import Warehouse

log = logging.getLogger("lastmile.stream.audiences")

__all__ = ["CHANGES_TOPIC", "EventAudiences"]


@dataclass
class AudienceStats:
    """Counters for the status file."""

    evaluations: int = 0
    people: int = 0  # people evaluated, summed over evaluations
    entries: int = 0
    exits: int = 0
    given_up: int = 0  # noted events that never got a person within ``patience`` resolutions
    errors: int = 0


class EventAudiences:
    """Evaluates the event audiences for the people each batch touched (see the module docstring)."""

    def __init__(self, warehouse: Warehouse, audiences: Sequence[Audience], patience: int = 5,
                 destinations: Sequence[Destination] = ()) -> None:
        self.warehouse = warehouse
        self.audiences = [a for a in audiences if a.freshness == "event"]
        self.patience = patience
        #: Kafka destinations on the changes topic: what the worker sends is recorded as
        #: delivered to them (the outbox), so a later ``lastmile audience publish`` skips it.
        self.destinations = [d for d in destinations if d.kind == "kafka" and d.topic == CHANGES_TOPIC]
        self.stats = AudienceStats()
        #: event_id -> resolutions it has waited for its person
        self._noted: dict[str, int] = {}
        self._pending: list[tuple[bytes, bytes]] = []
        self._lock = threading.Lock()
        self._tables_ready = False
        self._tables = {EVENT_TABLES[e] for a in self.audiences for e in _events_of(a.rule)}
        #: the stream time exits were last evaluated at (None: not yet in this process)
        self._exits_as_of: datetime | None = None

    def handler(self) -> BatchHandler:
        """The batch handler: note the ids of the events the audiences count. Never waits."""

        async def handle(written: WrittenBatch) -> None:
            self.note(written)

        return handle

    def note(self, written: WrittenBatch) -> None:
        ids = [row["event_id"] for table in self._tables for row in written.rows(table)]
        if ids:
            with self._lock:
                for eid in ids:
                    self._noted.setdefault(eid, 0)

    def after_resolve(self) -> None:
        """On the OneID thread, holding the warehouse lock: entries for the people now known,
        exits for the members whose window has passed."""
        with self._lock:
            noted, self._noted = self._noted, {}
        try:
            self.evaluate(noted)
        except Exception:  # noqa: BLE001 - the events stay in the warehouse; the next refresh sees them
            self.stats.errors += 1
            log.exception("event audiences: evaluation failed (ingestion continues)")

    def evaluate(self, noted: dict[str, int], now: datetime | None = None) -> None:
        """Resolve ``noted`` events to people, evaluate the audiences for them and for the
        members whose events aged out of a window; publish entries and exits."""
        people: list[str] = []
        if noted:
            rows = self.warehouse.rows("SELECT event_id, oneid FROM event_oneid WHERE event_id IN {ids:Array(String)}",
                                       {"ids": list(noted)})
            resolved = {eid for eid, _ in rows}
            waiting = {eid: tries + 1 for eid, tries in noted.items() if eid not in resolved and tries + 1 < self.patience}
            self.stats.given_up += sum(1 for eid in noted if eid not in resolved and eid not in waiting)
            if waiting:
                with self._lock:
                    for eid, tries in waiting.items():
                        self._noted[eid] = max(tries, self._noted.get(eid, 0))
            people = sorted({oneid for _, oneid in rows if oneid})
        if not self._tables_ready:
            if not people and "audience_members" not in self.warehouse.tables():
                return  # nobody to enter and no members who could leave
            ensure_tables(self.warehouse)
            if self.destinations:
                ensure_destination_tables(self.warehouse)
            self._tables_ready = True
        as_of = newest_event_time(self.warehouse)
        if as_of is None or (not people and as_of == self._exits_as_of):
            return
        at = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
        at = at.replace(microsecond=at.microsecond // 1000 * 1000)  # the history keeps milliseconds
        self.stats.evaluations += 1
        self.stats.people += len(people)
        messages: list[tuple[bytes, bytes]] = []
        for audience in self.audiences:
            entered = self._entries(audience, people, as_of) if people else []
            left = self._exits(audience, as_of)
            if entered or left:
                self._publish(audience, entered, left, at)
                messages += [_message(audience, oneid, "enter", at) for oneid in entered]
                messages += [_message(audience, oneid, "exit", at) for oneid in left]
                self.stats.entries += len(entered)
                self.stats.exits += len(left)
        self._exits_as_of = as_of
        if messages:
            with self._lock:
                self._pending += messages

    def _entries(self, audience: Audience, people: list[str], as_of: datetime) -> list[str]:
        """The people of ``people`` the audience selects now and does not hold yet."""
        compiled = audience.compile()
        parameters = dict(compiled.parameters, audience=audience.name, people=people,
                          as_of=as_of.astimezone(timezone.utc).replace(tzinfo=None))
        sql = f"""SELECT oneid FROM (SELECT arrayJoin({{people:Array(String)}}) AS oneid)
WHERE {compiled.predicate}
  AND oneid NOT IN ({_MEMBERS_AMONG.format(people="{people:Array(String)}")})
ORDER BY oneid"""
        return [r[0] for r in self.warehouse.rows(sql, parameters)]

    def _exits(self, audience: Audience, as_of: datetime) -> list[str]:
        """Members the audience no longer selects because events left its windows.

        Event-only rules can stop matching only when an event ages out: so only members with
        a counted event that left a window since the last evaluation are checked (every
        member at the first evaluation of a process). ``as_of`` is the stream's time, the
        newest event in the warehouse, as for a refresh.
        """
        compiled = audience.compile()
        since = self._exits_as_of
        aged = []
        for event, window in _windows(audience.rule):
            table = EVENT_TABLES[event]
            period = (f" AND occurred_at > {{since:DateTime64(3, 'UTC')}} - toIntervalSecond({int(window.total_seconds())})"
                      if since is not None else "")
            # IN rather than a join: event_oneid is read by its key for the few events that aged out
            aged.append(f"SELECT oneid FROM event_oneid WHERE event_type = '{event}' AND event_id IN (SELECT event_id FROM {table}"
                        f" WHERE occurred_at <= {{as_of:DateTime64(3, 'UTC')}} - toIntervalSecond({int(window.total_seconds())}){period})")
        if not aged:
            return []
        parameters = dict(compiled.parameters, audience=audience.name,
                          as_of=as_of.astimezone(timezone.utc).replace(tzinfo=None))
        if since is not None:
            parameters["since"] = since.astimezone(timezone.utc).replace(tzinfo=None)
        candidates = " UNION DISTINCT ".join(aged)
        sql = f"""SELECT oneid FROM ({_MEMBERS_AMONG.format(people="(" + candidates + ")")})
WHERE NOT ({compiled.predicate})
ORDER BY oneid"""
        return [r[0] for r in self.warehouse.rows(sql, parameters)]

    def _publish(self, audience: Audience, entered: list[str], left: list[str], at: datetime) -> None:
        """The entries and exits into the history and the current members, as a warehouse refresh writes
        them, and the audience's size and fingerprint moved by what changed."""
        version, stamp = audience.version, at.replace(tzinfo=None)
        known = self.warehouse.scalar("SELECT count() FROM audience_versions WHERE audience = {a:String} AND version = {v:String}",
                                      {"a": audience.name, "v": version})
        if not known:
            definition = json.dumps(audience.rule, ensure_ascii=False, sort_keys=True, default=str)
            self.warehouse.insert_rows("audience_versions", [(audience.name, version, audience.kind, definition, audience.owner, stamp)],
                                       ["audience", "version", "kind", "definition", "owner", "published_at"])
        reasons = {"enter": _reason(audience, "enter"), "exit": _reason(audience, "exit")}
        changes = [(oneid, "enter") for oneid in entered] + [(oneid, "exit") for oneid in left]
        self.warehouse.insert_rows("audience_membership_changes",
                                   [(audience.name, version, oneid, change, stamp, reasons[change]) for oneid, change in changes],
                                   ["audience", "version", "oneid", "change", "at", "reason"])
        self.warehouse.insert_rows("audience_members",
                                   [(audience.name, oneid, version, stamp, stamp, int(change == "exit")) for oneid, change in changes],
                                   ["audience", "oneid", "version", "entered_at", "updated_at", "is_deleted"])
        # the published size and fingerprint follow (when published under this version: else the
        # next refresh compares in full anyway)
        self.warehouse.command("""
INSERT INTO audience_fingerprints (audience, version, size, fingerprint, updated_at)
SELECT {a:String}, {v:String}, toUInt64(stored.2 + {entered:Int64} - {left:Int64}),
       bitXor(stored.3, (SELECT groupBitXor(sipHash64(arrayJoin({changed:Array(String)}))))), {at:DateTime64(3, 'UTC')}
FROM (SELECT argMax(tuple(version, size, fingerprint), updated_at) AS stored FROM audience_fingerprints WHERE audience = {a:String})
WHERE stored.1 = {v:String}""", {"a": audience.name, "v": version, "entered": len(entered), "left": len(left),
                                   "changed": [oneid for oneid, _ in changes], "at": stamp})

    def drain(self) -> list[tuple[bytes, bytes]]:
        """The queued ``(key, value)`` messages for ``lastmile.audience_changes`` (each handed out once)."""
        with self._lock:
            out, self._pending = self._pending, []
        return out

    def delivered(self, messages: Sequence[tuple[bytes, bytes]], now: datetime | None = None) -> None:
        """Record ``messages`` (acknowledged by the broker) as received by the destinations on
        the changes topic. Hold the warehouse lock."""
        if not self.destinations or not messages:
            return
        at = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(tzinfo=None)
        rows = []
        for _, value in messages:
            change = json.loads(value)
            rows += [(d.name, change["event_id"], change["audience"], change["oneid"], change["change"], at)
                     for d in self.destinations if d.audiences is None or change["audience"] in d.audiences]
        if rows:
            self.warehouse.insert_rows("audience_deliveries", rows,
                                       ["destination", "event_id", "audience", "oneid", "change", "delivered_at"])


#: The current members of ``{audience:String}`` among ``{people}`` (no FINAL: each person's newest row).
_MEMBERS_AMONG = ("SELECT oneid FROM audience_members WHERE audience = {{audience:String}} AND oneid IN {people} "
                  "GROUP BY oneid HAVING argMax(is_deleted, (updated_at, is_deleted)) = 0")


def _reason(audience: Audience, change: str) -> str:
    if change == "enter":
        return f"matches {audience.name} version {audience.version}"
    return f"no longer matches {audience.name} version {audience.version} (its window passed)"


def _message(audience: Audience, oneid: str, change: str, at: datetime) -> tuple[bytes, bytes]:
    """One change as ``lastmile audience publish`` sends it (same fields, same id)."""
    version = audience.version
    value = {"event_id": event_id(audience.name, version, oneid, change, at), "audience": audience.name, "version": version,
             "oneid": oneid, "change": change,
             "at": at.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
             "reason": _reason(audience, change)}
    return oneid.encode(), json.dumps(value, ensure_ascii=False).encode()


def _events_of(rule: object) -> set[str]:
    """The event names an (event-only) rule counts."""
    return {event for event, _ in _windows(rule)}


def _windows(rule: object) -> list[tuple[str, timedelta]]:
    """``(event, window)`` of each event condition of an (event-only) rule."""
    if isinstance(rule, dict):
        if "event" in rule:
            unit = "days" if "days" in rule else "hours"
            return [(str(rule["event"]), timedelta(**{unit: int(rule[unit])}))]
        return [w for v in rule.values() for r in (v if isinstance(v, list) else [v]) for w in _windows(r)]
    return []
