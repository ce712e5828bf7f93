"""Fresh features from the stream: today's counters pushed to Feast's online store.

After each batch is in the warehouse, its orders update :class:`~lastmile.features.realtime.TodayCounters`
and the customers whose counters changed are pushed through the feature repo's push source
(``customer_realtime_push``, :class:`lastmile.features.push.RealtimePush`): online through
Feast before the batch is committed, then offline into ``feat_customer_realtime`` (so
training sees what serving saw) on a thread of its own.

OneID runs behind the stream (:mod:`lastmile.streaming.identity`): after each resolution
the refresher hands over the new token -> OneID map; orders that were waiting for a OneID
are counted then, and merged customers are pushed once with their combined counters.

Restarts: the counters are seeded from the warehouse's orders of its newest business days,
so a replayed batch (at-least-once delivery) finds its orders already counted and
pushes the same values again - harmless, the push overwrites.

Freshness: each pushed order's lag is the time from its batch's oldest Kafka timestamp
(the producer's send time) to the end of the online write (``_pushed_at``) - an upper
bound per order.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from lastmile.config import Settings, settings
from lastmile.features.push import RealtimePush
from lastmile.features.realtime import KEEP_DAYS, OrderFact, TodayCounters, order_fact
from lastmile.streaming.seen import person_columns
from lastmile.streaming.sink import BatchHandler, WrittenBatch
from lastmile.warehouse import Warehouse

log = logging.getLogger("lastmile.stream.features")


@dataclass
class FeatureStats:
    pushes: int = 0
    rows: int = 0
    errors: int = 0
    lags_s: deque = field(default_factory=lambda: deque(maxlen=20_000))

    def freshness(self) -> dict[str, float | None]:
        if not self.lags_s:
            return {"p50_s": None, "p95_s": None}
        lags = np.fromiter(self.lags_s, dtype=float)
        return {"p50_s": round(float(np.percentile(lags, 50)), 3), "p95_s": round(float(np.percentile(lags, 95)), 3)}


def buyer_columns(strength: Mapping[str, int]) -> tuple[str, ...]:
    """raw_order's buyer identifier columns, strongest identifier type first (the OneID rules'
    ``strength``, as the ``event_oneid`` view ranks them)."""
    person = person_columns()["raw_order"]
    return tuple(column for column, id_type in sorted(person.columns, key=lambda c: -int(strength.get(c[1], 0))))


class FeaturePusher:
    """Keeps :class:`TodayCounters` from written batches and OneID runs, and pushes what changed."""

    def __init__(self, cfg: Settings, warehouse: Warehouse, lock: threading.Lock, strength: Mapping[str, int],
                 target: RealtimePush | None = None) -> None:
        self.warehouse = warehouse
        self.lock = lock  # the warehouse lock (chDB: one writer per process)
        self.target = target or RealtimePush(cfg, warehouse, lock)
        self.columns = buyer_columns(strength)
        self.stats = FeatureStats()
        self._state_lock = threading.Lock()  # counters are touched by the batch path and the OneID thread
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lastmile-features")  # pushes stay in order
        # The offline copy waits for the warehouse lock (a OneID run may hold it for seconds):
        # on its own thread, in order, so it never delays the online push or the batch commit.
        self._offline = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lastmile-features-offline")
        self._dirty: set[str] = set()  # customers whose last push failed: retried with the next one
        self._identity_run = 0  # identity_nodes rows up to this run are in the counters' map
        #: Called (any thread) while orders wait for a OneID: the OneID refresher's ``hurry``.
        #: Only while the stream keeps up: draining a backlog (full batches), an early
        #: resolution cannot make those orders fresh, and resolving every 5 s costs far less.
        self.on_waiting: Callable[[], None] | None = None
        self._keeping_up = True  # the last batch was gathered by time, not full
        with lock:
            self.impulse_skus = self.target.impulse_skus()
            self.counters = TodayCounters()
            self.counters.add(self._recent_orders())
            changes = self._identity_changes()
        self._push(self.counters.update_identities(changes), [])

    def handler(self) -> BatchHandler:
        """The batch handler: count the batch's orders and push the changed customers (before the commit)."""

        async def handle(written: WrittenBatch) -> None:
            self._keeping_up = not written.full
            facts = [order_fact(row, self.columns, self.impulse_skus, written.oldest_timestamp_ms)
                     for row in written.rows("raw_order")]
            if not facts:
                return
            with self._state_lock:
                touched = self.counters.add(facts)
                counted = list(self.counters.counted)
                waiting = self.counters.unresolved
            self._hurry_oneid(waiting)  # a new neighbour's orders: their features wait for a OneID
            if touched:
                await asyncio.get_running_loop().run_in_executor(self._pool, self._push, touched, counted)

        return handle

    def on_resolved(self) -> None:
        """Called by the OneID refresher after a resolution (on its thread, holding the warehouse lock)."""
        changes = self._identity_changes()
        with self._state_lock:
            touched = self.counters.update_identities(changes)
            counted = list(self.counters.counted)
            waiting = self.counters.unresolved
        self._hurry_oneid(waiting)  # evidence written while this run read: the next one names them
        if touched:
            self._pool.submit(self._push, touched, counted)

    def _hurry_oneid(self, waiting: int) -> None:
        """Ask for an early resolution when orders wait for a OneID and the stream keeps up."""
        if waiting and self._keeping_up and self.on_waiting is not None:
            self.on_waiting()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._offline.shutdown(wait=True)

    def _push(self, oneids: set[str], counted: list[OrderFact]) -> None:
        """Push ``oneids``' counters (on the push thread). A failure is logged and counted, never
        stops ingestion: the customers are pushed again with the next push (the counters are
        recomputed from the kept orders, so nothing is lost meanwhile)."""
        with self._state_lock:
            oneids = oneids | self._dirty
            frame = self.counters.frame(oneids)
        if frame.empty:
            return
        try:
            pushed = self.target.push_online(frame)
        except Exception:  # noqa: BLE001 - the online store may be down; the warehouse write stands
            self.stats.errors += 1
            with self._state_lock:
                self._dirty |= oneids
            log.exception("feature push of %d customers failed (retried with the next push)", len(frame))
            return
        with self._state_lock:
            self._dirty -= oneids
        self._offline.submit(self._write_offline, pushed)
        done_ms = pushed["_pushed_at"].iloc[0].value / 1e6
        self.stats.pushes += 1
        self.stats.rows += len(frame)
        self.stats.lags_s.extend((done_ms - f.produced_ms) / 1000 for f in counted if f.produced_ms)

    def _write_offline(self, pushed) -> None:
        try:
            self.target.write_offline(pushed)
        except Exception:  # noqa: BLE001 - the online store has the values; the next push rewrites the row
            self.stats.errors += 1
            log.exception("offline copy of %d pushed rows failed", len(pushed))

    def _identity_changes(self) -> dict[str, tuple[str, bool]]:
        """Identifiers whose OneID changed since the last call (``identity_nodes`` is versioned by run).

        Without ``FINAL``: a node's versions are its rows by run, so its newest row after the
        last call is its newest row, and ``argMax`` over the few rows written since reads what
        ``FINAL`` would, without merging the whole table on every resolution.
        """
        if "identity_nodes" not in self.warehouse.tables():
            return {}
        rows = self.warehouse.rows("SELECT token, argMax(oneid, run), argMax(shared, run), max(run) FROM identity_nodes "
                                   "WHERE run > {r:UInt64} GROUP BY token", {"r": self._identity_run})
        if rows:
            self._identity_run = max(int(r[3]) for r in rows)
        return {token: (oneid, bool(shared)) for token, oneid, shared, _ in rows}

    def _recent_orders(self) -> list[OrderFact]:
        """The warehouse's orders of its newest :data:`KEEP_DAYS` business days: the state a
        restart resumes from, so a replayed batch finds its orders already counted."""
        if "raw_order" not in self.warehouse.tables():
            return []
        tz = settings().business_tz
        rows = self.warehouse.rows(f"""
            SELECT event_id, toUnixTimestamp64Milli(occurred_at), toFloat64(total_amount),
                   arraySum(i -> if(i.1 IN {{impulse:Array(String)}}, i.3 * toFloat64(i.4), 0), items),
                   [{", ".join(f"ifNull({c}, '')" for c in self.columns)}]
            FROM raw_order FINAL
            WHERE toDate(occurred_at, '{tz}') > (SELECT toDate(max(occurred_at), '{tz}') FROM raw_order) - {KEEP_DAYS}
            """, {"impulse": sorted(self.impulse_skus)})
        return [OrderFact(event_id, tuple(t for t in tokens if t), int(at_ms), spend, round(float(impulse), 2))
                for event_id, at_ms, spend, impulse, tokens in rows]
