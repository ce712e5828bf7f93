"""Publish event files to the event topics: the simulator (or a replay) as a live stream.

Lines are published in event-time order across files (a k-way merge on ``occurred_at``), so
an order reaches its topic before the claim that refers to it, as it would from real
producers. Each line goes out byte for byte as written - malformed lines included, since
the worker must quarantine them - keyed as :mod:`lastmile.streaming.topics` says.

The rate is a pacing over the whole stream (``rate=None``: as fast as the broker takes
it). Every batch is awaited before returning, so "published" means "acknowledged by the
broker".
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner

from lastmile.simulator.config import EVENT_TYPES
from lastmile.streaming.topics import ACTIONS_TOPIC, DEFAULT_PARTITIONS, QUARANTINE_TOPIC, event_topics, message_key, topic_for


@dataclass(frozen=True)
class Outgoing:
    """One line to publish: where it goes, its key, its bytes, and its event id when readable."""

    topic: str
    key: bytes | None
    value: bytes
    event_id: str | None
    occurred_at: str


@dataclass
class ProduceReport:
    """What was published; ``sent_at`` maps event ids to wall-clock send times (for freshness)."""

    published: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    sent_at: dict[str, float] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.published / self.seconds if self.seconds else 0.0


def read_event_file(path: Path, event_type: str) -> Iterator[Outgoing]:
    """The non-blank lines of one NDJSON file as :class:`Outgoing` messages, in file order."""
    topic = topic_for(event_type)
    last_time = ""
    with open(path, "rb") as handle:
        for line in handle:
            payload = line.rstrip(b"\r\n")
            if not payload.strip():
                continue
            try:
                event = orjson.loads(payload)
            except orjson.JSONDecodeError:
                event = None
            if isinstance(event, dict):
                occurred = event.get("occurred_at")
                last_time = occurred if isinstance(occurred, str) else last_time
                event_id = event.get("event_id")
                yield Outgoing(topic, message_key(event_type, event), payload,
                               event_id if isinstance(event_id, str) else None, last_time)
            else:  # malformed: travels unkeyed, next to where it stood in the file
                yield Outgoing(topic, None, payload, None, last_time)


def event_stream(events_dir: Path, event_types: Iterable[str] = EVENT_TYPES) -> Iterator[Outgoing]:
    """All event files of a directory merged on event time (each file is nearly sorted already)."""
    files = [(t, events_dir / f"{t}.jsonl") for t in event_types]
    readers = [read_event_file(p, t) for t, p in files if p.exists()]
    if not readers:
        raise FileNotFoundError(f"no event files (<event_type>.jsonl) in {events_dir}; run `lastmile simulate` first")
    return heapq.merge(*readers, key=lambda m: m.occurred_at)


async def ensure_topics(bootstrap: str, partitions: int = DEFAULT_PARTITIONS, timeout_s: float = 15.0) -> list[str]:
    """Create the event, quarantine and actions topics if missing; returns the ones created.

    On a managed cluster topics usually exist already (created by operations, with their
    own partition counts and retention); then this does nothing.
    """
    wanted = event_topics() + [QUARANTINE_TOPIC, ACTIONS_TOPIC]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            await admin.create_topics([NewTopic(t, partitions, 1) for t in missing], timeout_ms=int(timeout_s * 1000))
        return missing
    finally:
        await admin.close()


async def publish(
    bootstrap: str,
    messages: Iterable[Outgoing],
    rate: float | None = None,
    limit: int | None = None,
    record_sent: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ProduceReport:
    """Send ``messages`` at ``rate`` per second (``None``: flat out), at most ``limit`` of them.

    Messages are appended to one batch per partition and each full batch is sent as one
    request: aiokafka's per-message ``send()`` costs ~80 µs of Python here, a batch append
    a few. The partition is chosen with aiokafka's default (Java-compatible murmur2)
    partitioner, so keys land where any Kafka client would put them.
    """
    report = ProduceReport()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024, acks=1,
                                request_timeout_ms=30_000)
    await producer.start()
    partitioner = DefaultPartitioner()
    partitions: dict[str, list[int]] = {}
    chosen: dict[tuple[str, bytes], int] = {}
    open_batches: dict[tuple[str, int], Any] = {}
    in_flight: list[asyncio.Future] = []
    clock = time.perf_counter
    started = clock()
    # Under a rate, batches are flushed often enough that no message waits more than ~10 ms.
    flush_every = max(1, int(rate / 100)) if rate else 50_000

    async def flush() -> None:
        for (topic, partition), batch in open_batches.items():
            batch.close()
            in_flight.append(await producer.send_batch(batch, topic, partition=partition))
        open_batches.clear()
        await asyncio.gather(*in_flight)
        in_flight.clear()

    try:
        for message in messages:
            if limit is not None and report.published >= limit:
                break
            if rate:
                ahead = report.published / rate - (clock() - started)
                if ahead > 0.005:
                    await flush()
                    ahead = report.published / rate - (clock() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            topic = message.topic
            if topic not in partitions:
                partitions[topic] = sorted(await producer.partitions_for(topic))
            if message.key is None:
                partition = partitioner(None, partitions[topic], partitions[topic])
            else:  # keys repeat (compartments, orders); murmur2 is pure Python, so remember it
                partition = chosen.get((topic, message.key), -1)
                if partition < 0:
                    if len(chosen) > 1_000_000:
                        chosen.clear()
                    partition = chosen[(topic, message.key)] = partitioner(message.key, partitions[topic], partitions[topic])
            batch = open_batches.get((topic, partition))
            if batch is None:
                batch = open_batches[(topic, partition)] = producer.create_batch()
            if batch.append(key=message.key, value=message.value, timestamp=None) is None:
                batch.close()
                in_flight.append(await producer.send_batch(batch, topic, partition=partition))
                batch = open_batches[(topic, partition)] = producer.create_batch()
                batch.append(key=message.key, value=message.value, timestamp=None)
            if record_sent and message.event_id is not None:
                report.sent_at.setdefault(message.event_id, time.time())
            report.published += 1
            report.by_topic[topic] = report.by_topic.get(topic, 0) + 1
            if report.published % flush_every == 0:
                await flush()
                if progress:
                    progress(report.published)
        await flush()
    finally:
        await producer.stop()
    report.seconds = clock() - started
    if progress:
        progress(report.published)
    return report


def produce_files(bootstrap: str, events_dir: Path, rate: float | None = None, limit: int | None = None,
                  partitions: int = DEFAULT_PARTITIONS, record_sent: bool = False,
                  progress: Callable[[int], None] | None = None) -> ProduceReport:
    """Create the topics if needed and publish a directory of event files (blocking)."""

    async def main() -> ProduceReport:
        await ensure_topics(bootstrap, partitions)
        return await publish(bootstrap, event_stream(Path(events_dir)), rate, limit, record_sent, progress)

    return asyncio.run(main())
