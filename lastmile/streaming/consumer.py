"""Batch consumption of the event topics: fetch many records, write them, then commit.

Why not a Faust agent: a Faust stream hands records over one at a time through a queue,
an ``Event`` object, ack bookkeeping and the offset tracker - about 200 µs of Python per
record here, which capped the worker near 2,000 events/s. ClickHouse wants the opposite:
large inserts. So the event topics are read with aiokafka's ``getmany`` (which returns
whole prefetched fetch responses per partition), judged and written a batch at a time,
and committed by hand.

The guarantee is the same as before, and simpler to see: for each batch,

1. gather records until ``batch_rows`` of them or ``flush_s`` after the first one;
2. :meth:`StreamSink.handle` writes them and runs every batch handler;
3. only then commit, for each partition, the offset after the batch's last record.

Gathering and judging run ahead of step 2 by up to ``judged_ahead`` batches (see
:meth:`BatchConsumer.run`); writes, handlers and commits stay in batch order. Nothing commits on its own
(``enable_auto_commit=False``), so a committed offset always
means "everything before it is in the warehouse". A worker killed at any point re-reads
from the last commit; the ``event_id``-keyed tables absorb the replay.

Rebalances: the group is an ordinary Kafka consumer group (workers sharing ``group_id``
split the partitions). When partitions are taken away, :meth:`on_partitions_revoked` waits
for the batch being written to finish and commit, so its new owner starts after it. A batch
gathered just before a rebalance may still hold records of a partition this worker lost:
they are written (harmless, idempotent) but not committed - the new owner reads them again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, RebalanceInProgressError

from lastmile.ingest import Batch
from lastmile.streaming.sink import Record, StreamSink, WrittenBatch

log = logging.getLogger("lastmile.stream")


def commit_offsets(records: Sequence[Record]) -> dict[TopicPartition, int]:
    """Per partition, the offset to commit after ``records``: the last offset + 1."""
    last: dict[tuple[str, int], int] = {}
    for record in records:
        key = (record.topic, record.partition)
        if record.offset >= last.get(key, -1):
            last[key] = record.offset
    return {TopicPartition(topic, partition): offset + 1 for (topic, partition), offset in last.items()}


class BatchConsumer(ConsumerRebalanceListener):
    """Reads ``topics`` in batches into ``sink``; commits offsets only after the sink returned.

    ``run()`` raises if a batch cannot be written or handled, without committing it: the
    caller should exit so the process restarts and re-reads (see ``faust_worker.crash``).
    ``after_batch`` is called after each commit (status files, metrics).
    """

    def __init__(self, bootstrap: str, group_id: str, topics: Sequence[str], sink: StreamSink, *,
                 batch_rows: int = 20_000, flush_s: float = 0.5, judged_ahead: int = 2,
                 after_batch: Callable[[WrittenBatch], Awaitable[None] | None] | None = None) -> None:
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.topics = list(topics)
        self.sink = sink
        self.batch_rows = batch_rows
        self.flush_s = flush_s
        self.after_batch = after_batch
        #: Judged batches that may wait for the writer (each up to ``batch_rows`` records in memory).
        self.judged_ahead = max(1, judged_ahead)
        self.committed_batches = 0
        self.first_record_at: float | None = None  # wall clock, for throughput figures
        self._consumer: AIOKafkaConsumer | None = None
        self._busy = asyncio.Lock()  # held from a batch's write to its commit
        self._stopping = asyncio.Event()
        self._running: asyncio.Task | None = None  # the task executing run()

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.batch_rows,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            rebalance_timeout_ms=20_000,
        )
        await self._consumer.start()
        self._consumer.subscribe(self.topics, listener=self)

    async def run(self) -> None:
        """Gather → judge → (write + handlers → commit), until :meth:`stop`.

        Two loops: this one gathers batches and hands each to the judges as soon as it is
        gathered; :meth:`_write_in_order` takes the judged batches in gathering order and
        writes, handles and commits each. Up to ``judged_ahead`` batches wait between them,
        so the judges work on batch N+1 (and the consumer gathers N+2) while batch N is
        written: neither the judging processes nor the writer wait for the other's turn.
        Writes, handlers and commits keep batch order; a batch that fails stops the writer
        before anything after it is written, and ``run`` raises.
        """
        self._running = asyncio.current_task()
        judged: asyncio.Queue[tuple[list[Record], asyncio.Future[Batch]] | None] = asyncio.Queue(self.judged_ahead)
        writer = asyncio.create_task(self._write_in_order(judged))
        try:
            while not self._stopping.is_set():
                records = await self._gather()
                if writer.done():  # it ends early only on a failed batch: raise its error now
                    writer.result()
                if not records:
                    continue
                await self._until_put(judged, (records, asyncio.ensure_future(self.sink.judge(records))), writer)
            await self._until_put(judged, None, writer)
            await writer
        except BaseException:
            writer.cancel()
            while not judged.empty():  # judges of batches that will not be written
                item = judged.get_nowait()
                if item is not None:
                    item[1].cancel()
            raise

    @staticmethod
    async def _until_put(queue: asyncio.Queue, item: Any, writer: asyncio.Task) -> None:
        """Queue ``item`` for the writer; if the writer stops first (a failed batch), raise its error."""
        put = asyncio.ensure_future(queue.put(item))
        await asyncio.wait({put, writer}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            if isinstance(item, tuple):
                item[1].cancel()
            writer.result()
            raise RuntimeError("the batch writer stopped")  # pragma: no cover - writer returns only after None

    async def _write_in_order(self, judged: asyncio.Queue) -> None:
        while (item := await judged.get()) is not None:
            records, judging = item
            await self._store_and_commit(records, await judging)

    async def _store_and_commit(self, records: Sequence[Record], batch: Batch) -> None:
        async with self._busy:
            written = await self.sink.store(records, batch, full=len(records) >= self.batch_rows)
            await self._commit(records)
        if self.after_batch is not None:
            result = self.after_batch(written)
            if asyncio.iscoroutine(result):
                await result

    async def stop(self) -> None:
        """Let the batch in hand finish and commit, then leave the group."""
        self._stopping.set()
        if self._running is not None:
            await asyncio.wait({self._running})
        if self._consumer is not None:
            await self._consumer.stop()  # auto-commit is off: leaving commits nothing more

    async def _gather(self) -> list[Record]:
        """Up to ``batch_rows`` records, waiting at most ``flush_s`` after the first arrives.

        Returns an empty list after ``flush_s`` without records (so ``run`` sees a stop).
        aiokafka prefetches in the background, so during a backlog this fills at once.
        """
        assert self._consumer is not None
        loop = asyncio.get_running_loop()
        records: list[Record] = []
        deadline = loop.time() + self.flush_s
        while len(records) < self.batch_rows and not self._stopping.is_set():
            left = deadline - loop.time()
            if left <= 0:
                break
            fetched = await self._consumer.getmany(timeout_ms=max(1, int(left * 1000)),
                                                   max_records=self.batch_rows - len(records))
            if fetched and not records:
                deadline = loop.time() + self.flush_s  # the flush clock starts with the first record
                if self.first_record_at is None:
                    self.first_record_at = time.time()
            for tp, messages in fetched.items():
                records.extend(Record(tp.topic, tp.partition, m.offset, m.value, m.timestamp) for m in messages)
        return records

    async def _commit(self, records: Sequence[Record]) -> None:
        assert self._consumer is not None
        owned = self._consumer.assignment()
        offsets = {tp: offset for tp, offset in commit_offsets(records).items() if tp in owned}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
            self.committed_batches += 1
        except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as exc:
            # Lost the partitions meanwhile: the rows are written, the new owner re-reads them.
            log.warning("commit skipped after a rebalance (records will be re-read): %r", exc)

    # ConsumerRebalanceListener: aiokafka awaits these during a rebalance.
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._busy:  # the batch being written commits before its partitions go
            pass

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("assigned %d partitions", len(assigned))
