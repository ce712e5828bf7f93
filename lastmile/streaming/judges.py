"""Judging batches in other processes: validation, mapping and hashing off the worker's GIL.

Judging an event (contract check, row mapping, identifier hashing, identity evidence) is
pure Python, ~40 µs of CPU per event here: in the worker's own process it shares one GIL
with the Kafka client, the handlers and the commit, which caps a worker well below 20,000
events/s however many cores it has. :class:`ProcessJudges` runs the same
:class:`~lastmile.ingest.Ingestor` in ``processes`` child processes instead; the worker
only ships records out and ``Batch`` objects (already-serialised rows) back.

Records are split by topic partition (a partition never straddles two chunks, so keyed
order and per-partition positions are kept), judged in parallel, and merged back in chunk
order. Each child builds its ``Ingestor`` from the same settings, hash key and
suppression list as the worker, so a batch is judged exactly as it would be in-process.

Children are started with ``spawn`` (the worker holds threads and an open chDB warehouse,
which must not be forked). A child exits within a second of its worker dying, even by
SIGKILL (it watches its parent; the pool's pipes alone do not tell it).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from lastmile.config import Settings
from lastmile.ingest import Batch, Ingestor
from lastmile.privacy import Identifiers
from lastmile.streaming.sink import Record, merge_into, source_name

_ingestor: Ingestor | None = None
_forgotten_version = 0


def _init(cfg: Settings, forgotten: frozenset[str]) -> None:
    global _ingestor
    _ingestor = Ingestor(Identifiers(cfg, forgotten=forgotten))
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="lastmile-judge-orphan", daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A SIGKILLed worker cannot stop its children, and they keep their pipes open: exit once orphaned."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


#: What crosses to a judge process: per topic partition, its records as two columns.
#: (Plain lists of ints and bytes pickle at memory speed; a ``Record`` named tuple costs a
#: Python-level ``__getnewargs__`` call each way.)
Partition = tuple[str, int, list[int], list[bytes]]


def _judge(partitions: list[Partition], forgotten: tuple[int, str] = (0, "")) -> Batch:
    """Judge a chunk; ``forgotten`` is ``(version, file)`` of the worker's current suppression list."""
    global _forgotten_version
    assert _ingestor is not None, "judge process not initialised"
    version, path = forgotten
    if version != _forgotten_version:
        _ingestor.identifiers.set_forgotten(frozenset(Path(path).read_text().split()))
        _forgotten_version = version
    merged = Batch()
    for topic, partition, offsets, values in partitions:
        merge_into(merged, _ingestor.process(source_name(topic, partition), zip(offsets, values)))
    return merged


def split_by_partition(records: Sequence[Record], parts: int) -> list[list[Partition]]:
    """At most ``parts`` chunks of similar size, each holding whole partitions as columns
    (offsets in record order); partitions keep their first-seen order within a chunk."""
    columns: dict[tuple[str, int], tuple[list[int], list[bytes]]] = {}
    for record in records:
        found = columns.get((record.topic, record.partition))
        if found is None:
            found = columns[(record.topic, record.partition)] = ([], [])
        found[0].append(record.offset)
        found[1].append(record.value)
    chunks: list[list[Partition]] = [[] for _ in range(max(1, parts))]
    sizes = [0] * len(chunks)
    for (topic, partition), (offsets, values) in sorted(columns.items(), key=lambda kv: -len(kv[1][0])):
        lightest = sizes.index(min(sizes))  # largest partition first, onto the lightest chunk
        chunks[lightest].append((topic, partition, offsets, values))
        sizes[lightest] += len(offsets)
    return [chunk for chunk in chunks if chunk]


class ProcessJudges:
    """``await judges.judge(records)``: the same ``Batch`` as ``ingest_records``, computed in child processes."""

    def __init__(self, cfg: Settings, forgotten: frozenset[str], processes: int) -> None:
        self.processes = processes
        #: The suppression list the children judge with. :meth:`set_forgotten` writes a new one
        #: to a file and bumps the version every job carries; a child that sees a newer
        #: version reads the file before judging (so jobs stay small whatever the list's size).
        self.forgotten = forgotten
        self._version: tuple[int, str] = (0, "")
        self._dir = cfg.home / "stream"
        self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_init, initargs=(cfg, forgotten))

    def warm_up(self) -> None:
        """Start every child now (imports take seconds) rather than on the first batch."""
        for future in [self._pool.submit(_judge, []) for _ in range(self.processes)]:
            future.result()

    async def judge(self, records: Sequence[Record]) -> Batch:
        loop = asyncio.get_running_loop()
        parts = await asyncio.gather(*(loop.run_in_executor(self._pool, _judge, chunk, self._version)
                                       for chunk in split_by_partition(records, self.processes)))
        merged = Batch()
        for part in parts:
            merge_into(merged, part)
        return merged

    def set_forgotten(self, forgotten: frozenset[str]) -> None:
        """Judge later batches with a new suppression list (a forget request reached the warehouse)."""
        if forgotten == self.forgotten:
            return
        version = self._version[0] + 1
        path = self._dir / f"forgotten-{version}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(sorted(forgotten)))
        tmp.replace(path)
        self.forgotten, self._version = forgotten, (version, str(path))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
