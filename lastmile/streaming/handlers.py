"""Batch handlers of the worker: what happens to a batch after its warehouse write.

Each handler is ``async (WrittenBatch) -> None`` and must be idempotent (a batch is
handled again after a crash). The worker runs them in order and acknowledges the batch's
offsets only when all returned. Later steps (OneID profile updates, the Feast push) add
their handler to the list; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from lastmile.streaming.sink import BatchHandler, WrittenBatch
from lastmile.streaming.topics import QUARANTINE_TOPIC

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
