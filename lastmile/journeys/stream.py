"""Journeys in the stream worker: note each batch's events and signals, advance after OneID runs, publish sends.

* The batch handler writes the batch's events of the types the journeys react to, and the
  ``new_neighbour`` signals it finds (:mod:`lastmile.journeys.signals`), into ``journey_inbox``
  before the batch's offsets are committed, so a worker killed after the commit has not lost
  them: the next pass (here after a restart, or ``lastmile journey tick``) finds them pending.
* An event reaches a journey once OneID has resolved its person. While the stream keeps up
  (its batches are gathered by time, not full), a batch that noted events asks OneID for an
  early resolution (``on_waiting``: the refresher's ``hurry``), and the resolution that follows
  makes a pass at once: a claim's compensation is on ``lastmile.actions`` within a second or
  two of the claim.
* While a backlog drains (full batches, or events produced more than ``BEHIND_S`` ago by the
  producers' clocks), no pass is made: the events wait in the inbox, and ingestion keeps its
  pace. Once the stream keeps up (or no batch came for ``QUIET_S``), the journeys catch up in
  passes of at most ``pass_events`` inbox events, each followed, while batches come (one within
  ``QUIET_S``), by a pause as long as it took, so ingestion keeps its share of the worker.
* After each OneID resolution (on the OneID thread, once the resolution let go of the warehouse
  lock: each statement of a pass takes the lock, so batches are written while the pass computes),
  :meth:`StreamJourneys.after_resolve` evaluates the ``replenishment_due`` signal (at most
  every ``replenish_every_s``) and runs one :meth:`~lastmile.journeys.scheduler.JourneyRunner.tick`
  when events were noted since the last pass or still wait for their person; otherwise at most
  every ``every_s`` (waits that ended). A pass applies the events whose person is now known,
  starts runs and goes on with waits that ended. Its clock is the newest event time the
  journeys have seen (never past the wall clock), so a replayed backlog keeps its own timing: a
  "one day later" reminder is not sent before the day's events were read.
* The allowed sends are queued for the worker, which publishes them to ``lastmile.actions``
  (``action_id`` = step id) and then records them delivered; a crash in between publishes
  them again with the same id.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

from lastmile.audiences.definition import EVENT_TABLES
from lastmile.journeys import store
from lastmile.journeys.definition import Journey
from lastmile.journeys.engine import Event
from lastmile.journeys.intake import events_from_rows
from lastmile.journeys.scheduler import JourneyRunner, TickReport, actions
from lastmile.journeys.signals import (NEIGHBOUR_JOINED, NEW_NEIGHBOUR, REPLENISHMENT_DUE, DueReplenishments, NewNeighbours,
                                      neighbours_joined)
from lastmile.streaming import seen
from lastmile.streaming.present import forget as present_forget
from lastmile.streaming.sink import BatchHandler, StatementLocked, StreamSink, WrittenBatch

log = logging.getLogger("lastmile.stream.journeys")

#: The most inbox events one pass of the worker applies (besides those still waiting for their
#: person, see :meth:`~lastmile.journeys.scheduler.JourneyRunner.tick`): a pass's statements hold
#: the warehouse (a batch waits for each) and its Python shares the worker's interpreter with
#: ingestion; a backlog's events cost the pass about half a millisecond each (entries, waits,
#: sends decided by the contact rules), so a pass stays within a second or two.
PASS_EVENTS = 2_000
#: A batch whose oldest event was produced longer ago than this is part of a backlog (as is a
#: full batch): no pass then, ingestion first.
BEHIND_S = 5.0
#: How far before the last read of ``neighbour_joined`` the next read starts: a first order
#: OneID resolved later than its neighbours' batches is still found.
JOINED_LOOKBACK = timedelta(hours=1)
#: How many passes after new orders read ``neighbour_joined``: the first, and one more for an
#: order whose OneID came only with a later resolution (the lookback finds it then).
JOINED_READS = 2
#: No batch for this long (beyond the time between the backlog's last two batches: a full batch
#: of a busy worker can take longer than this to gather, judge and write): the stream caught up
#: (or went quiet), the journeys may catch up.
QUIET_S = 2.0
#: The most that time between a backlog's batches adds to ``QUIET_S``.
BACKLOG_GAP_MAX_S = 30.0


class StreamJourneys:
    """The stream's journey hook (see the module docstring).

    ``every_s``: the longest time between passes while nothing new was noted (waits that
    ended); ``pass_events``: the most inbox events one pass applies; ``replenish_every_s``:
    evaluate ``replenishment_due`` at most this often (0: never); ``seen_tokens``: the identifiers seen so far (default: :func:`lastmile.streaming.seen.load`),
    read only when a journey triggers on ``new_neighbour``.
    """

    def __init__(self, sink: StreamSink, journeys: Sequence[Journey], desk: Any, zone: Any, every_s: float = 5.0,
                 clock: Callable[[], float] | None = None, wall_clock: Callable[[], datetime] | None = None,
                 replenish_every_s: float = 60.0, seen_tokens: set[str] | None = None,
                 pass_events: int = PASS_EVENTS) -> None:
        self.sink = sink
        #: The warehouse as passes use it: each statement takes the worker's warehouse lock.
        self.locked = StatementLocked(sink.warehouse, sink.lock)
        self.runner = JourneyRunner(self.locked, journeys, desk, zone, wall_clock=wall_clock)
        self.every_s = every_s
        self.pass_events = pass_events
        self.clock = clock or time.monotonic
        self.wall_clock = wall_clock or (lambda: datetime.now(timezone.utc))
        self.tables = {EVENT_TABLES[t]: t for t in self.runner.event_types if t in EVENT_TABLES}
        self.neighbours = (NewNeighbours(seen_tokens if seen_tokens is not None else seen.load(sink.warehouse))
                           if NEW_NEIGHBOUR in self.runner.event_types else None)
        self.replenishments = (DueReplenishments(self.locked, every_s=replenish_every_s, clock=self.clock)
                               if REPLENISHMENT_DUE in self.runner.event_types and replenish_every_s > 0 else None)
        #: ``neighbour_joined`` is read before the passes that follow new orders (and at the
        #: first pass: orders ingested before a restart), from the first orders ingested since
        #: ``JOINED_LOOKBACK`` before the last read (from a start: the last hour), so an order
        #: OneID resolved later is still found; the signal's id makes a second find a no-op.
        self.joins = NEIGHBOUR_JOINED in self.runner.event_types
        self._joined_to: datetime | None = None
        self._joins_owed = JOINED_READS if self.joins else 0  # reads owed to orders noted (a start counts as such)
        #: Asks OneID for an early resolution (the refresher's ``hurry``); any thread.
        self.on_waiting: Callable[[], None] | None = None
        self.newest = store.newest_noted(sink.warehouse)
        self.ticks = 0
        self.errors = 0
        self.published = 0  # sends recorded delivered by this process
        self.last: TickReport | None = None
        self._last = float("-inf")
        self._noted = False  # events noted since the last pass began
        self._behind = False  # the last batch was full or its events were produced long ago (a backlog)
        self._batch_at = float("-inf")  # when the last batch was handled (clock)
        self._backlog_gap = 0.0  # time between the last two batches of a backlog (0: the last batch was not behind)
        self._resume_at = float("-inf")  # a catch-up pass left events: the next one not before this
        #: A resolution came within ``every_s`` of the last pass with nothing new to apply: the
        #: worker makes that pass later (:meth:`catch_up`), as a quiet stream has no later resolution.
        self.owed = False
        self._pending: dict[str, Any] = {}
        self._handed: set[str] = set()  # handed to the worker, not yet recorded delivered
        #: The whole outbox is read at the first pass (sends a stopped worker allowed and did not
        #: publish) and after a failed one; otherwise a pass looks up only the sends it allowed.
        self._outbox_read = False
        self._lock = threading.Lock()
        self._passing = threading.Lock()  # one pass at a time (the OneID thread's, the worker's catch-up)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lastmile-journeys")

    def handler(self) -> BatchHandler:
        """Note the batch's journey events and ``new_neighbour`` signals in the inbox (before the
        batch is committed), then remember the identifiers it showed for the first time."""

        async def handle(written: WrittenBatch) -> None:
            at, was_behind = self.clock(), self._behind
            self._behind = written.full or (written.oldest_timestamp_ms is not None
                                            and time.time() * 1000 - written.oldest_timestamp_ms > BEHIND_S * 1000)
            self._backlog_gap = min(at - self._batch_at, BACKLOG_GAP_MAX_S) if self._behind and was_behind else 0.0
            self._batch_at = at
            events = [e for table, event_type in self.tables.items() for e in events_from_rows(event_type, written.rows(table))]
            if self.joins and written.batch.rows.get("raw_order"):
                self._joins_owed = JOINED_READS  # new orders: first orders among them make neighbour_joined
            first_seen: list[Any] = []
            if self.neighbours is not None:
                signals, first_seen = self.neighbours.decide(written)
                events += signals
            if events:
                await self.sink.run_blocking(self._note, events)
                if not self._behind and self.on_waiting is not None:
                    self.on_waiting()  # the stream keeps up: resolve these people soon, the pass follows
            if first_seen:  # after their signals are in the inbox: a crash in between notes them again
                await self.sink.run_blocking(seen.record, self.sink.warehouse, first_seen)

        return handle

    def _note(self, events: Sequence[Event], warehouse: Any = None) -> None:
        """Put events in the inbox and move the journeys' clock. Hold the warehouse lock, or give
        ``warehouse`` (:attr:`locked`)."""
        newest = max(e.at for e in events)
        self.newest = newest if self.newest is None else max(self.newest, newest)
        store.note(warehouse or self.sink.warehouse, events)
        self._noted = True

    def now(self) -> datetime | None:
        """The journeys' clock: the newest event time noted, never past the wall clock."""
        return None if self.newest is None else min(self.newest, self.wall_clock())

    def after_resolve(self, force: bool = False) -> None:
        """On the OneID thread, NOT holding the warehouse lock (each statement takes it): the due
        replenishments, then a pass when events were noted since the last one or wait (for their
        person, or for the next pass of a catch-up), else at most every ``every_s``; none while a
        backlog drains. ``force`` (a graceful stop): both now; what one pass leaves stays in the
        inbox for the next start."""
        with self._passing:
            self._after_resolve(force)

    def _after_resolve(self, force: bool) -> None:
        if self.replenishments is not None and (force or self.replenishments.due()):
            try:
                due = self.replenishments.evaluate()
            except Exception:  # noqa: BLE001 - evaluated again at the next turn
                self.errors += 1
                log.exception("journeys: replenishments not evaluated (retried at the next turn)")
                due = []
            if due:
                self._note(due, self.locked)
        waiting = self.last is not None and (self.last.waiting > 0 or self.last.more)
        if not force and (not self.keeping_up or self.clock() < self._resume_at
                          or (not (self._noted or waiting) and self.clock() - self._last < self.every_s)):
            self.owed = True  # a backlog drains, a catch-up pauses, or nothing new came: made later
            return
        now = self.now()
        if now is None:
            return
        began = self._last = self.clock()
        self.owed = False
        if self._joins_owed > 0:
            self._note_joined()
        self._noted = False
        try:
            self.last = self.runner.tick(now, self.pass_events)
            self.ticks += 1
            if self.last.more:  # a backlog to catch up on: the next pass after a pause as long as this one
                self.owed = True  # while batches come (ingestion's share); at once when the stream is quiet
                self._resume_at = self.clock() + (self.clock() - began if self.clock() - self._batch_at <= QUIET_S else 0.0)
            queued = actions(store.undelivered(self.locked, among=self.last.allowed if self._outbox_read else None))
            self._outbox_read = True
        except Exception:  # noqa: BLE001 - the inbox keeps the events; the next pass retries
            self.errors += 1
            self._noted = True
            self._outbox_read = False  # what the failed pass allowed is found by reading the whole outbox
            present_forget(self.sink.warehouse)  # a table it read may be gone: look again
            log.exception("journeys: pass failed (ingestion continues; retried at the next pass)")
            return
        with self._lock:
            for action in queued:
                if action.action_id not in self._handed:
                    self._pending.setdefault(action.action_id, action)

    def _note_joined(self) -> None:
        """Note the ``neighbour_joined`` of the first orders ingested (and resolved) up to now."""
        now = self.wall_clock()
        since = (self._joined_to or now) - JOINED_LOOKBACK
        try:
            joined = neighbours_joined(self.locked, since, now, by="_ingested_at")
        except Exception:  # noqa: BLE001 - read again (with the lookback) before the next pass
            self.errors += 1
            log.exception("journeys: neighbour_joined not read (retried before the next pass)")
            return
        if joined:
            self._note(joined, self.locked)
        self._joined_to = now
        self._joins_owed -= 1

    @property
    def keeping_up(self) -> bool:
        """The stream keeps up: its last batch was gathered by time and its events are recent, or
        no batch came for ``QUIET_S`` more than the backlog's batches took (a drained backlog, a
        quiet stream)."""
        return not self._behind or self.clock() - self._batch_at > QUIET_S + self._backlog_gap

    @property
    def catch_up_due(self) -> bool:
        """A pass is owed and may be made now: the stream keeps up, and either a catch-up's pause
        is over or ``every_s`` passed (read without the warehouse lock)."""
        if not (self.owed and self.keeping_up):
            return False
        if self.last is not None and self.last.more:
            return self.clock() >= self._resume_at
        return self.clock() - self._last >= self.every_s

    def catch_up(self) -> None:
        """Not holding the warehouse lock: the pass a resolution was owed, once :attr:`catch_up_due`
        (a quiet stream has no later resolution to make it)."""
        if self.owed:
            self.after_resolve()

    async def in_background(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run a pass (:meth:`catch_up`, :meth:`after_resolve`) off the event loop, not holding the
        warehouse lock (its statements take it)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, func, *args)

    @property
    def caught_up(self) -> bool:
        """Every event noted had its pass: no pass is owed and the last one left nothing for the
        next (events still waiting for their person aside). Read without the lock: for the status file."""
        return not (self.owed or self._noted or (self.last is not None and self.last.more))

    @property
    def queued(self) -> bool:
        """Sends wait for :meth:`drain` (read without the lock: a hint for the publisher)."""
        return bool(self._pending)

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
    from aiokafka import AIOKafkaProducer

    from lastmile.streaming.topics import ACTIONS_TOPIC

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=int(timeout_s * 1000))
    await asyncio.wait_for(producer.start(), timeout_s)
    try:
        sent = [await producer.send(ACTIONS_TOPIC, key=a.key(), value=a.to_json()) for a in sends]
        await asyncio.wait_for(asyncio.gather(*sent), timeout_s)
    finally:
        await producer.stop()
