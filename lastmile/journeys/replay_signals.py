"""The stream's signals over events a batch ingest loaded: what the main job's replay notes.

``new_neighbour`` and ``replenishment_due`` are found by the stream worker as events arrive
(:mod:`lastmile.journeys.signals`). After a batch ingest there was no worker, so the replay
asks the same definitions over the loaded rows, day by day:

* ``new_neighbour``: :class:`~lastmile.journeys.signals.NewNeighbours` decides the rows of each
  replayed stretch, in event order, over the identifiers seen before the replayed window. The
  signal's id is the naming event's id, as in the stream, so a replay run twice (or a stream
  that saw the same events) notes the same signal once.
* ``replenishment_due``: :class:`~lastmile.journeys.signals.DueReplenishments` evaluated once a
  day at ``evaluate_at`` local time (the main job passes the end of the contact rules' quiet
  hours: the first moment a nudge may go out), over the purchases up to that moment.
* ``neighbour_joined``: :func:`~lastmile.journeys.signals.neighbours_joined` over the first
  orders of each replayed stretch (the residents' responses among them).

The seen identifiers stay in this process: the stream's own memory
(:mod:`lastmile.streaming.seen`) belongs to the real-time path and is not written.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, time, timedelta, timezone, tzinfo
from typing import Any, cast

from lastmile.journeys.engine import Event
from lastmile.journeys.signals import (NEIGHBOUR_JOINED, NEW_NEIGHBOUR, REPLENISHMENT_DUE, DueReplenishments, NewNeighbours,
                                      neighbours_joined)
from lastmile.journeys.store import note, warehouse_time
from lastmile.streaming.seen import person_columns
from lastmile.warehouse import Warehouse, quote_ident

#: Columns of a raw row that ``new_neighbour`` reads besides the identifiers (its fields).
_SIGNAL_COLUMNS = ("event_id", "occurred_at", "community_id", "channel", "source")


class _StoredRows:
    """Raw rows of one stretch of event time, read back from the warehouse, as a stream batch offers them."""

    def __init__(self, rows: dict[str, list[dict[str, Any]]]) -> None:
        self._rows = rows

    def rows(self, table: str) -> list[dict[str, Any]]:
        return self._rows.get(table, [])


class ReplaySignals:
    """The signals of the journeys' event types over a replayed window (see the module docstring)."""

    def __init__(self, warehouse: Warehouse, event_types: Iterable[str], start: datetime, zone: tzinfo,
                 evaluate_at: time = time(8, 0)) -> None:
        self.warehouse = warehouse
        self.zone = zone
        self.evaluate_at = evaluate_at
        wanted = set(event_types)
        present = set(warehouse.tables())
        self.tables = {t: p for t, p in person_columns().items() if t in present} if NEW_NEIGHBOUR in wanted else {}
        self.columns = {t: self._columns(t, [c for c, _ in p.columns]) for t, p in self.tables.items()}
        self.neighbours = NewNeighbours(self._seen_before(start)) if self.tables else None
        self.replenishments = DueReplenishments(warehouse) if REPLENISHMENT_DUE in wanted else None
        self.joined = NEIGHBOUR_JOINED in wanted

    def _columns(self, table: str, identifiers: list[str]) -> list[str]:
        names = set(self.warehouse.query(f"SELECT * FROM {quote_ident(table)} LIMIT 0").column_names)
        return [c for c in (*_SIGNAL_COLUMNS, *identifiers) if c in names]

    def _seen_before(self, start: datetime) -> set[str]:
        """Every identifier of an event at or before ``start``: the people known when the window opens."""
        parts = [f"SELECT {quote_ident(column)} AS token FROM {quote_ident(table)} "
                 f"WHERE occurred_at <= {{start:DateTime64(3, 'UTC')}} AND {quote_ident(column)} != ''"
                 for table, p in self.tables.items() for column, _ in p.columns]
        if not parts:
            return set()
        return {row[0] for row in self.warehouse.rows(f"SELECT DISTINCT token FROM ({' UNION ALL '.join(parts)})",
                                                      {"start": warehouse_time(start)})}

    def new_neighbours(self, since: datetime, until: datetime) -> list[Event]:
        """``new_neighbour`` of the rows that happened after ``since`` up to ``until``."""
        if self.neighbours is None:
            return []
        rows: dict[str, list[dict[str, Any]]] = {}
        for table, columns in self.columns.items():
            result = self.warehouse.query(
                f"SELECT {', '.join(quote_ident(c) for c in columns)} FROM {quote_ident(table)} FINAL "
                "WHERE occurred_at > {since:DateTime64(3, 'UTC')} AND occurred_at <= {until:DateTime64(3, 'UTC')}",
                {"since": warehouse_time(since), "until": warehouse_time(until)})
            rows[table] = [{k: v for k, v in zip(result.column_names, r) if v is not None and v != ""} for r in result.result_rows]
        events, _ = self.neighbours.decide(cast(Any, _StoredRows(rows)))
        return events

    def due(self, since: datetime, until: datetime) -> list[Event]:
        """``replenishment_due`` at the evaluation moment of each local day between ``since`` and ``until``."""
        if self.replenishments is None:
            return []
        events: list[Event] = []
        day = since.astimezone(self.zone).date()
        while True:
            moment = datetime.combine(day, self.evaluate_at, tzinfo=self.zone).astimezone(timezone.utc)
            if moment > until:
                return events
            if moment > since:
                events.extend(self.replenishments.evaluate(moment))
            day += timedelta(days=1)

    def note(self, since: datetime, until: datetime, due: bool = True) -> int:
        """Note the signals of ``(since, until]`` in the journeys' inbox; ``due``: evaluate
        ``replenishment_due`` too (not past the loaded data: no purchases to be due after)."""
        events = self.new_neighbours(since, until) + (self.due(since, until) if due else [])
        if self.joined:
            events += neighbours_joined(self.warehouse, since, until)
        return note(self.warehouse, events)


__all__ = ["ReplaySignals"]
