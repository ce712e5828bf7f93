"""Engine-agnostic ingest: raw payloads in, warehouse rows and quarantine records out.

Both the Beam backfill and the Faust stream call this, so an event is judged the same way
whichever path it takes. A payload becomes exactly one of two things: a row for its raw
table, or a quarantine record with the reason — nothing is dropped, which is why
``read == valid + quarantined`` holds for every batch.

Work is done a batch at a time: per-event Python overhead is what limits ingest speed, so
the loop below is kept short and rows are handed to ClickHouse as JSONEachRow for it to parse.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import orjson

from lastmile.contracts import ContractError, EventParser
from lastmile.warehouse import Warehouse
from lastmile.warehouse.tables import IdentifierHasher, RowMapper, mappers

#: Quarantine keeps payloads up to this size; larger ones are cut (and the cut is said).
MAX_QUARANTINE_PAYLOAD = 1 << 20


@dataclass
class Batch:
    """The outcome of ingesting one batch of payloads."""

    rows: dict[str, list[bytes]] = field(default_factory=dict)  # raw table -> JSONEachRow lines
    quarantined: list[bytes] = field(default_factory=list)  # quarantine JSONEachRow lines
    read: int = 0
    valid: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def quarantine_count(self) -> int:
        return len(self.quarantined)


class Ingestor:
    """Validates payloads against the contracts and maps them to rows.

    ``hasher`` turns direct identifiers into keyed tokens before anything is stored.
    """

    def __init__(self, hasher: IdentifierHasher, parser: EventParser | None = None) -> None:
        self.parser = parser or EventParser()
        self._mappers: dict[str, RowMapper] = mappers(hasher)

    def process(self, source: str, records: Iterable[tuple[int, bytes]]) -> Batch:
        """Ingest ``(position, payload)`` records read from ``source`` (a file or a topic)."""
        batch = Batch()
        received_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        parse = self.parser.parse
        source_json = orjson.dumps(source)
        for position, payload in records:
            batch.read += 1
            try:
                event = parse(payload)
            except ContractError as exc:
                batch.quarantined.append(_quarantine_line(source, position, payload, exc, received_at))
                batch.reasons[exc.reason] += 1
                continue
            mapper = self._mappers[event["event_type"]]
            batch.rows.setdefault(mapper.table, []).append(mapper.line(event, payload, source, source_json))
            batch.valid += 1
        return batch


def _quarantine_line(source: str, position: int, payload: bytes, exc: ContractError, received_at: str) -> bytes:
    text = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else str(payload)
    error = exc.message
    if len(text) > MAX_QUARANTINE_PAYLOAD:
        text = text[:MAX_QUARANTINE_PAYLOAD]
        error += f" (payload cut to {MAX_QUARANTINE_PAYLOAD} bytes in quarantine)"
    event_type, event_id = exc.event_type or "", ""
    if exc.reason not in ("not_json", "oversized"):
        try:
            head = orjson.loads(payload)
            if isinstance(head, dict):
                event_type = event_type or str(head.get("event_type") or "")[:64]
                event_id = str(head.get("event_id") or "")[:64]
        except orjson.JSONDecodeError:
            pass
    return orjson.dumps(
        {
            "received_at": received_at,
            "source": source,
            "position": position,
            "event_type": event_type,
            "event_id": event_id,
            "reason": exc.reason,
            "error": error,
            "payload": text,
        }
    )


def write(warehouse: Warehouse, batch: Batch) -> int:
    """Write a batch's rows and quarantine records; returns the number of valid rows written."""
    written = 0
    for table, lines in batch.rows.items():
        written += warehouse.insert_json_lines(table, lines)
    warehouse.insert_json_lines("quarantine", batch.quarantined)
    return written
