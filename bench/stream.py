"""Benchmark: the real-time path - events/s through the worker against a plain consumer's ceiling, and freshness.

On the development broker (tansu, loopback) and fresh embedded warehouses:

1. **Ceiling.** A backlog of simulated events is published once. A plain consumer
   (aiokafka, its own consumer group) reads that backlog from the same topics and inserts
   the raw lines into a warehouse of its own, one table per topic, committing offsets
   after each insert: no validation, no OneID, no features, no journeys. Its events/s
   (first record received to last batch committed) is what the broker, the client and the
   warehouse allow on this hardware; ``ratio_to_ceiling`` is the worker's share of it.
2. **Throughput.** ``lastmile stream`` starts (as a subprocess, as in production) and
   drains the same backlog. ``events_per_s`` is events read over the time from the first
   record reaching the worker to the status written after the batch that completed the
   backlog (start-up excluded: paid once per deploy; OneID resolution, the shipped journeys
   with all contact rules, the event audiences and the batch-quality alerts run meanwhile, as
   in production).
3. **Freshness.** With the worker idle and caught up (its journeys too: the time they take to
   catch up on the backlog's journey events is printed), the rest of the events are published
   at a steady rate (half the measured throughput, so the worker is not saturated) and
   each event's freshness is ``_ingested_at`` (set by ClickHouse when the row is inserted)
   minus the wall-clock time the producer handed it to the client. p50 and p95 are over
   every valid event of that phase.

   Feature freshness is the same for orders, up to the online push that first showed them
   (``feat_customer_realtime._pushed_at``, written right after each online push).

Targets: >= 20,000 events/s and p95 freshness <= 2 s (warehouse row and online feature).
The last line is one JSON object: ``events_per_s``, ``ratio_to_ceiling``,
``ceiling_events_per_s``, ``warehouse_freshness_p95_s``, ``feature_freshness_p95_s``, then
further figures.
Usage: ``python bench/stream.py [--orders 40000] [--seed 5]`` (40,000 orders make a backlog of about
150,000 events, long enough for a steady rate).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._stream_latency import percentile  # noqa: E402 - needs the path above
from lastmile.journeys.stream import PASS_EVENTS  # noqa: E402 - needs the path above


def _status(home: Path) -> dict:
    try:
        return json.loads((home / "stream" / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system, all threads) used so far by a process and by its live descendants (Linux /proc)."""

    def own(p: int) -> float:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def children(p: int) -> list[int]:
        found: list[int] = []
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                found += [int(c) for c in (task / "children").read_text().split()]
            except FileNotFoundError:
                pass
        return found

    descendants, todo = 0.0, children(pid)
    while todo:
        child = todo.pop()
        descendants += own(child)
        todo += children(child)
    return own(pid), descendants


