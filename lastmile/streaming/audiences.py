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
from datetime import datetime, timezone

from lastmile.audiences.definition import EVENT_TABLES, Audience
from lastmile.audiences.destinations import CHANGES_TOPIC, event_id
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
    given_up: int = 0  # noted events that never got a person within ``patience`` resolutions
    errors: int = 0


class EventAudiences:
    """Evaluates the event audiences for the people each batch touched (see the module docstring)."""

    def __init__(self, warehouse: Warehouse, audiences: Sequence[Audience], patience: int = 5) -> None:
        self.warehouse = warehouse
        self.audiences = [a for a in audiences if a.freshness == "event"]
        self.patience = patience
        self.stats = AudienceStats()
        #: event_id -> resolutions it has waited for its person
        self._noted: dict[str, int] = {}
        self._pending: list[tuple[bytes, bytes]] = []
        self._lock = threading.Lock()
        self._tables_ready = False
        self._tables = {EVENT_TABLES[e] for a in self.audiences for e in _events_of(a.rule)}

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
        """On the OneID thread, holding the warehouse lock: evaluate for the people now known."""
        with self._lock:
            noted, self._noted = self._noted, {}
        if not noted:
            return
        try:
            self.evaluate(noted)
        except Exception:  # noqa: BLE001 - the events stay in the warehouse; the next refresh sees them
            self.stats.errors += 1
            log.exception("event audiences: evaluation failed (ingestion continues)")

    def evaluate(self, noted: dict[str, int], now: datetime | None = None) -> None:
        """Resolve ``noted`` events to people, evaluate the audiences for them, publish entries."""
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
        if not people:
            return
        if not self._tables_ready:
            ensure_tables(self.warehouse)
            self._tables_ready = True
        as_of = newest_event_time(self.warehouse)
        if as_of is None:
            return
        at = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
        at = at.replace(microsecond=at.microsecond // 1000 * 1000)  # the history keeps milliseconds
        self.stats.evaluations += 1
        self.stats.people += len(people)
        messages: list[tuple[bytes, bytes]] = []
        for audience in self.audiences:
            entered = self._entries(audience, people, as_of)
            if entered:
                self._publish(audience, entered, at)
                messages += [_message(audience, oneid, at) for oneid in entered]
        if messages:
            self.stats.entries += len(messages)
            with self._lock:
                self._pending += messages

    def _entries(self, audience: Audience, people: list[str], as_of: datetime) -> list[str]:
        """The people of ``people`` the audience selects now and does not hold yet."""
        compiled = audience.compile()
        parameters = dict(compiled.parameters, audience=audience.name, people=people,
                          as_of=as_of.astimezone(timezone.utc).replace(tzinfo=None))
        sql = f"""SELECT oneid FROM (SELECT arrayJoin({{people:Array(String)}}) AS oneid)
WHERE {compiled.predicate}
  AND oneid NOT IN (SELECT oneid FROM audience_members FINAL
                    WHERE audience = {{audience:String}} AND oneid IN {{people:Array(String)}})
ORDER BY oneid"""
        return [r[0] for r in self.warehouse.rows(sql, parameters)]

    def _publish(self, audience: Audience, entered: list[str], at: datetime) -> None:
        """The entries into the history and the current members, as a warehouse refresh writes them."""
        version, stamp = audience.version, at.replace(tzinfo=None)
        known = self.warehouse.scalar("SELECT count() FROM audience_versions WHERE audience = {a:String} AND version = {v:String}",
                                      {"a": audience.name, "v": version})
        if not known:
            definition = json.dumps(audience.rule, ensure_ascii=False, sort_keys=True, default=str)
            self.warehouse.insert_rows("audience_versions", [(audience.name, version, audience.kind, definition, audience.owner, stamp)],
                                       ["audience", "version", "kind", "definition", "owner", "published_at"])
        reason = f"matches {audience.name} version {version}"
        self.warehouse.insert_rows("audience_membership_changes",
                                   [(audience.name, version, oneid, "enter", stamp, reason) for oneid in entered],
                                   ["audience", "version", "oneid", "change", "at", "reason"])
        self.warehouse.insert_rows("audience_members", [(audience.name, oneid, version, stamp, stamp, 0) for oneid in entered],
                                   ["audience", "oneid", "version", "entered_at", "updated_at", "is_deleted"])

    def drain(self) -> list[tuple[bytes, bytes]]:
        """The queued ``(key, value)`` entry messages for ``lastmile.audience_changes`` (each handed out once)."""
        with self._lock:
            out, self._pending = self._pending, []
        return out


def _message(audience: Audience, oneid: str, at: datetime) -> tuple[bytes, bytes]:
    """One entry as ``lastmile audience deliver`` sends it (same fields, same id)."""
    version = audience.version
    value = {"event_id": event_id(audience.name, version, oneid, "enter", at), "audience": audience.name, "version": version,
             "oneid": oneid, "change": "enter",
             "at": at.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
             "reason": f"matches {audience.name} version {version}"}
    return oneid.encode(), json.dumps(value, ensure_ascii=False).encode()


def _events_of(rule: object) -> set[str]:
    """The event names an (event-only) rule counts."""
    if isinstance(rule, dict):
        if "event" in rule:
            return {str(rule["event"])}
        return set().union(*(_events_of(r) for v in rule.values() for r in (v if isinstance(v, list) else [v])))
    return set()
