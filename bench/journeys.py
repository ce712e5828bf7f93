"""Benchmark: people moved through journeys per second, send latency through the stream, and
batch-quality alerts, on one simulated community.

The community is the default simulation (``--orders 20000 --weeks 8``), ingested with the
batch ingest (Apache Beam, OneID), with the simulated residents' consent (per persona and
channel, health apart, a few withdrawals: docs/simulator.md).

* Journey pass: the shipped journeys (``journeys/*.yml``) replayed over the whole window as
  the main job does it (:func:`lastmile.journeys.replay.replay`: each day's events noted, one
  pass per day), with all contact rules on (consent, quiet hours, frequency caps, spending
  health; the shipped ``contact_rules.yml``). ``steps_per_s``: journey steps recorded (entries,
  sends allowed or refused, waits, branches, goals, ends) per second of the replay.
  Reference, measured in the same run: the same events (the rows the journeys read) inserted
  into a plain MergeTree table and counted; the ratio is plain time / journey time.
* Send latency: a development broker and a ``lastmile stream`` worker (a subprocess, as in
  production, on a warehouse of its own, with its default OneID intervals) with the shipped
  ``cold_chain_compensation`` journey. Temperature claims of neighbours nobody has seen are
  produced one at a time; each one's latency runs from the broker's acknowledgement of the
  claim to the arrival of its ``journey_send`` on ``lastmile.actions`` (the claim's batch
  hurries OneID, which resolves the claimant; the pass right after it decides the
  compensation and the worker publishes it). p50 and p95 over
  ``--sends`` claims; the first, which also waits for the worker to join its group, is not
  counted. Target: p95 <= 2 s.
* Batch-quality alerts: :func:`lastmile.batches.evaluate.alert_and_score` on the simulation
  against its injected bad batches (``truth/bad_batches.jsonl``): recall, and the false rate
  (alerts on good batches / alerts).

    python bench/journeys.py [--orders 20000] [--weeks 8] [--seed 42] [--sends 30]

The last line is the JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stream_latency import ROOT, percentile, stream_latencies  # noqa: E402 - needs the path above

WORKER_START_S = 90.0  # the worker joins its group and runs its first OneID resolution
SEND_TIMEOUT_S = 30.0


def _plain_reference(warehouse, event_types: set[str]) -> tuple[float, int]:
    """Seconds to read the journeys' event rows, insert them into a plain MergeTree and count them."""
    from lastmile.audiences.definition import EVENT_TABLES
    from lastmile.journeys.intake import journey_fields
    from lastmile.warehouse import quote_ident

    warehouse.command("DROP TABLE IF EXISTS bench_plain_events")
    warehouse.command("CREATE TABLE bench_plain_events (event_id String, event_type String, occurred_at DateTime64(3, 'UTC'), "
                      "fields String) ENGINE = MergeTree ORDER BY (occurred_at, event_id)")
    begin = time.perf_counter()
    for event_type in sorted(event_types):
        table = EVENT_TABLES.get(event_type)
        if table is None or table not in warehouse.tables():
            continue
        names = journey_fields(event_type)
        result = warehouse.query(f"SELECT event_id, occurred_at, {', '.join(quote_ident(n) for n in names)} "
                                 f"FROM {quote_ident(table)} FINAL ORDER BY occurred_at, event_id")
        rows = [(r[0], event_type, r[1], json.dumps(dict(zip(names, r[2:])), ensure_ascii=False, default=str))
                for r in result.result_rows]
        warehouse.insert_rows("bench_plain_events", rows, ["event_id", "event_type", "occurred_at", "fields"])
    count = int(warehouse.scalar("SELECT count() FROM bench_plain_events"))
    seconds = time.perf_counter() - begin
    warehouse.command("DROP TABLE bench_plain_events")
    return seconds, count


