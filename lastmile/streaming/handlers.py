"""Batch handlers of the worker: what happens to a batch after its warehouse write.

Each handler is ``async (WrittenBatch) -> None`` and must be idempotent (a batch is
handled again after a crash). The worker runs them in order and acknowledges the batch's
offsets only when all returned. Later steps (OneID profile updates, the Feast push) add
their handler to the list; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from lastmile.streaming import seen
from lastmile.streaming.sink import BatchHandler, StreamSink, WrittenBatch
from lastmile.streaming.topics import ACTIONS_TOPIC, QUARANTINE_TOPIC
from lastmile.streaming.triggers import COMPENSATE, WELCOME, Action, Welcomes, compensations

if TYPE_CHECKING:
    from lastmile.audiences.contact_rules import ContactDesk

#: Publishes ``(key, value)`` messages to a topic and returns once the broker acknowledged them.
Publisher = Callable[[str, Sequence[tuple[bytes | None, bytes]]], Awaitable[None]]


#: The largest quarantine copy sent to the topic, in bytes. Brokers refuse messages over
#: ``message.max.bytes`` (1 MiB by default), and a rejected payload, quoted inside the
#: quarantine record's JSON, can grow past the size it was consumed at: a refused send would
#: fail the batch, and the worker would re-read and fail it again after every restart.
TOPIC_COPY_MAX_BYTES = 512 * 1024


def topic_copy(line: bytes, limit: int = TOPIC_COPY_MAX_BYTES) -> bytes:
    """The quarantine record as the topic carries it: whole, or - when larger than ``limit`` -
    with its payload cut to fit and ``payload_truncated``/``payload_bytes`` saying so (the
    quarantine table keeps the whole payload)."""
    import orjson

    if len(line) <= limit:
        return line
    record = orjson.loads(line)
    payload = str(record.get("payload") or "")
    record.update(payload="", payload_truncated=True, payload_bytes=len(payload.encode()))
    # Cut by characters, then check: escaping (quotes, control characters) and UTF-8 can make
    # the cut longer in bytes than in characters, so shrink until it fits.
    cut = payload[: max(0, limit - len(orjson.dumps(record)))]
    while cut:
        record["payload"] = cut
        out = orjson.dumps(record)
        if len(out) <= limit:
            return out
        cut = cut[: len(cut) * 3 // 4]
    record["payload"] = ""
    return orjson.dumps(record)


def quarantine_topic(publish: Publisher) -> BatchHandler:
    """Copy each quarantine record (reason, error, payload) to ``lastmile.quarantine``.

    The table is the durable record; the topic lets operations alert on bad producers in
    real time. Keyed by source partition, so one partition's rejects stay in order. A copy
    over :data:`TOPIC_COPY_MAX_BYTES` carries the start of its payload only (:func:`topic_copy`).
    """
    import orjson

    async def handle(batch: WrittenBatch) -> None:
        if batch.batch.quarantined:
            messages = [(orjson.loads(line)["source"].encode(), topic_copy(line)) for line in batch.batch.quarantined]
            await publish(QUARANTINE_TOPIC, messages)

    return handle


def triggers(sink: StreamSink, publish: Publisher, known: set[str] | None = None,
             desk: "ContactDesk | None" = None, clock: Callable[[], datetime] | None = None,
             replaced: Collection[str] = (), hand_over: Callable[[list[Action]], Awaitable[None]] | None = None) -> BatchHandler:
    """Compensation and welcome actions to ``lastmile.actions``; then remember the new identifiers.

    The order matters: actions are published before the new tokens are stored, so a crash
    in between repeats a welcome (same ``action_id``) instead of losing it.

    With a ``desk`` (:class:`~lastmile.audiences.contact_rules.ContactDesk`), every action
    is decided by the contact rules at ``clock()`` (default: now) first and only the allowed
    ones are published; refusals land in ``contact_refusals`` with their reason. Decisions
    are idempotent by ``action_id``, so a batch handled again publishes the same actions.

    ``replaced``: built-in triggers a journey took over (see :mod:`lastmile.journeys.stream`):
    their compensations are not made, their welcomes go to ``hand_over`` instead of the topic
    (still before the new identifiers are stored).
    """
    welcomes = Welcomes(known if known is not None else seen.load(sink.warehouse))

    def allowed(actions: list[Action]) -> list[Action]:
        assert desk is not None
        at = clock() if clock else datetime.now(timezone.utc)
        return [a for a, d in zip(actions, desk.decide_actions(actions, at)) if d.allowed]

    async def handle(batch: WrittenBatch) -> None:
        actions = compensations(batch) if COMPENSATE not in replaced else []
        welcome_actions, new_rows = welcomes.decide(batch)
        if WELCOME in replaced:
            if welcome_actions and hand_over is not None:
                await hand_over(welcome_actions)
            welcome_actions = []
        actions += welcome_actions
        if actions and desk is not None:
            actions = await sink.run_blocking(allowed, actions)
        if actions:
            await publish(ACTIONS_TOPIC, [(a.key(), a.to_json()) for a in actions])
        if new_rows:
            await sink.run_blocking(seen.record, sink.warehouse, new_rows)

    return handle
