"""Run the cold-chain SQL on Flink (PyFlink's Table API) and say where the results landed.

The JVM never touches the warehouse: chDB lets one process open its directory, and that
process is the driver. Flink writes each result as NDJSON files under ``out_dir/<sink>/``
and the driver loads them (``lastmile.coldchain.load``).

Locally PyFlink starts a mini-cluster from the jars in its wheel. Given a JobManager address
the same statements are submitted to a cluster; reading Kafka there needs
``flink-sql-connector-kafka`` (4.0.x for Flink 2.x) in ``pipeline.jars`` or the cluster's
``lib/``, and checkpointing, because the filesystem sink commits files on checkpoints.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lastmile.coldchain import sql
from lastmile.coldchain.config import ColdChainConfig

SINKS = ("windows", "excursions", "silences", "late")


@dataclass
class FlinkRun:
    """What one execution of the job cost, and where its output is."""

    out_dir: Path
    jvm_start_s: float
    seconds: float
    job_id: str = ""


@dataclass(frozen=True)
class Cluster:
    """Where to run: empty ``jobmanager`` is the local mini-cluster."""

    jobmanager: str = ""  # host:port of the JobManager's REST endpoint
    jars: tuple[str, ...] = ()  # extra connector jars (file:// URLs), e.g. the Kafka connector
    checkpoint_interval_s: int = 60


def table_environment(cc: ColdChainConfig, cluster: Cluster = Cluster()):
    """A streaming TableEnvironment configured for deterministic event time."""
    from pyflink.table import EnvironmentSettings, TableEnvironment

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = env.get_config()
    conf.set("parallelism.default", str(cc.parallelism))
    # Event times are stored in UTC; the session zone only matters for casts to strings.
    conf.set("table.local-time-zone", "UTC")
    # Event times have whole seconds, and Flink's watermark assigner emits eagerly whenever
    # the watermark advances by more than this interval: so it emits on every advance, and
    # whether a reading is "too late" depends on the order of the input only, never on
    # wall-clock timers. Re-running over the same file gives the same late table.
    conf.set("pipeline.auto-watermark-interval", "200 ms")
    conf.set("pipeline.name", "lastmile-coldchain")
    # One window aggregate per window size, not a local pre-aggregate before the shuffle and a
    # global one after it: a compartment reads every few minutes, so a pre-aggregate never
    # combines two readings, and each of its buffers is flushed (and its hash table reset) on
    # every watermark advance. Measured on 1M readings: about a quarter less JVM CPU.
    conf.set("table.optimizer.agg-phase-strategy", "ONE_PHASE")
    # Chained operators hand rows on without a defensive copy. Every operator here is Flink's
    # own SQL runtime, which copies (or serializes) what it keeps; the copies were a quarter
    # of the source task's CPU.
    conf.set("pipeline.object-reuse", "true")
    if cluster.jars:
        conf.set("pipeline.jars", ";".join(cluster.jars))
    if cluster.jobmanager:
        host, _, port = cluster.jobmanager.partition(":")
        conf.set("execution.target", "remote")
        conf.set("rest.address", host)
        conf.set("rest.port", port or "8081")
        conf.set("execution.checkpointing.interval", f"{cluster.checkpoint_interval_s} s")
    return env


def run_job(source: sql.Source, out_dir: Path, cc: ColdChainConfig, cluster: Cluster = Cluster(),
            plain_reference: bool = False) -> FlinkRun:
    """Execute the job (or, with ``plain_reference``, the bare aggregation used as a yardstick).

    Bounded input (files) runs to completion; Kafka input is submitted and left running.
    """
    clock = time.perf_counter()
    env = table_environment(cc, cluster)
    jvm_start_s = time.perf_counter() - clock
    out_dir.mkdir(parents=True, exist_ok=True)
    env.execute_sql(sql.source_ddl(cc, source))
    for name in SINKS:
        env.execute_sql(sql.sink_ddl(name, out_dir))
    statements = env.create_statement_set()
    if plain_reference:
        statements.add_insert_sql(sql.plain_aggregation())
    else:
        for statement in sql.views(cc):
            env.execute_sql(statement)
        for statement in sql.inserts(cc):
            statements.add_insert_sql(statement)
    started = time.perf_counter()
    result = statements.execute()
    client = result.get_job_client()
    job_id = str(client.get_job_id()) if client is not None else ""
    if not source.bootstrap:
        result.wait()
    return FlinkRun(out_dir=out_dir, jvm_start_s=jvm_start_s, seconds=time.perf_counter() - started, job_id=job_id)


def output_files(out_dir: Path, sink: str) -> list[Path]:
    """Committed part files of a sink (in-progress and hidden files are not results yet)."""
    folder = out_dir / sink
    if not folder.exists():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and p.stat().st_size)


def run_job_isolated(source: sql.Source, out_dir: Path, cc: ColdChainConfig, cluster: Cluster = Cluster(),
                     plain_reference: bool = False) -> FlinkRun:
    """:func:`run_job` in a child Python process; the caller never imports PyFlink.

    Why: importing PyFlink's Python runtime registers PyFlink's own operation factories in
    Apache Beam's global transform registry (both speak Beam's Fn API). A Beam pipeline run
    afterwards in the same process — the ingest, which shares the process that owns the
    embedded warehouse — then builds PyFlink operations and fails (``KeyError: ''``). The job
    only writes files, so running it next door costs a Python start-up and nothing else.
    """
    with tempfile.TemporaryDirectory(prefix="lastmile-flink-") as scratch:
        request, answer = Path(scratch) / "request.pickle", Path(scratch) / "answer.pickle"
        request.write_bytes(pickle.dumps((source, out_dir, cc, cluster, plain_reference)))
        done = subprocess.run([sys.executable, "-m", "lastmile.coldchain.flink", str(request), str(answer)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0 or not answer.exists():
            tail = done.stdout.decode("utf-8", "replace").strip().splitlines()[-15:]
            raise RuntimeError("the Flink telemetry job failed:\n" + "\n".join(tail))
        return pickle.loads(answer.read_bytes())


if __name__ == "__main__":
    # Use the importable module's classes, so the parent can unpickle the answer.
    from lastmile.coldchain import flink as _module

    _request, _answer = Path(sys.argv[1]), Path(sys.argv[2])
    _answer.write_bytes(pickle.dumps(_module.run_job(*pickle.loads(_request.read_bytes()))))
