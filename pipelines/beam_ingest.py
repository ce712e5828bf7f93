"""Ingest and backfill on Apache Beam: event files → contracts → ClickHouse, bad events → quarantine.

The story of one run:

1. ``MatchFiles`` finds the newline-delimited JSON files (one per event type, any number of
   days or shards; gzip works too).
2. ``ReadEventChunks`` reads each file as blocks of whole lines (a few MiB), remembering the
   first line's number so a quarantined event can be traced back to where it came from.
3. ``ValidateAndMap`` judges every line against its contract (``lastmile.ingest``): valid
   events become raw-table rows with direct identifiers already hashed; the rest become
   quarantine records with the reason. Nothing is dropped: read = valid + quarantined.
4. ``WriteToWarehouse`` inserts each chunk's rows in one large block, with the chunk's
   identity evidence (which hashed identifiers were seen together). Raw tables are
   ReplacingMergeTrees keyed on ``event_id``, so re-running over the same files, or files
   that overlap, never double-counts.
5. Once every chunk is written, ``ResolveIdentities`` folds the new evidence into the OneID
   graph kept in the warehouse (``lastmile.identity.store``): profiles merge under the
   rules in ``lastmile/identity/rules.toml``, whatever order the files came in.

Beam counters (``lastmile.ingest``: read, valid, quarantined, written, links) tell what
happened.

The runner is an ordinary pipeline option: DirectRunner here, ``--runner FlinkRunner`` or
``DataflowRunner`` at scale with a ClickHouse server (``LASTMILE_CLICKHOUSE_URL``). With the
embedded warehouse (chDB, one process per data directory) the pipeline runs in-process.

Why blocks of bytes rather than ``ReadFromText``: the Python SDK's cost is per element, and
at tens of thousands of events a second that overhead is the budget. A chunk is one element
(bytes in, one insert block per table out), so per-event work happens only inside
validation. A file is still the unit of parallelism, so at scale shard the input into many
files.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from lastmile.config import Settings, settings as current_settings
from lastmile.identity.forget import forgotten_tokens
from lastmile.identity.rules import Rules
from lastmile.identity.store import ResolveOutcome, resolve_pending
from lastmile.ingest import IngestPool, Ingestor, PackedBatch, process_block, worker_count, write
from lastmile.privacy import Identifiers
from lastmile.warehouse import connect, migrate

NAMESPACE = "lastmile.ingest"


@dataclass(frozen=True)
class EventChunk:
    """A run of whole lines of one file: ``block`` starts at line ``first_line`` of ``source``."""

    source: str
    first_line: int
    block: bytes


class ReadEventChunks(beam.DoFn):
    """A matched file → :class:`EventChunk` blocks of about ``chunk_bytes``, cut at line ends.

    Only bytes move here: the lines are split and numbered by whoever judges the chunk, so
    the reading step costs a memory copy and a newline count per chunk, not a Python object
    per event.
    """

    def __init__(self, root: str, chunk_bytes: int) -> None:
        self.root = root
        self.chunk_bytes = chunk_bytes

    def process(self, readable: fileio.ReadableFile) -> Iterator[EventChunk]:
        path = readable.metadata.path
        source = str(Path(path).relative_to(self.root)) if path.startswith(self.root) else path
        first_line, rest = 1, b""
        with readable.open() as handle:
            while data := handle.read(self.chunk_bytes):
                data = rest + data if rest else data
                cut = data.rfind(b"\n") + 1
                if not cut:  # one line longer than a chunk: read on to its end
                    rest = data
                    continue
                block, rest = data[:cut], data[cut:]
                yield EventChunk(source, first_line, block)
                first_line += block.count(b"\n")
        if rest:
            yield EventChunk(source, first_line, rest)  # a last line without its newline


class ValidateAndMap(beam.DoFn):
    """Judge each line of a chunk against its contract; rows for the valid, reasons for the rest.

    With ``workers`` > 1 the judging runs on local worker processes (``IngestPool``), a few
    chunks in flight, results in order; the bundle completes only when all are back.
    """

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self.read = Metrics.counter(NAMESPACE, "read")
        self.valid = Metrics.counter(NAMESPACE, "valid")
        self.quarantined = Metrics.counter(NAMESPACE, "quarantined")

    def setup(self) -> None:
        cfg = current_settings()
        forgotten = forgotten_tokens(connect(cfg))
        self.pool = IngestPool(cfg, forgotten, self.workers) if self.workers > 1 else None
        self.ingestor = Ingestor(Identifiers(cfg, forgotten=forgotten))

    def start_bundle(self) -> None:
        self.in_flight: deque[Future[PackedBatch]] = deque()

    def _counted(self, batch: PackedBatch) -> PackedBatch:
        self.read.inc(batch.read)
        self.valid.inc(batch.valid)
        self.quarantined.inc(batch.quarantine_count)
        for reason, count in batch.reasons.items():
            Metrics.counter(NAMESPACE, f"quarantined.{reason}").inc(count)
        return batch

    def process(self, chunk: EventChunk) -> Iterator[PackedBatch]:
        if self.pool is None:
            yield self._counted(process_block(self.ingestor, chunk.source, chunk.first_line, chunk.block))
            return
        self.in_flight.append(self.pool.submit(chunk.source, chunk.first_line, chunk.block))
        while len(self.in_flight) > 2 * self.workers:
            yield self._counted(self.in_flight.popleft().result())

    def finish_bundle(self) -> Iterator[WindowedValue]:
        while self.in_flight:
            yield WindowedValue(self._counted(self.in_flight.popleft().result()), MIN_TIMESTAMP, [GlobalWindow()])

    def teardown(self) -> None:
        if self.pool is not None:
            self.pool.close()


class WriteToWarehouse(beam.DoFn):
    """Insert a batch's rows (one block per table), its quarantine records and identity evidence.

    Inserts run on a background thread: ClickHouse releases the GIL while it parses a block,
    so the next chunk is validated on one core while the last one is written on the other.
    At most two batches wait in flight (bounded memory), and a bundle completes only once all
    its writes have landed, so Beam's retry semantics hold.
    """

    MAX_IN_FLIGHT = 2

    def __init__(self) -> None:
        self.written = Metrics.counter(NAMESPACE, "written")
        self.links = Metrics.counter(NAMESPACE, "links")
        #: Rows judged valid that the warehouse refused; ``write`` quarantined them instead.
        self.refused = Metrics.counter(NAMESPACE, "refused")

    def setup(self) -> None:
        self.warehouse = connect(current_settings())
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lastmile-writer")

    def start_bundle(self) -> None:
        self.in_flight: deque[tuple[Future[int], PackedBatch, int]] = deque()

    def _landed(self) -> int:
        future, batch, judged_quarantined = self.in_flight.popleft()
        written = future.result()  # re-raises a failed insert here, failing the bundle
        self.written.inc(written)
        self.links.inc(batch.link_count)
        self.refused.inc(batch.quarantine_count - judged_quarantined)
        return written

    def process(self, batch: PackedBatch) -> Iterator[int]:
        self.in_flight.append((self.pool.submit(write, self.warehouse, batch), batch, batch.quarantine_count))
        while len(self.in_flight) > self.MAX_IN_FLIGHT:
            yield self._landed()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        while self.in_flight:
            yield WindowedValue(self._landed(), MIN_TIMESTAMP, [GlobalWindow()])

    def teardown(self) -> None:
        self.pool.shutdown(wait=True)


class ResolveIdentities(beam.DoFn):
    """After the last write: resolve the new identity evidence into OneID profiles.

    Its input is the global sum of rows written, so it runs once, after every chunk is in
    the warehouse. Resolution is one graph computation (vectorised, millions of links per
    second), not a per-element step: at scale it runs on one worker.
    """

    def setup(self) -> None:
        self.warehouse = connect(current_settings())

    def process(self, rows_written: int) -> Iterator[ResolveOutcome]:
        rules = Rules.load()
        identifiers = Identifiers(current_settings(), rules)
        outcome = resolve_pending(self.warehouse, rules, rules.blocked_tokens(identifiers.hasher))
        Metrics.counter(NAMESPACE, "profiles").inc(outcome.report.profiles)
        yield outcome


def build(pipeline: beam.Pipeline, root: str, pattern: str, chunk_bytes: int, workers: int = 1) -> None:
    """Wire the ingest transforms onto ``pipeline``."""
    (
        pipeline
        | "MatchFiles" >> fileio.MatchFiles(str(Path(root) / pattern))
        | "ReadMatches" >> fileio.ReadMatches()
        | "ReadEventChunks" >> beam.ParDo(ReadEventChunks(root, chunk_bytes))
        | "ValidateAndMap" >> beam.ParDo(ValidateAndMap(workers))
        | "WriteToWarehouse" >> beam.ParDo(WriteToWarehouse())
        | "AllWritten" >> beam.CombineGlobally(sum)
        | "ResolveIdentities" >> beam.ParDo(ResolveIdentities())
    )


@dataclass
class IngestReport:
    """Counters of one ingest run; ``read == valid + quarantined`` always holds."""

    read: int = 0
    valid: int = 0
    quarantined: int = 0
    written: int = 0
    links: int = 0
    profiles: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.read / self.seconds if self.seconds else 0.0


def pipeline_options(cfg: Settings, extra: list[str] | None = None) -> PipelineOptions:
    """Runner and its options. Embedded chDB is single-process, so the DirectRunner stays in-process."""
    args = [f"--runner={cfg.beam_runner}"] + list(extra or [])
    if cfg.embedded and cfg.beam_runner == "DirectRunner":
        args += ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
    return PipelineOptions(args)


def run(events_dir: Path, pattern: str = "*.jsonl", cfg: Settings | None = None, beam_args: list[str] | None = None) -> IngestReport:
    """Ingest every file matching ``pattern`` under ``events_dir``; return the counters."""
    cfg = cfg or current_settings()
    root = str(Path(events_dir).resolve())
    warehouse = connect(cfg)
    migrate(warehouse)
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    input_bytes = sum(p.stat().st_size for p in Path(root).glob(pattern) if p.is_file())
    workers = worker_count(cfg.ingest_workers, input_bytes)
    with beam.Pipeline(options=pipeline_options(cfg, beam_args)) as pipeline:
        build(pipeline, root, pattern, cfg.ingest_chunk_bytes, workers)
    result = pipeline.result
    report = IngestReport(seconds=time.perf_counter() - clock)
    refused = 0
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        name, value = counter.key.metric.name, counter.committed or counter.attempted or 0
        if name.startswith("quarantined."):
            report.reasons[name.split(".", 1)[1]] = value
        elif name == "refused":
            refused = value
        elif hasattr(report, name):
            setattr(report, name, value)
    if refused:  # judged valid, refused by the warehouse, quarantined with its reason
        report.valid -= refused
        report.quarantined += refused
        report.reasons["warehouse_refused"] = report.reasons.get("warehouse_refused", 0) + refused
    warehouse.insert_rows(
        "ingest_runs",
        [(uuid.uuid4().hex, "beam", started, datetime.now(timezone.utc), [root + "/" + pattern],
          report.read, report.valid, report.quarantined, report.written)],
        ["run_id", "pipeline", "started_at", "finished_at", "sources", "read", "valid", "quarantined", "written"],
    )
    return report
