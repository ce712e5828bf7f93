"""Cold-chain telemetry on Apache Flink (PyFlink): windows, excursions, silences → incidents, claims.

The story of one run:

1. Flink reads locker telemetry — ``$LASTMILE_HOME/events/locker_telemetry.jsonl`` here, the
   Kafka topic ``lastmile.locker_telemetry`` in production — in event time. The watermark
   trails the newest reading by the out-of-orderness plus the allowed lateness, so every
   reading within that tolerance counts; readings behind it, readings missing a field and
   readings from the future (a locker clock years ahead would drag the watermark along) go
   to the late table with the reason. Malformed lines are skipped by the json format (the
   Beam ingest quarantines them with a reason) and counted here as ``skipped``.
2. All in Flink SQL, no Python per reading (``lastmile.coldchain.sql``): 1- and 5-minute
   tumbling aggregates per compartment, excursions with MATCH_RECOGNIZE (out of the product
   class's range for at least ``excursion_min_minutes``; shorter door-open spikes never
   count), and silences (no reading for longer than ``silence_after_s``).
3. Flink writes NDJSON files; this driver process, the only one that may open the embedded
   chDB warehouse, loads them (``lastmile.coldchain.load``) into ReplacingMergeTrees keyed
   by what each row describes, so re-running leaves the same rows.
4. Each excursion is linked to the orders that sat in its compartment during it (raw_order,
   raw_pickup) → ``cold_chain_incidents``; standard temperature claims are approved with a
   compensation and a reason, and a customer's own temperature claim is matched, not
   duplicated → ``claim_decisions``.

With Kafka (``LASTMILE_KAFKA_BOOTSTRAP`` plus a JobManager address) the same statements are
submitted to a cluster and keep running; that needs ``flink-sql-connector-kafka`` 4.0.x (the
line built for Flink 2.x) in ``kafka_jars`` or the cluster's ``lib/``, and loading is then a
separate, periodic ``load_outputs`` over the sink directory on shared storage.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lastmile.coldchain import incidents, load
from lastmile.coldchain import tables as _tables  # noqa: F401  (registers migrations 20-26)
from lastmile.coldchain.config import ColdChainConfig
from lastmile.coldchain.flink import SINKS, Cluster, FlinkRun, run_job_isolated
from lastmile.coldchain.sql import Source
from lastmile.config import Settings, settings as current_settings
from lastmile.warehouse import Warehouse, connect, migrate

TELEMETRY_FILE = "locker_telemetry.jsonl"


@dataclass
class TelemetryReport:
    """Counters of one run. ``lines == readings + duplicates + late + invalid + future + skipped`` for files."""

    readings: int = 0
    windows_1m: int = 0
    windows_5m: int = 0
    excursions: int = 0
    silences: int = 0
    incidents: int = 0
    claims_auto_approved: int = 0
    claims_matched: int = 0
    claims_review: int = 0
    late: int = 0
    invalid: int = 0
    future: int = 0
    duplicates: int = 0
    skipped: int = 0
    lines: int = 0
    seconds: float = 0.0
    jvm_start_s: float = 0.0
    flink_s: float = 0.0
    load_s: float = 0.0
    job_id: str = ""

    @property
    def readings_per_s(self) -> float:
        return self.lines / self.flink_s if self.flink_s else 0.0


def count_lines(path: Path) -> int:
    """Lines of an NDJSON file: what Flink was offered (blank or malformed ones end up skipped)."""
    count, last = 0, b"\n"
    with path.open("rb") as handle:
        while block := handle.read(64 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def load_outputs(warehouse: Warehouse, out_dir: Path, cc: ColdChainConfig, report: TelemetryReport) -> None:
    """Stage every sink, add open silences, publish, then decide incidents and claims."""
    for sink in SINKS:
        load.stage(warehouse, sink, out_dir)
    incidents.trailing_silences(warehouse, cc)
    for sink in SINKS:
        load.publish(warehouse, sink)
    stats = warehouse.rows(
        "SELECT countIf(window_minutes = 1), countIf(window_minutes = 5), sumIf(readings, window_minutes = 1), "
        "sumIf(duplicates, window_minutes = 1) FROM _stage_windows")[0]
    report.windows_1m, report.windows_5m, report.readings, report.duplicates = (int(v or 0) for v in stats)
    report.excursions = int(warehouse.scalar("SELECT count() FROM _stage_excursions"))
    report.silences = int(warehouse.scalar("SELECT count() FROM _stage_silences"))
    late = dict(warehouse.rows("SELECT reason, count() FROM _stage_late GROUP BY reason"))
    report.late = int(late.get("beyond_allowed_lateness", 0))
    report.invalid = int(late.get("invalid_reading", 0))
    report.future = int(late.get("future_timestamp", 0))
    outcome = incidents.build(warehouse, cc)
    report.incidents = outcome.incidents
    report.claims_auto_approved, report.claims_matched, report.claims_review = (
        outcome.auto_approved, outcome.matched, outcome.review)


def run(events_dir: Path, cfg: Settings | None = None, **options: Any) -> TelemetryReport:
    """Run the telemetry job over ``events_dir/locker_telemetry.jsonl`` (or Kafka) and load results.

    ``options`` are :class:`~lastmile.coldchain.config.ColdChainConfig` knobs (e.g.
    ``excursion_min_minutes=10``) plus ``coldchain`` (a whole config), ``telemetry_file``
    (a path instead of the default file), ``work_dir`` (keep Flink's output there),
    ``jobmanager`` and ``kafka_jars`` (cluster mode).
    """
    cfg = cfg or current_settings()
    cc: ColdChainConfig = options.pop("coldchain", None) or ColdChainConfig()
    telemetry_file = Path(options.pop("telemetry_file", Path(events_dir) / TELEMETRY_FILE))
    work_dir = options.pop("work_dir", None)
    default_jars = (cfg.flink_kafka_jar,) if cfg.flink_kafka_jar else ()
    cluster = Cluster(jobmanager=options.pop("jobmanager", cfg.flink_jobmanager),
                      jars=tuple(options.pop("kafka_jars", default_jars)))
    cc = cc.with_options(**options) if options else cc

    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    warehouse = connect(cfg)
    migrate(warehouse)
    kafka = bool(cfg.kafka_bootstrap and cluster.jobmanager)
    source = (Source(bootstrap=cfg.kafka_bootstrap, max_clock_skew_s=cfg.max_clock_skew_s) if kafka
              else Source(path=telemetry_file.resolve(), latest_event_s=int(time.time()) + cfg.max_clock_skew_s))
    report = TelemetryReport()
    if not kafka:
        if not telemetry_file.exists():
            raise FileNotFoundError(f"no telemetry file at {telemetry_file}")
        report.lines = count_lines(telemetry_file)
    out_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="lastmile-coldchain-"))
    for sink in SINKS:  # a fresh output: stale part files would be loaded again
        shutil.rmtree(out_dir / sink, ignore_errors=True)
    try:
        flink: FlinkRun = run_job_isolated(source, out_dir, cc, cluster)
        report.jvm_start_s, report.flink_s, report.job_id = flink.jvm_start_s, flink.seconds, flink.job_id
        if kafka:
            report.seconds = time.perf_counter() - clock
            return report  # the job keeps running on the cluster; load_outputs runs on a schedule
        load_clock = time.perf_counter()
        load_outputs(warehouse, out_dir, cc, report)
        report.load_s = time.perf_counter() - load_clock
    finally:
        if not work_dir and not kafka:
            shutil.rmtree(out_dir, ignore_errors=True)
    report.skipped = max(0, report.lines - report.readings - report.duplicates - report.late - report.invalid
                         - report.future)
    report.seconds = time.perf_counter() - clock
    warehouse.insert_rows("coldchain_runs", [[
        uuid.uuid4().hex, started, datetime.now(timezone.utc), str(telemetry_file), report.readings,
        report.windows_1m, report.windows_5m, report.excursions, report.silences, report.incidents,
        report.claims_auto_approved, report.claims_matched, report.claims_review, report.late, report.invalid,
        report.skipped, report.seconds, report.jvm_start_s]], [
        "run_id", "started_at", "finished_at", "source", "readings", "windows_1m", "windows_5m", "excursions",
        "silences", "incidents", "claims_auto_approved", "claims_matched", "claims_review", "late", "invalid",
        "skipped", "seconds", "jvm_start_s"])
    return report