def _wait(home: Path, worker: subprocess.Popen, at_least: int, timeout_s: float) -> list[tuple[float, int, tuple[float, float]]]:
    """Poll the worker's counters until it read ``at_least``; returns (time, read, CPU s of worker and judges) samples."""
    samples: list[tuple[float, int, tuple[float, float]]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = _status(home)
        if status and (not samples or samples[-1][1] != status["read"]):
            samples.append((status["updated_at"], status["read"], _cpu_s(worker.pid)))
        if status.get("read", 0) >= at_least:
            return samples
        if worker.poll() is not None:
            raise SystemExit(f"worker exited with {worker.returncode}; see {home / 'worker.log'}")
        time.sleep(0.1)
    raise SystemExit(f"worker read {_status(home).get('read', 0)} of {at_least} within {timeout_s:.0f} s")


def _wait_caught_up(home: Path, worker: subprocess.Popen, timeout_s: float) -> float:
    """Seconds until the worker's journeys caught up on the inbox (``journey_caught_up``)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if _status(home).get("journey_caught_up"):
            return time.monotonic() - began
        if worker.poll() is not None:
            raise SystemExit(f"worker exited with {worker.returncode}; see {home / 'worker.log'}")
        time.sleep(0.2)
    raise SystemExit(f"the worker's journeys did not catch up within {timeout_s:.0f} s")


def _ceiling_consumer(bootstrap: str, events: int, batch_rows: int, flush_s: float) -> dict:
    """The plain consumer (run in its own process: chDB opens one warehouse per process).

    Reads ``events`` records of the event topics from the beginning and inserts each
    batch's raw lines into ``ceiling_<event type>`` (ClickHouse's LineAsString: no parsing
    in Python), then commits the batch's offsets, as the worker does.
    """
    from aiokafka import AIOKafkaConsumer

    from lastmile.config import settings
    from lastmile.streaming.topics import event_topics, event_type_of
    from lastmile.warehouse import connect

    warehouse = connect(settings())
    topics = event_topics()
    for topic in topics:
        warehouse.command(f"CREATE TABLE IF NOT EXISTS ceiling_{event_type_of(topic)} (line String, "
                          "_ingested_at DateTime64(3) DEFAULT now64(3)) ENGINE = MergeTree ORDER BY tuple()")

    # The first insert of a process pays for ClickHouse's start-up; the worker pays it before reading.
    warehouse.client.raw_insert(f"ceiling_{event_type_of(topics[0])}", column_names=["line"], insert_block=b"{}",
                                fmt="LineAsString")
    warehouse.command(f"TRUNCATE TABLE ceiling_{event_type_of(topics[0])}")

    def insert(lines_by_topic: dict[str, list[bytes]]) -> None:
        for topic, lines in lines_by_topic.items():
            warehouse.client.raw_insert(f"ceiling_{event_type_of(topic)}", column_names=["line"],
                                        insert_block=b"\n".join(lines), fmt="LineAsString")

    async def consume() -> dict:
        consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id="bench-ceiling",
                                    enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=batch_rows)
        await consumer.start()
        read, batches, first = 0, 0, None
        deadline = time.monotonic() + 600
        try:
            while read < events:
                if time.monotonic() > deadline:
                    raise SystemExit(f"ceiling consumer read {read} of {events} within 600 s")
                lines_by_topic: dict[str, list[bytes]] = {}
                gathered, batch_started = 0, None
                while gathered < batch_rows and (batch_started is None or time.monotonic() - batch_started < flush_s):
                    got = await consumer.getmany(timeout_ms=int(flush_s * 1000), max_records=batch_rows - gathered)
                    for tp, records in got.items():
                        lines_by_topic.setdefault(tp.topic, []).extend(r.value for r in records)
                        gathered += len(records)
                    if gathered and batch_started is None:
                        batch_started = time.monotonic()
                        first = first or time.time()
                    if not got:  # nothing more within flush_s: write what there is (or poll again)
                        break
                if not gathered:
                    continue
                await asyncio.to_thread(insert, lines_by_topic)
                await consumer.commit()
                read += gathered
                batches += 1
            return {"read": read, "batches": batches, "first_record_at": first, "done_at": time.time(),
                    "rows": sum(warehouse.scalar(f"SELECT count() FROM ceiling_{event_type_of(t)}") for t in topics)}
        finally:
            await consumer.stop()

    return asyncio.run(consume())


def _ceiling(work: Path, bootstrap: str, events: int) -> dict:
    """Run :func:`_ceiling_consumer` in a child process on a warehouse of its own."""
    home = work / "ceiling"
    home.mkdir(parents=True)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LASTMILE_")},
           "LASTMILE_HOME": str(home), "LASTMILE_HASH_KEY": "bench-key", "LASTMILE_KAFKA_BOOTSTRAP": bootstrap}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--ceiling-events", str(events),
                          "--ceiling-bootstrap", bootstrap], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"ceiling consumer failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=40_000, help="simulated orders (~7 events each with telemetry)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--freshness-events", type=int, default=15_000)
    parser.add_argument("--log-level", default="WARNING", help="worker log level (INFO shows OneID runs)")
    parser.add_argument("--identity-seconds", type=float, default=5.0, help="worker's OneID resolve interval (0: off)")
    parser.add_argument("--identity-waiting-seconds", type=float, default=0.5,
                        help="worker's OneID resolve interval while orders wait for a OneID (0: no hurry)")
    parser.add_argument("--profiles-seconds", type=float, default=30.0, help="worker's profiles rebuild interval (0: off)")
    parser.add_argument("--batch-rows", type=int, default=20_000, help="worker's and ceiling consumer's batch size")
    parser.add_argument("--flush-seconds", type=float, default=0.5, help="worker's and ceiling consumer's batch wait")
    parser.add_argument("--no-journeys", action="store_true", help="run the worker without journeys (what they cost)")
    parser.add_argument("--ceiling-events", type=int, default=0, help=argparse.SUPPRESS)  # the child process of the ceiling
    parser.add_argument("--ceiling-bootstrap", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ceiling_events:
        print(json.dumps(_ceiling_consumer(args.ceiling_bootstrap, args.ceiling_events, args.batch_rows, args.flush_seconds)))
        return

    from lastmile.simulator import SimulationConfig, simulate
    from lastmile.streaming.broker import dev_broker
    from lastmile.streaming.produce import ensure_topics, event_stream, publish

    work = Path(tempfile.mkdtemp(prefix="lastmile-bench-stream-"))
    home = work / "home"
    sim = simulate(SimulationConfig(seed=args.seed, orders=args.orders, weeks=2, telemetry_every_s=900), work / "sim")
    total = sim.total_events
    backlog = max(1, total - args.freshness_events)
    print(f"simulated {total:,} events; backlog {backlog:,}, freshness phase {total - backlog:,}")

    with dev_broker(log_path=work / "broker.log") as broker:
        stream = event_stream(work / "sim" / "events")
        asyncio.run(ensure_topics(broker.bootstrap))
        first = asyncio.run(publish(broker.bootstrap, itertools.islice(stream, backlog)))
        print(f"produce:  backlog of {first.published:,} events in {first.seconds:.1f} s ({first.events_per_s:,.0f}/s)")

        ceiling = _ceiling(work, broker.bootstrap, first.published)
        ceiling_s = ceiling["done_at"] - ceiling["first_record_at"]
        ceiling_events_per_s = ceiling["read"] / ceiling_s if ceiling_s > 0 else float("nan")
        print(f"ceiling:  a plain consumer read {ceiling['read']:,} events and inserted {ceiling['rows']:,} raw lines in "
              f"{ceiling_s:.1f} s = {ceiling_events_per_s:,.0f} events/s ({ceiling['batches']} batches)")

        env = {**{k: v for k, v in os.environ.items() if not k.startswith("LASTMILE_")},
               "LASTMILE_HOME": str(home), "LASTMILE_HASH_KEY": "bench-key", "LASTMILE_KAFKA_BOOTSTRAP": broker.bootstrap}
        home.mkdir(parents=True)
        started = time.monotonic()
        worker = subprocess.Popen([sys.executable, "-m", "lastmile.cli", "stream", "--group", "bench",
                                   "--batch-rows", str(args.batch_rows), "--flush-seconds", str(args.flush_seconds),
                                   "--log-level", args.log_level, "--identity-seconds", str(args.identity_seconds),
                                   "--identity-waiting-seconds", str(args.identity_waiting_seconds),
                                   "--profiles-seconds", str(args.profiles_seconds),
                                   *(["--no-journeys"] if args.no_journeys else [])],
                                  cwd=ROOT, env=env, stdout=open(home / "worker.log", "wb"), stderr=subprocess.STDOUT)
        try:
            samples = _wait(home, worker, first.published, 600)
            t0 = _status(home)["first_record_at"]  # the first record reached the worker
            t1, r1, cpu1 = samples[-1]  # the status written after the batch that completed the backlog
            events_per_s = r1 / (t1 - t0) if t1 > t0 else float("nan")
            print(f"worker:   first record {t0 - time.time() + time.monotonic() - started:.1f} s after start; "
                  f"drained {r1:,} events in {t1 - t0:.1f} s = {events_per_s:,.0f} events/s "
                  f"({len(samples)} status samples); {events_per_s / ceiling_events_per_s:.2f} of the plain consumer's ceiling")
            if len(samples) > 1:  # CPU per event from the first batch on: start-up excluded, load-independent
                _, r0, cpu0 = samples[0]
                main, judges = ((cpu1[i] - cpu0[i]) / (r1 - r0) for i in (0, 1))
                print(f"worker:   CPU per event {main * 1e6:,.0f} µs in the worker process (all threads) + "
                      f"{judges * 1e6:,.0f} µs in judge processes = {(main + judges) * 1e6:,.0f} µs: "
                      f"{1 / (main + judges):,.0f} events/s per fully available core; "
                      f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

            caught_up_s = _wait_caught_up(home, worker, 600)
            print(f"journeys: caught up on the backlog's journey events {caught_up_s:.1f} s after it drained "
                  f"(passes of at most {PASS_EVENTS:,} inbox events, each followed, while batches come, by a pause as long as it took)")

            rate = max(200.0, min(events_per_s / 2, 10_000.0))
            second = asyncio.run(publish(broker.bootstrap, stream, rate=rate, record_sent=True))
            print(f"produce:  {second.published:,} events at {rate:,.0f}/s for freshness ({second.seconds:.1f} s)")
            _wait(home, worker, first.published + second.published, 300)
            time.sleep(1.0)
            done = _status(home)
            print(f"journeys: {done.get('journey_passes', 0)} passes, {done.get('journey_sends_published', 0):,} sends "
                  f"published, {done.get('journey_errors', 0)} failed passes")
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)

    os.environ.update(LASTMILE_HOME=str(home), LASTMILE_HASH_KEY="bench-key")
    os.environ.pop("LASTMILE_CLICKHOUSE_URL", None)
    from lastmile.config import settings
    from lastmile.warehouse import connect

    warehouse = connect(settings())
    ingested: dict[str, int] = {}
    for table in [t for t in warehouse.tables() if t.startswith("raw_")]:
        for event_id, at_ms in warehouse.rows(f"SELECT event_id, toUnixTimestamp64Milli(min(_ingested_at)) FROM {table} GROUP BY event_id"):
            ingested[event_id] = int(at_ms)
    lags = [ingested[e] / 1000 - sent for e, sent in second.sent_at.items() if e in ingested]
    p50, p95 = (percentile(lags, 0.5), percentile(lags, 0.95)) if lags else (float("nan"), float("nan"))
    print(f"freshness produce→warehouse row over {len(lags):,} events: p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(lags):.2f} s")
    print(f"targets: >= 20,000 events/s: {'met' if events_per_s >= 20_000 else 'NOT met'}; "
          f"p95 <= 2 s: {'met' if p95 <= 2 else 'NOT met'}")

    # (b) online feature: each pushed row of feat_customer_realtime is written right after its
    # online push (``_pushed_at``) and stamped with the customer's latest order time; the
    # order with that time is the one the push made visible. Freshness = first push showing
    # it - when the producer sent it (orders of new neighbours include the OneID wait).
    order_at = dict(warehouse.rows("SELECT event_id, toUnixTimestamp64Milli(occurred_at) FROM raw_order FINAL"))
    pushed = dict(warehouse.rows("SELECT toUnixTimestamp64Milli(event_timestamp), toUnixTimestamp64Milli(min(_pushed_at)) "
                                 "FROM feat_customer_realtime GROUP BY event_timestamp"))
    feature_lags = [pushed[order_at[e]] / 1000 - sent for e, sent in second.sent_at.items()
                    if e in order_at and order_at[e] in pushed]
    orders_sent = sum(1 for e in second.sent_at if e in order_at)
    fp50, fp95 = (percentile(feature_lags, 0.5), percentile(feature_lags, 0.95)) if feature_lags else (float("nan"),) * 2
    if not feature_lags:
        print("no order reached the online store: features are pushed per OneID (is --identity-seconds 0?)")
    print(f"freshness produce→online feature over {len(feature_lags):,} of {orders_sent:,} orders: "
          f"p50 {fp50:.2f} s, p95 {fp95:.2f} s (ratio to the warehouse row's p95: {fp95 / p95:.2f})")
    print(f"feature p95 <= 2 s: {'met' if fp95 <= 2 else 'NOT met'}")
    def figure(value: float) -> float | None:
        return None if value != value else round(value, 3)  # NaN (nothing measured) is JSON null

    print(json.dumps({"events_per_s": round(events_per_s), "ratio_to_ceiling": figure(events_per_s / ceiling_events_per_s),
                      "ceiling_events_per_s": round(ceiling_events_per_s), "warehouse_freshness_p95_s": figure(p95),
                      "feature_freshness_p95_s": figure(fp95), "feature_freshness_p50_s": figure(fp50),
                      "warehouse_freshness_p50_s": figure(p50), "journeys_catch_up_s": figure(caught_up_s)}))


if __name__ == "__main__":
    main()
