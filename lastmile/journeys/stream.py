"""Journeys in the stream worker: note each batch's events, advance after OneID runs, publish sends.

* The batch handler writes the batch's events of the types the journeys react to into
  ``journey_inbox`` before the batch's offsets are committed, so a worker killed after
  the commit has not lost them: the next pass (here after a restart, or ``lastmile journey
  tick``) finds them pending.
* After each OneID resolution (on the OneID thread, holding the warehouse lock), at most
  every ``every_s`` seconds, :meth:`StreamJourneys.after_resolve` runs one
  :meth:`~lastmile.journeys.scheduler.JourneyRunner.tick`: events whose person is now
  known are applied, runs start, waits that ended go on. Its clock is the newest event
  time the journeys have seen (never past the wall clock), so a replayed backlog keeps its
  own timing: a "one day later" reminder is not sent before the day's events were read.
* A journey that ``replaces`` a built-in trigger takes it over: the worker hands the
  welcomes and replenishment nudges it decided to :meth:`StreamJourneys.note_actions` as
  the signals ``new_neighbour`` and ``replenishment_due`` instead of publishing them, and
  no longer sends its own cold-chain compensation (the journey reacts to the claim itself).
* The allowed sends are queued for the worker, which publishes them to ``lastmile.actions``
  (``action_id`` = step id) and then records them delivered; a crash in between publishes
  them again with the same id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from lastmile.audiences.definition import EVENT_TABLES
from lastmile.journeys import store
from lastmile.journeys.definition import SIGNALS, Journey
from lastmile.journeys.engine import Event
from lastmile.journeys.intake import _time, events_from_rows
from lastmile.journeys.scheduler import JourneyRunner, TickReport, actions
from lastmile.streaming.sink import BatchHandler, StreamSink, WrittenBatch

log = logging.getLogger("lastmile.stream.journeys")


class StreamJourneys:
    """The stream's journey hook (see the module docstring)."""

    def __init__(self, sink: StreamSink, journeys: Sequence[Journey], desk: Any, zone: Any, every_s: float = 5.0,
                 clock: Callable[[], float] | None = None, wall_clock: Callable[[], datetime] | None = None) -> None:
        import time

        self.sink = sink
        self.runner = JourneyRunner(sink.warehouse, journeys, desk, zone, wall_clock=wall_clock)
        self.every_s = every_s
        self.clock = clock or time.monotonic
        self.wall_clock = wall_clock or (lambda: datetime.now(timezone.utc))
        self.tables = {EVENT_TABLES[t]: t for t in self.runner.event_types if t in EVENT_TABLES}
        self.newest = store.newest_noted(sink.warehouse)
        self.ticks = 0
        self.errors = 0
        self.published = 0  # sends recorded delivered by this process
        self.last: TickReport | None = None
        self._last = float("-inf")
        #: A resolution came within ``every_s`` of the last pass: the worker makes that pass
        #: later (:meth:`catch_up`), or the events it resolved would wait for the next resolution.
        self.owed = False
        self._pending: dict[str, Any] = {}
        self._handed: set[str] = set()  # handed to the worker, not yet recorded delivered
        self._lock = threading.Lock()

    def handler(self) -> BatchHandler:
        """Note the batch's journey events in the inbox (before the batch is committed)."""

        async def handle(written: WrittenBatch) -> None:
            events = [e for table, event_type in self.tables.items() for e in events_from_rows(event_type, written.rows(table))]
            if events:
                newest = max(e.at for e in events)
                self.newest = newest if self.newest is None else max(self.newest, newest)
                await self.sink.run_blocking(store.note, self.sink.warehouse, events)

        return handle

    @property
    def replaced(self) -> set[str]:
        """The built-in triggers the journeys take over (``replaces:``)."""
        return {j.replaces for j in self.runner.journeys if j.replaces}

    def note_actions(self, actions: Sequence[Any]) -> None:
        """Put built-in trigger decisions into the inbox as signals. Hold the warehouse lock.

        A welcome becomes ``new_neighbour`` under the id of the event that named the person
        (OneID resolves it like the event); a replenishment nudge becomes ``replenishment_due``
        under its ``action_id`` (one per person, staple and due day), with its OneID.
        """
        events = []
        for action in actions:
            details = action.details or {}
            if action.action == "welcome_neighbour":
                events.append(Event(action.event_id, "new_neighbour", "", _time(action.occurred_at),
                                    {k: details[k] for k in SIGNALS["new_neighbour"] if details.get(k) is not None}))
            elif action.action == "replenishment_nudge":
                events.append(Event(action.action_id, "replenishment_due", details.get("oneid") or "", _time(action.occurred_at),
                                    {k: details[k] for k in SIGNALS["replenishment_due"] if details.get(k) is not None}))
        if events:
            newest = max(e.at for e in events)
            self.newest = newest if self.newest is None else max(self.newest, newest)
            store.note(self.sink.warehouse, events)

    async def hand_over(self, actions: Sequence[Any]) -> None:
        """:meth:`note_actions` from the batch handler (before the batch commits)."""
        await self.sink.run_blocking(self.note_actions, actions)

    def now(self) -> datetime | None:
        """The journeys' clock: the newest event time noted, never past the wall clock."""
        return None if self.newest is None else min(self.newest, self.wall_clock())

    def after_resolve(self, force: bool = False) -> None:
        """On the OneID thread, holding the warehouse lock: one pass, at most every ``every_s``."""
        if not force and self.clock() - self._last < self.every_s:
            self.owed = True
            return
        now = self.now()
        if now is None:
            return
        self._last = self.clock()
        self.owed = False
        try:
            self.last = self.runner.tick(now)
            self.ticks += 1
            queued = actions(store.undelivered(self.sink.warehouse))
        except Exception:  # noqa: BLE001 - the inbox keeps the events; the next pass retries
            self.errors += 1
            log.exception("journeys: pass failed (ingestion continues; retried at the next pass)")
            return
        with self._lock:
            for action in queued:
                if action.action_id not in self._handed:
                    self._pending.setdefault(action.action_id, action)

    def catch_up(self) -> None:
        """Holding the warehouse lock: the pass a resolution was owed, once ``every_s`` allows it
        (a quiet stream has no later resolution to make it)."""
        if self.owed:
            self.after_resolve()

    def drain(self) -> list[Any]:
        """The queued sends (each handed out once until :meth:`delivered` or a restart)."""
        with self._lock:
            out, self._pending = list(self._pending.values()), {}
            self._handed.update(a.action_id for a in out)
        return out

    def requeue(self, sends: Sequence[Any]) -> None:
        """Hand sends out again at the next :meth:`drain` (their publication failed)."""
        with self._lock:
            self._handed.difference_update(a.action_id for a in sends)
            for action in sends:
                self._pending.setdefault(action.action_id, action)

    async def delivered(self, sent: Sequence[Any]) -> None:
        """Record published sends, so the outbox does not hand them out again."""
        if sent:
            await self.sink.run_blocking(store.delivered, self.sink.warehouse, [a.action_id for a in sent],
                                         datetime.now(timezone.utc))
            with self._lock:
                self._handed.difference_update(a.action_id for a in sent)
            self.published += len(sent)


async def publish_to_kafka(bootstrap: str, sends: Sequence[Any], timeout_s: float = 30.0) -> None:
    """Publish journey sends to ``lastmile.actions`` as the worker does (keyed by ``action_id``),
    returning once the broker acknowledged every one. For ``lastmile journey publish``."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    from lastmile.streaming.topics import ACTIONS_TOPIC

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=int(timeout_s * 1000))
    await asyncio.wait_for(producer.start(), timeout_s)
    try:
        sent = [await producer.send(ACTIONS_TOPIC, key=a.key(), value=a.to_json()) for a in sends]
        await asyncio.wait_for(asyncio.gather(*sent), timeout_s)
    finally:
        await producer.stop()
