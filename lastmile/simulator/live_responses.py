"""The simulator's live mode: residents answering the journeys' sends on ``lastmile.actions``.

A running ``lastmile stream`` publishes each allowed journey send as a
``journey_send`` action. :func:`respond_live` reads them, lets :class:`~lastmile.simulator.responses.ResponseModel`
decide each once (a send read twice, after a restart, is decided the same and its events keep
their ids, so the warehouse counts them once), and produces the response events to the event
topics when they are due: the response's delay after the send, divided by ``speed`` (1: real
time; 60: an hour of the residents' time per minute). Each decision is appended to the truth
file with its cause, the send id.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from .responses import Decision, ResponseModel, Send

JOURNEY_SEND = "journey_send"
#: Consumer group of the residents (their position in lastmile.actions survives a restart).
GROUP = "lastmile-residents"


@dataclass
class LiveReport:
    """What the live residents did."""

    read: int = 0  # journey sends read (after de-duplication)
    responded: int = 0
    produced: int = 0  # response events produced to the event topics

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def send_of(action: dict[str, Any]) -> Send | None:
    """The send a ``journey_send`` action carries (None: another action)."""
    if action.get("action") != JOURNEY_SEND:
        return None
    d = action.get("details") or {}
    at = datetime.fromisoformat(str(action["occurred_at"]))
    return Send(str(action["action_id"]), str(d.get("journey", "")), str(d.get("step", "")), str(d.get("oneid", "")),
                at if at.tzinfo else at.replace(tzinfo=timezone.utc), str(d.get("template", "")), str(d.get("channel", "")),
                dict(d.get("trigger") or {}), str(d.get("run_id", "")))


async def respond_live(bootstrap: str, model: ResponseModel, truth_path: Path, speed: float = 60.0,
                       orders_of: Callable[[str], Iterable[str]] | None = None, idle_s: float | None = None,
                       stop: asyncio.Event | None = None) -> LiveReport:
    """Answer journey sends until ``stop`` is set, or nothing came and nothing was due for
    ``idle_s`` seconds. ``orders_of(oneid)``: the orders OneID attributes to a person (without
    it, a send is matched to its resident by the trigger's order)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from lastmile.streaming.topics import ACTIONS_TOPIC, message_key, topic_for

    if speed <= 0:
        raise ValueError(f"speed must be above 0, got {speed}")
    report = LiveReport()
    seen: set[str] = set()
    due: list[tuple[float, str, bytes, bytes | None, str]] = []  # (wall time, event id, value, key, topic)
    consumer = AIOKafkaConsumer(ACTIONS_TOPIC, bootstrap_servers=bootstrap, group_id=GROUP, auto_offset_reset="earliest",
                                enable_auto_commit=True)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    truth_path.parent.mkdir(parents=True, exist_ok=True)
    quiet_since = time.monotonic()
    try:
        with truth_path.open("ab") as truth:
            while not (stop is not None and stop.is_set()):
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
                received = time.monotonic()
                for records in batches.values():
                    for record in records:
                        send = send_of(orjson.loads(record.value))
                        if send is None or send.send_id in seen:
                            continue
                        seen.add(send.send_id)
                        report.read += 1
                        quiet_since = received
                        decision: Decision = model.decide(send, orders_of(send.oneid) if orders_of else ())
                        truth.write(orjson.dumps(decision.truth_row()) + b"\n")
                        if decision.responded and decision.respond_at is not None:
                            report.responded += 1
                            wait = (decision.respond_at - send.at).total_seconds() / speed
                            for e in decision.events:
                                heapq.heappush(due, (received + wait, e["event_id"], orjson.dumps(e),
                                                     message_key(e["event_type"], e), topic_for(e["event_type"])))
                truth.flush()
                now = time.monotonic()
                ready = []
                while due and due[0][0] <= now:
                    ready.append(heapq.heappop(due))
                if ready:
                    sent = [await producer.send(topic, key=key, value=value) for _, _, value, key, topic in ready]
                    await asyncio.gather(*sent)
                    report.produced += len(ready)
                    quiet_since = now
                if idle_s is not None and not due and now - quiet_since > idle_s:
                    break
    finally:
        await producer.stop()
        await consumer.stop()
    return report


__all__ = ["GROUP", "JOURNEY_SEND", "LiveReport", "respond_live", "send_of"]
