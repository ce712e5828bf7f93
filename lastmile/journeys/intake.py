"""Events as journeys see them: a raw row's top-level contract fields, without identifiers.

The stream notes the rows of a batch (:func:`events_from_rows`); ``lastmile journey tick
--since`` notes what a batch ingest loaded (:func:`backfill`). Either way an event enters
the inbox with its id, type and time; the person behind it comes from ``event_oneid`` once
OneID has resolved it. Identifier columns (keyed hashes) and free text are left out: a
journey filters on what an event *is* (``kind``, ``reason``, ``stars``, ``order_id``), not
on who sent it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from lastmile.audiences.definition import EVENT_TABLES
from lastmile.contracts import contract, parse_timestamp
from lastmile.journeys import store
from lastmile.journeys.engine import Event
from lastmile.warehouse import Warehouse, quote_ident

_ENVELOPE = {"event_id", "event_type", "schema_version", "occurred_at"}


@lru_cache(maxsize=None)
def journey_fields(event_type: str) -> tuple[str, ...]:
    """The fields of an event type a journey may filter on: top-level plain values of its contract."""
    properties = contract(event_type).properties
    return tuple(sorted(k for k, v in properties.items()
                        if k not in _ENVELOPE and k != "text" and v.get("type") not in ("object", "array")))


def _time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    text = str(value).replace(" ", "T")
    return parse_timestamp(text if ("+" in text[10:] or text.endswith("Z") or "-" in text[10:]) else text + "+00:00")


def events_from_rows(event_type: str, rows: Iterable[dict[str, Any]]) -> list[Event]:
    """Inbox events (person unknown yet) from raw rows of one event type."""
    names = journey_fields(event_type)
    return [Event(row["event_id"], event_type, "", _time(row["occurred_at"]),
                  {n: row[n] for n in names if row.get(n) is not None}) for row in rows]


def backfill(warehouse: Warehouse, event_types: Iterable[str], since: datetime, until: datetime | None = None) -> int:
    """Note the loaded events of ``event_types`` that happened after ``since`` (up to ``until``)
    and are not in the inbox yet; returns how many. For events that reached the warehouse
    by a batch ingest rather than the stream."""
    store.ensure_tables(warehouse)
    present = set(warehouse.tables())
    noted = 0
    for event_type in sorted(event_types):
        table = EVENT_TABLES.get(event_type)
        if table is None or table not in present:
            continue
        names = journey_fields(event_type)
        columns = ", ".join(quote_ident(n) for n in ("event_id", "occurred_at", *names))
        bound = "AND occurred_at <= {until:DateTime64(3, 'UTC')}" if until else ""
        result = warehouse.query(
            f"SELECT {columns} FROM {quote_ident(table)} FINAL WHERE occurred_at > {{since:DateTime64(3, 'UTC')}} {bound} "
            "AND event_id NOT IN (SELECT event_id FROM journey_inbox WHERE event_type = {type:String}) ORDER BY occurred_at, event_id",
            {"since": store.warehouse_time(since), "until": store.warehouse_time(until), "type": event_type})
        rows = [dict(zip(result.column_names, r)) for r in result.result_rows]
        noted += store.note(warehouse, events_from_rows(event_type, rows))
    return noted
