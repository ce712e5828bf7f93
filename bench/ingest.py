"""Benchmark: simulate and ingest ~1M events; compare with a plain clickhouse-connect insert.

What it measures, on a fresh embedded warehouse:

* ``simulate_events_per_s`` — the community simulator writing NDJSON files;
* ``ingest_events_per_s`` — the Beam pipeline end to end (read, validate against the
  contracts, hash identifiers, quarantine, insert), pipeline start-up included;
* ``ingest_ratio_to_ceiling`` — that speed over the speed of inserting the *same rows*
  (read back from the warehouse, already typed Python values) with a plain
  ``client.insert`` into empty copies of the tables: the ceiling for a Python pipeline that
  has to hand rows to ClickHouse at all;
* ``peak_rss_mb`` — peak resident memory of this process (chDB runs inside it) plus its
  validation worker processes.

Target: ingest >= 50,000 events/s. For scale, RudderStack publishes roughly 300-850
events/s per vCPU for its own pipeline. Usage: ``python bench/ingest.py [--events 1000000] [--seed 42]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: Rows per insert for the ceiling: about what one 8 MiB ingest chunk holds.
CEILING_BATCH_ROWS = 20_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="lastmile-bench-ingest-"))
    os.environ["LASTMILE_HOME"] = str(home)
    os.environ.pop("LASTMILE_CLICKHOUSE_URL", None)

    from lastmile.config import settings
    from lastmile.simulator import for_total_events, simulate
    from lastmile.warehouse import connect, quote_ident
    from pipelines import beam_ingest

    cfg = settings()
    start = time.perf_counter()
    result = simulate(for_total_events(args.events, seed=args.seed), home)
    simulate_s = time.perf_counter() - start
    total = sum(result.counts.values())
    print(f"simulate: {total:,} events in {simulate_s:.1f} s = {total / simulate_s:,.0f} events/s")
    os.sync()  # the simulator's ~400 MB of files reach the disk now, not during the timed ingest

    report = beam_ingest.run(cfg.events_dir, cfg=cfg)
    print(f"ingest:   read {report.read:,} = valid {report.valid:,} + quarantined {report.quarantined:,}"
          f" in {report.seconds:.1f} s = {report.events_per_s:,.0f} events/s")

    warehouse = connect(cfg)
    ceiling_rows, ceiling_s = 0, 0.0
    for table in [t for t in warehouse.tables() if t.startswith("raw_")]:
        result_set = warehouse.query(f"SELECT * EXCEPT (_ingested_at) FROM {quote_ident(table)}")
        rows, names = result_set.result_rows, list(result_set.column_names)
        copy = f"bench_{table}"
        warehouse.command(f"DROP TABLE IF EXISTS {quote_ident(copy)}")
        warehouse.command(f"CREATE TABLE {quote_ident(copy)} AS {quote_ident(table)}")
        start = time.perf_counter()
        for i in range(0, len(rows), CEILING_BATCH_ROWS):
            warehouse.client.insert(copy, rows[i:i + CEILING_BATCH_ROWS], column_names=names)
        ceiling_s += time.perf_counter() - start
        ceiling_rows += len(rows)
        warehouse.command(f"DROP TABLE {quote_ident(copy)}")
    ceiling = ceiling_rows / ceiling_s if ceiling_s else 0.0
    print(f"ceiling:  plain clickhouse-connect insert of the same {ceiling_rows:,} rows: {ceiling:,.0f} rows/s")

    # This process (with chDB inside) plus, conservatively, every validation worker at the
    # largest worker's peak: the workers run at the same time as the parent.
    from lastmile.ingest import worker_count

    input_bytes = sum(p.stat().st_size for p in cfg.events_dir.glob("*.jsonl"))
    workers = worker_count(cfg.ingest_workers, input_bytes)
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + (workers * child_mb if workers > 1 else 0)
    ratio = report.events_per_s / ceiling if ceiling else 0.0
    print(f"ratio ingest/ceiling: {ratio:.2f}; peak RSS {peak_mb:,.0f} MB; target ingest >= 50,000 events/s: "
          f"{'met' if report.events_per_s >= 50_000 else 'NOT met'}")
    print(json.dumps({
        "simulate_events_per_s": round(total / simulate_s),
        "ingest_events_per_s": round(report.events_per_s),
        "ingest_ratio_to_ceiling": round(ratio, 3),
        "peak_rss_mb": round(peak_mb),
    }))


if __name__ == "__main__":
    main()
