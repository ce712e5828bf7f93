"""From consumed records to warehouse rows: the engine-agnostic heart of the stream.

The worker hands over a batch of Kafka records; this module judges them with the
same :class:`~lastmile.ingest.Ingestor` the Beam backfill uses, writes rows and quarantine
records in one insert per table, and then runs the batch handlers (journeys, the
quarantine topic, later OneID and Feast) on what was written. Only when all of that has
returned may the caller acknowledge the records, so an offset is never committed for an
event that is not in the warehouse.

Redelivery is harmless by construction: raw tables collapse on ``event_id`` and quarantine
records on ``(source, position, payload)``, where the source names the topic partition
and the position is the Kafka offset.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import orjson

from lastmile.ingest import Batch, Ingestor, write
from lastmile.warehouse import Warehouse


class Record(NamedTuple):
    """One consumed Kafka record (the engine's message, reduced to what ingest needs).

    A named tuple rather than a frozen dataclass: one is built per record, and a tuple is
    several times cheaper to create.
    """

    topic: str
    partition: int
    offset: int
    value: bytes
    timestamp_ms: int | None = None


def source_name(topic: str, partition: int) -> str:
    """What ``_source`` and the quarantine ``source`` say for a record: ``kafka:<topic>/<partition>``."""
    return f"kafka:{topic}/{partition}"


@dataclass
class WrittenBatch:
    """A batch after its warehouse write: the ingest outcome plus lazily parsed rows."""

    batch: Batch
    records: int
    oldest_timestamp_ms: int | None = None
    write_seconds: float = 0.0
    #: Gathered full (``batch_rows`` records) rather than by time: the consumer is draining a
    #: backlog, not keeping up with the producers (freshness is lost for these events anyway).
    full: bool = False
    _parsed: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

    def rows(self, table: str) -> list[dict[str, Any]]:
        """The written rows of a raw table as dicts (identifiers already hashed), in batch order."""
        parsed = self._parsed
        if table not in parsed:
            parsed[table] = [orjson.loads(line) for line in self.batch.rows.get(table, ())]
        return parsed[table]

    def quarantine_records(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.batch.quarantined]


#: Runs after each batch is in the warehouse and before its offsets are acknowledged.
#: Handlers must be idempotent: after a crash the same batch is handled again.
BatchHandler = Callable[[WrittenBatch], Awaitable[None]]


def ingest_records(ingestor: Ingestor, records: Sequence[Record]) -> Batch:
    """Judge records partition by partition (positions are offsets within a partition)."""
    by_source: dict[tuple[str, int], list[tuple[int, bytes]]] = {}
    for record in records:
        by_source.setdefault((record.topic, record.partition), []).append((record.offset, record.value))
    merged = Batch()
    for (topic, partition), items in by_source.items():
        merge_into(merged, ingestor.process(source_name(topic, partition), items))
    return merged


def merge_into(merged: Batch, part: Batch) -> None:
    """Add ``part`` to ``merged`` field by field (lists extend, counters add), whatever fields Batch grows."""
    for spec in fields(Batch):
        mine, theirs = getattr(merged, spec.name), getattr(part, spec.name)
        if isinstance(mine, Counter):
            mine.update(theirs)
        elif isinstance(mine, list):
            mine.extend(theirs)
        elif isinstance(mine, dict):
            for key, values in theirs.items():
                mine.setdefault(key, []).extend(values)
        elif isinstance(mine, int):
            setattr(merged, spec.name, mine + theirs)


@dataclass
class StreamStats:
    """Running counters of a worker, for logs and the benchmark."""

    batches: int = 0
    read: int = 0
    valid: int = 0
    quarantined: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, batch: Batch) -> None:
        self.batches += 1
        self.read += batch.read
        self.valid += batch.valid
        self.quarantined += batch.quarantine_count


class StatementLocked:
    """A warehouse whose every statement takes the worker's warehouse lock, for work that is
    mostly Python between statements (a journey pass: the engine, the contact rules' decisions).

    Holding the lock for a whole pass made batches wait for all of it; with this, a batch's
    write waits for one statement at most. Such work must not already hold the lock (it is not
    reentrant). Anything other than a statement (``client``, ``database``) is the warehouse's own.
    """

    def __init__(self, warehouse: Warehouse, lock: threading.Lock) -> None:
        self.warehouse = warehouse
        self.lock = lock

    def __getattr__(self, name: str) -> Any:
        return getattr(self.warehouse, name)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return self.warehouse.command(*args, **kwargs)

    def rows(self, *args: Any, **kwargs: Any) -> list[tuple]:
        with self.lock:
            return self.warehouse.rows(*args, **kwargs)

    def scalar(self, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return self.warehouse.scalar(*args, **kwargs)

    def query(self, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return self.warehouse.query(*args, **kwargs)

    def insert_rows(self, *args: Any, **kwargs: Any) -> int:
        with self.lock:
            return self.warehouse.insert_rows(*args, **kwargs)

    def tables(self) -> list[str]:
        with self.lock:
            return self.warehouse.tables()

    def count(self, *args: Any, **kwargs: Any) -> int:
        with self.lock:
            return self.warehouse.count(*args, **kwargs)


class StreamSink:
    """Judge → write → handlers, one batch at a time, in two stages that can overlap.

    :meth:`judge` (validation, mapping, hashing: Python) runs on its own thread - or in
    child processes when ``judges`` is given (:mod:`lastmile.streaming.judges`) - and
    :meth:`store` (the warehouse write, then the handlers) on the writer thread, so the
    consumer can judge batch N+1 while batch N is being inserted - chDB and the HTTP
    client release the GIL while ClickHouse parses and stores. Writes stay in order on
    the one writer thread; ``lock`` is held around every warehouse call so an HTTP server
    (``lastmile stream --serve-port``) and the OneID refresher can share the embedded
    warehouse safely. The event loop stays free to fetch and heartbeat meanwhile.
    """

    def __init__(self, warehouse: Warehouse, ingestor: Ingestor, handlers: Sequence[BatchHandler] = (),
                 lock: threading.Lock | None = None, judges: Any = None) -> None:
        self.warehouse = warehouse
        self.ingestor = ingestor
        #: Optional :class:`~lastmile.streaming.judges.ProcessJudges`: judge in child processes instead of a thread.
        self.judges = judges
        self.handlers: list[BatchHandler] = list(handlers)
        self.lock = lock or threading.Lock()
        self.stats = StreamStats()
        self._judge = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lastmile-judge")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lastmile-warehouse")

    async def run_blocking(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run a warehouse call on the writer thread, under the warehouse lock."""

        def locked() -> Any:
            with self.lock:
                return func(*args)

        return await asyncio.get_running_loop().run_in_executor(self._writer, locked)

    async def judge(self, records: Sequence[Record]) -> Batch:
        """Validate and map ``records`` (nothing is written yet)."""
        if self.judges is not None:
            return await self.judges.judge(records)
        return await asyncio.get_running_loop().run_in_executor(self._judge, ingest_records, self.ingestor, records)

    async def store(self, records: Sequence[Record], batch: Batch, full: bool = False) -> WrittenBatch:
        """Write a judged batch, then run every handler; when this returns, the records may be committed.

        ``full``: the batch was gathered full (a backlog), see :attr:`WrittenBatch.full`."""
        began = time.perf_counter()
        await self.run_blocking(write, self.warehouse, batch)
        stamps = [r.timestamp_ms for r in records if r.timestamp_ms and r.timestamp_ms > 0]
        written = WrittenBatch(batch, len(records), min(stamps) if stamps else None, time.perf_counter() - began, full)
        for handler in self.handlers:
            await handler(written)
        self.stats.add(batch)
        return written

    async def handle(self, records: Sequence[Record]) -> WrittenBatch:
        """:meth:`judge` then :meth:`store`, without overlap."""
        return await self.store(records, await self.judge(records))

    def close(self) -> None:
        if self.judges is not None:
            self.judges.close()
        self._judge.shutdown(wait=True)
        self._writer.shutdown(wait=True)