def send_latencies(sends: int, work: Path) -> list[float]:
    """Seconds from a claim's acknowledgement to its journey send on lastmile.actions."""
    from lastmile.streaming.topics import ACTIONS_TOPIC

    folder = work / "journeys"
    folder.mkdir()
    shutil.copy(ROOT / "journeys" / "cold_chain_compensation.yml", folder)
    run = int(time.time())

    def claim(n: int) -> dict:
        return {"event_id": f"ev-bench-claim-{run}-{n:05d}", "event_type": "return", "schema_version": 1,
                "occurred_at": datetime.now(timezone.utc).isoformat(), "source": "mini_program", "kind": "claim",
                "claimant": {"openid": f"oBenchClaim-{run}-{n:05d}"}, "order_id": f"ord-bench-{run}-{n:05d}",
                "reason": "temperature", "amount": 12.5, "evidence": ["photo://claims/bench.jpg"]}

    def answers(action: dict, claimed: dict) -> bool:
        return action["action"] == "journey_send" and action["details"]["run_id"] == f"order_id={claimed['order_id']}"

    return stream_latencies(
        work, count=sends, event_type="return", make_event=claim, output_topic=ACTIONS_TOPIC, answers=answers,
        worker_args=["--group", "bench-journeys", "--flush-seconds", "0.2", "--profiles-seconds", "0", "--replenish-seconds", "0",
                     "--no-features", "--no-audiences", "--judges", "0"],
        worker_env={"LASTMILE_JOURNEYS_DIR": str(folder)}, start_s=WORKER_START_S, timeout_s=SEND_TIMEOUT_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--weeks", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--sends", type=int, default=30, help="Claims timed through the stream (0: no stream measurement).")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="lastmile-bench-journeys-"))
    os.environ["LASTMILE_HOME"] = str(home)
    os.environ["LASTMILE_HASH_KEY"] = "bench-key-not-secret"
    for name in ("LASTMILE_CLICKHOUSE_URL", "LASTMILE_JOURNEYS_DIR", "LASTMILE_AUDIENCES_DIR", "LASTMILE_CONTACT_RULES"):
        os.environ.pop(name, None)

    from lastmile.audiences import load_audiences
    from lastmile.audiences.contact_rules import ContactDesk, load_rules
    from lastmile.batches.evaluate import alert_and_score
    from lastmile.batches.rules import load_rules as load_batch_rules
    from lastmile.config import settings
    from lastmile.journeys import load_journeys
    from lastmile.journeys.replay import replay
    from lastmile.simulator import SimulationConfig, simulate
    from lastmile.warehouse import connect
    from pipelines import beam_ingest

    cfg = settings()
    try:
        begin = time.perf_counter()
        simulate(SimulationConfig(seed=args.seed, orders=args.orders, weeks=args.weeks), cfg.home)
        ingest = beam_ingest.run(cfg.events_dir)
        print(f"simulated and ingested {ingest.valid:,} events ({args.orders:,} orders over {args.weeks} weeks; "
              f"with consent) in {time.perf_counter() - begin:.1f} s")
        warehouse = connect(cfg)

        _, detection = alert_and_score(warehouse, load_batch_rules(), cfg.home / "truth" / "bad_batches.jsonl")
        if detection is not None:
            print(detection.text())

        journeys = load_journeys(ROOT / "journeys", {a.name for a in load_audiences(ROOT / "audiences")})
        desk = ContactDesk(warehouse, load_rules(), cfg)
        report = replay(warehouse, journeys, desk, cfg.business_zone)
        event_types = set().union(*(j.event_types() for j in journeys))
        plain_s, plain_rows = _plain_reference(warehouse, event_types)
        ratio = plain_s / report.seconds if report.seconds else 0.0
        print(report.text())
        print(f"journey replay: {report.steps:,} steps over {report.events:,} events in {report.seconds:.1f} s "
              f"({report.steps_per_s:,.0f} steps/s); plain insert + count of the same {plain_rows:,} events {plain_s:.2f} s; "
              f"ratio {ratio:.3f}")
    finally:
        shutil.rmtree(home, ignore_errors=True)

    p50 = p95 = None
    if args.sends > 0:
        work = Path(tempfile.mkdtemp(prefix="lastmile-bench-journey-stream-"))
        try:
            latencies = send_latencies(args.sends, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
        print(f"send latency (claim produced -> journey_send on lastmile.actions) over {len(latencies)} claims: p50 {p50:.2f} s, "
              f"p95 {p95:.2f} s, max {max(latencies):.2f} s, mean {statistics.mean(latencies):.2f} s; "
              f"target p95 <= 2 s: {'met' if p95 <= 2 else 'NOT met'}")
    print(json.dumps({
        "steps_per_s": report.steps_per_s,
        "send_latency_p95_s": None if p95 is None else round(p95, 3),
        "batch_alert_recall": detection.recall if detection else None,
        "batch_alert_false_rate": detection.false_rate if detection else None,
        "send_latency_p50_s": None if p50 is None else round(p50, 3),
        "steps": report.steps,
        "replay_s": round(report.seconds, 2),
        "ratio_to_plain_insert_count": round(ratio, 4),
        "batch_alert_recall_detected": f"{detection.detected}/{detection.bad_batches}" if detection else None,
    }))


if __name__ == "__main__":
    main()
