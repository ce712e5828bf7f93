"""Benchmark: the cold-chain Flink job over 10M locker readings; compare with plain Flink SQL.

What it measures, on a fresh embedded warehouse and a generated telemetry file (numpy; time
ordered across compartments the way a broker delivers them; normal noise plus one 30-minute
excursion per compartment and week, so MATCH_RECOGNIZE has work to do):

* ``readings_per_s`` — lines through the whole Flink job (parse, watermark and lateness
  split, OVER window, 1- and 5-minute windows, MATCH_RECOGNIZE, four file sinks), JVM
  start excluded, loading into the warehouse reported apart;
* ``ratio_to_plain_sql`` — that over the speed of a plain Flink SQL 5-minute aggregation of
  the same file (same source, same parsing, no Python anywhere), measured in the same run
  after a small warm-up job so neither pays the JIT alone;
* ``jvm_start_s`` — starting PyFlink's JVM gateway (paid once per process);
* ``peak_rss_mb`` — peak resident memory of this process plus its children (the JVM):
  RUSAGE_SELF, RUSAGE_CHILDREN for children already gone, VmHWM of the living ones.

Target: >= 200,000 readings/s. Usage: ``python bench/telemetry.py [--readings 10000000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: 2026-09-07T00:00:00+08:00, a Monday in the simulator's default window.
T0 = 1788710400
CLASSES = ("chilled", "chilled", "frozen", "ambient")
NORMAL_C = {"chilled": 2.3, "frozen": -20.5, "ambient": 22.0}


def generate(path: Path, readings: int, every_s: int = 300, seed: int = 7) -> int:
    """Write ``readings`` telemetry lines: ~8 weeks of 5-minute readings for as many
    compartments as needed. Strings are assembled from precomputed pieces; numpy draws
    the values. Returns the number of lines written."""
    rng = np.random.default_rng(seed)
    steps_per_week = 7 * 86_400 // every_s
    comps = max(4, readings // (8 * steps_per_week))
    steps = -(-readings // comps)
    cls = [CLASSES[c % 4] for c in range(comps)]
    base = np.array([NORMAL_C[k] for k in cls])
    cold = np.array([k != "ambient" for k in cls])
    offset = rng.integers(0, steps_per_week, comps)  # each compartment's weekly excursion
    deci = [f"{v / 10:.1f}" for v in range(-1000, 1001)]
    prefix = [
        f'{{"event_type":"locker_telemetry","schema_version":1,"source":"locker","locker_id":"L-{c // 4:04d}",'
        f'"compartment_id":"L-{c // 4:04d}-K{c % 4 + 1:02d}","community_id":"C{c // 8:03d}","product_class":"{cls[c]}",'
        f'"power":"mains","event_id":"t{c:05d}-'
        for c in range(comps)
    ]
    door = (',"door":"closed"}\n', ',"door":"open"}\n')
    written = 0
    with path.open("w") as out:
        for i in range(steps):
            k = min(comps, readings - written)
            if k <= 0:
                break
            t = time.gmtime(T0 + i * every_s + 8 * 3600)
            tail = (f'","occurred_at":"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:'
                    f'{t.tm_sec:02d}+08:00","temperature_c":')
            into_week = (i - offset[:k]) % steps_per_week
            warm = cold[:k] & (into_week < 7)  # 7 readings = 30 minutes out of range
            temps = base[:k] + rng.normal(0, 0.4, k) + np.where(warm, 6.0, 0.0)
            t_idx = np.clip(np.rint(temps * 10).astype(int), -1000, 1000) + 1000
            h_idx = np.clip(np.rint(600 + rng.normal(0, 50, k)).astype(int), 0, 1000) + 1000
            opened = (rng.random(k) < 0.01).tolist()
            si = str(i)
            out.write("".join([prefix[c] + si + tail + deci[t_idx[c]] + ',"humidity_pct":' + deci[h_idx[c]] + door[opened[c]]
                               for c in range(k)]))
            written += k
    return written


def peak_rss_mb() -> float:
    """Peak RSS of this process plus its children, living (VmHWM) or reaped (RUSAGE_CHILDREN)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    living = 0.0
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in stat.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == me and "VmHWM" in fields:
            living += int(fields["VmHWM"].split()[0]) / 1024
    return own + max(reaped, living)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=10_000_000)
    parser.add_argument("--parallelism", type=int, default=2)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="lastmile-bench-telemetry-"))
    os.environ["LASTMILE_HOME"] = str(home)
    os.environ.pop("LASTMILE_CLICKHOUSE_URL", None)
    from lastmile.coldchain.config import ColdChainConfig
    from lastmile.coldchain.flink import run_job
    from lastmile.coldchain.sql import Source
    from lastmile.config import settings
    from pipelines import flink_telemetry

    events = home / "events"
    events.mkdir(parents=True)
    telemetry = events / flink_telemetry.TELEMETRY_FILE
    start = time.perf_counter()
    lines = generate(telemetry, args.readings)
    gen_s = time.perf_counter() - start
    size_mb = telemetry.stat().st_size / 1e6
    print(f"generate: {lines:,} readings ({size_mb:,.0f} MB) in {gen_s:.1f} s")

    cc = ColdChainConfig(parallelism=args.parallelism)
    warmup = home / "warmup.jsonl"
    with telemetry.open("rb") as src, warmup.open("wb") as dst:
        dst.writelines(line for _, line in zip(range(min(50_000, lines)), src))
    bound = int(time.time()) + 300
    first = run_job(Source(path=warmup, latest_event_s=bound), home / "warmup-out", cc, plain_reference=True)
    print(f"jvm start: {first.jvm_start_s:.1f} s; warm-up job (50k readings, plain SQL): {first.seconds:.1f} s")

    report = flink_telemetry.run(events, settings(), coldchain=cc, work_dir=home / "job-out")
    job_rate = lines / report.flink_s
    print(f"job:      {lines:,} readings in {report.flink_s:.1f} s = {job_rate:,.0f} readings/s "
          f"(windows 1m {report.windows_1m:,}, 5m {report.windows_5m:,}, excursions {report.excursions:,}, "
          f"late {report.late:,}); load into the warehouse + incidents {report.load_s:.1f} s")

    plain = run_job(Source(path=telemetry, latest_event_s=bound), home / "plain-out", cc, plain_reference=True)
    plain_rate = lines / plain.seconds
    ratio = job_rate / plain_rate if plain_rate else 0.0
    peak = peak_rss_mb()
    print(f"plain:    the same readings through one Flink SQL 5-minute aggregation: {plain.seconds:.1f} s = "
          f"{plain_rate:,.0f} readings/s")
    print(f"ratio job/plain {ratio:.2f}; peak RSS (this process + JVM) {peak:,.0f} MB; CPUs {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}; target >= 200,000 readings/s: "
          f"{'met' if job_rate >= 200_000 else 'NOT met'}")
    shutil.rmtree(home, ignore_errors=True)
    print(json.dumps({
        "readings_per_s": round(job_rate),
        "ratio_to_plain_sql": round(ratio, 3),
        "jvm_start_s": round(first.jvm_start_s, 2),
        "peak_rss_mb": round(peak),
    }))


if __name__ == "__main__":
    main()
