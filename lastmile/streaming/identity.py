"""OneID behind the stream: resolve new identity evidence and refresh the OneID 360, off the hot path.

Every batch the worker writes carries its identity evidence (``identity_links``, written by
the same :class:`~lastmile.ingest.Ingestor` as the Beam backfill). This module runs the
batch path's resolver over it - :func:`~lastmile.identity.store.resolve_pending`, then
:func:`~lastmile.identity.profiles.build_profiles`, which runs dbt's ``dim_customer`` and what
it reads (the one definition of the OneID 360; only once ``lastmile transform`` built the
warehouse) - with two throttles, because both cost far more than a batch (the resolver keeps
its state in memory between runs and writes only what changed, but resolves the whole graph;
a dbt run takes seconds):

* resolve at most every ``resolve_every_s`` (default 5 s) when new evidence was written -
  or every ``waiting_every_s`` (default 1 s) while someone waits for a OneID (:meth:`hurry`:
  the feature pusher holds orders of a new neighbour, whose online features cannot exist
  before their person has a OneID, and the stream keeps up: not while it drains a backlog);
* refresh the OneID 360 at most every ``profiles_every_s`` (``lastmile stream
  --profiles-seconds``, default 300 s: a refresh is a dbt run that holds the warehouse lock
  for seconds) when new rows were written (it aggregates orders, pickups, reviews and claims,
  not only identities);
* both once more on a graceful stop, so a stopped worker leaves OneID complete.

A resolution that runs without a rebuild marks profiles stale, so the next due rebuild (or
the one on stop) always follows the latest resolution.

The work runs on its own thread, taking the warehouse lock for each warehouse step (chDB
allows one writer per process; the lock also serialises it with the batch writes, which the
resolver's "evidence ingested since" watermark relies on). A resolution releases it while
it computes, between reading the new evidence and writing what changed, so batches are
written meanwhile; a OneID 360 refresh (a dbt run) holds it throughout. The consumer does not wait for
it: a batch is committed once written, whether or not it has been resolved yet. That is
safe because the evidence itself is in the warehouse: whatever was written and not yet
resolved - even across a crash - is picked up by the next resolution, here or in
``lastmile ingest``. OneID therefore lags the raw tables by up to ``resolve_every_s`` plus
one resolution; profiles by up to ``profiles_every_s`` plus one rebuild.

A failed resolution is logged and counted (``identity_errors`` in the status file) and
retried at the next turn; it never stops ingestion.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from lastmile.config import Settings, settings
from lastmile.identity.profiles import build_profiles
from lastmile.identity.store import KeptState, resolve_pending
from lastmile.privacy import Identifiers
from lastmile.streaming.sink import BatchHandler, WrittenBatch
from lastmile.warehouse import Warehouse

log = logging.getLogger("lastmile.stream.identity")


@dataclass
class IdentityStats:
    """Counters for the status file."""

    resolves: int = 0
    profile_builds: int = 0
    profiles: int = 0
    errors: int = 0
    last_run: int = 0  # identity_runs.run of the latest resolution
    last_resolve_s: float = 0.0
    last_steps: dict[str, float] = field(default_factory=dict)  # seconds per step of the latest resolution
    last_profiles_s: float = 0.0


class IdentityRefresher:
    """Keeps OneID and the OneID 360 (``dim_customer``) current behind the stream (see the module docstring).

    ``resolve_every_s <= 0`` turns the whole thing off (profiles need OneIDs);
    ``profiles_every_s <= 0`` resolves but never rebuilds profiles.
    """

    def __init__(self, warehouse: Warehouse, lock: threading.Lock, identifiers: Identifiers, *,
                 resolve_every_s: float = 5.0, profiles_every_s: float = 30.0, waiting_every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, cfg: Settings | None = None) -> None:
        self.cfg = cfg or settings()  # whose OneID 360 a refresh runs dbt for
        self.warehouse = warehouse
        self.lock = lock
        self.rules = identifiers.rules
        self.blocked = self.rules.blocked_tokens(identifiers.hasher)
        self.resolve_every_s = resolve_every_s
        self.profiles_every_s = profiles_every_s if resolve_every_s > 0 else 0.0
        #: The interval while someone waits for a OneID (never longer than ``resolve_every_s``).
        self.waiting_every_s = min(waiting_every_s, resolve_every_s) if waiting_every_s > 0 else resolve_every_s
        self._waiting = False  # hurry() was called since the running/last resolution began
        self.clock = clock
        self.stats = IdentityStats()
        self._links_pending = False  # evidence written since the running/last resolution began
        self._rows_pending = False  # rows written since the running/last profiles build began
        self._last_resolve = self._last_profiles = float("-inf")
        self._running: Future | None = None
        self._closing = False  # set by close(): the timer must not start a refresh behind its back
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lastmile-identity")
        #: The resolver between runs: a run reads the new evidence and writes what changed,
        #: instead of reloading and rewriting the whole state every few seconds.
        self.kept = KeptState()
        #: Called after each resolution, on the identity thread, still holding the warehouse
        #: lock (e.g. the feature pusher re-reading the token -> OneID map).
        self.after_resolve: list[Callable[[], None]] = []
        #: Called after each resolution on the identity thread once the warehouse lock is let go
        #: (the journeys' pass: mostly Python, each of its statements takes the lock itself).
        self.after_release: list[Callable[[], None]] = []

    @property
    def enabled(self) -> bool:
        return self.resolve_every_s > 0

    def handler(self) -> BatchHandler:
        """The batch handler: note what the batch wrote and start a refresh if one is due. Never waits."""

        async def handle(written: WrittenBatch) -> None:
            self.note(written)
            self.tick()

        return handle

    def note(self, written: WrittenBatch) -> None:
        self._links_pending |= bool(written.batch.links)
        self._rows_pending |= written.batch.valid > 0

    def hurry(self) -> None:
        """Someone waits for the next resolution (orders of a person without a OneID yet):
        resolve after ``waiting_every_s`` instead of ``resolve_every_s``. Any thread."""
        self._waiting = True

    def due(self) -> tuple[bool, bool]:
        """``(resolve, profiles)``: which steps a refresh started now would run."""
        if not self.enabled:
            return False, False
        now = self.clock()
        every = self.waiting_every_s if self._waiting else self.resolve_every_s
        resolve = self._links_pending and now - self._last_resolve >= every
        profiles = (self.profiles_every_s > 0 and self._rows_pending
                    and now - self._last_profiles >= self.profiles_every_s)
        return resolve, profiles

    def tick(self) -> bool:
        """Start a background refresh if one is due and none runs; returns whether it started.

        Called after each batch and from a timer (so evidence is resolved when the stream
        goes quiet too).
        """
        if self._closing or (self._running is not None and not self._running.done()):
            return False
        resolve, profiles = self.due()
        if not (resolve or profiles):
            return False
        self._running = self._start(resolve, profiles)
        return True

    def _start(self, resolve: bool, profiles: bool) -> Future:
        now = self.clock()
        # Cleared before the work starts: anything written meanwhile sets them again.
        if resolve:
            self._links_pending, self._waiting, self._last_resolve = False, False, now
        if profiles:
            self._rows_pending, self._last_profiles = False, now
        return self._pool.submit(self._refresh, resolve, profiles)

    def _refresh(self, resolve: bool, profiles: bool) -> None:
        """On the identity thread: each step holds the warehouse lock; batch writes wait in between."""
        try:
            if resolve:
                began = time.perf_counter()
                # The lock is held for the resolution's warehouse steps only, not while it computes.
                outcome = resolve_pending(self.warehouse, self.rules, self.blocked, self.kept, lock=self.lock)
                handed = time.perf_counter()
                with self.lock:
                    for callback in self.after_resolve:
                        callback()
                for callback in self.after_release:
                    callback()
                outcome.steps["callbacks"] = round(time.perf_counter() - handed, 4)
                self.stats.resolves += 1
                self.stats.last_run = outcome.run
                if not profiles:
                    self._rows_pending = True  # OneIDs moved: profiles are stale until the next rebuild
                self.stats.last_resolve_s = time.perf_counter() - began
                self.stats.last_steps = outcome.steps
                log.info("OneID run %d: %d links added, %d profiles, %.2f s %s", outcome.run, outcome.links_added,
                         outcome.report.profiles, self.stats.last_resolve_s, outcome.steps)
            if profiles:
                began = time.perf_counter()
                with self.lock:
                    if self.stats.resolves == 0 and "event_oneid" not in self.warehouse.tables():
                        return  # nothing resolved yet anywhere: no OneIDs to build profiles on
                    self.stats.profiles = build_profiles(self.cfg)
                self.stats.profile_builds += 1
                self.stats.last_profiles_s = time.perf_counter() - began
        except Exception:  # noqa: BLE001 - evidence stays in the warehouse; the next turn retries
            self.stats.errors += 1
            self._links_pending |= resolve
            self._rows_pending |= profiles
            log.exception("OneID refresh failed (ingestion continues; retried at the next turn)")

    async def close(self) -> None:
        """On a graceful stop: wait for a running refresh, then resolve and rebuild what is pending."""
        loop = asyncio.get_running_loop()
        self._closing = True
        if self._running is not None:
            await asyncio.wrap_future(self._running, loop=loop)
        if self.enabled and (self._links_pending or self._rows_pending):
            # A resolution on the way out moves OneIDs, so profiles follow it even when no
            # rows are pending (a profiles-only rebuild may have taken them since).
            resolve = self._links_pending
            profiles = (self._rows_pending or resolve) and self.profiles_every_s > 0
            await asyncio.wrap_future(self._start(resolve, profiles), loop=loop)
        self._pool.shutdown(wait=True)
