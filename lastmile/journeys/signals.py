"""Signals: what the stream worker finds out about people, for journeys to react to.

A signal is not a contract event: the worker derives it and notes it in ``journey_inbox``
like an event, so a journey triggers on it (``trigger: {signal: NAME}``) and the contact
rules decide its sends like any other. The fields each carries are
:data:`~lastmile.journeys.definition.SIGNALS`.

* ``new_neighbour`` (:class:`NewNeighbours`): an event naming a person none of whose
  identifiers was seen before. Decided per batch, in event-time order across tables, so a
  person's order and their sign-up in one batch give one signal, on whichever came first. Its
  id is the id of the event that named the person, so OneID resolves it like that event. The
  seen identifiers (keyed hashes) are :mod:`lastmile.streaming.seen`; a batch's new ones are
  stored after its signals are in the inbox, so a crash in between notes the same signals
  again (the inbox collapses on the id) rather than losing them.
* ``replenishment_due`` (:class:`DueReplenishments`): a staple bought at regular intervals
  (:func:`~lastmile.features.replenishment.due_replenishments`) is due at the stream's time
  and no new purchase came. Clock-driven: evaluated after OneID runs, at most every
  ``every_s``; one per person, SKU and due day (the id ``replenish:<oneid>:<sku>:<due day>``).
* ``neighbour_joined`` (:func:`neighbours_joined`): a person's first order, noted for every
  other person whose home building (``audience_traits.home_building_id``) it was delivered to:
  what a referral asks for, seen from the neighbour who was asked to invite.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from operator import itemgetter
from datetime import datetime, timezone
from typing import Any

from lastmile.features.replenishment import Rhythm, due_replenishments
from lastmile.identity.identifiers import TYPE_NAMES
from lastmile.journeys.engine import Event
from lastmile.journeys.intake import _time
from lastmile.streaming.present import present
from lastmile.streaming.seen import PersonColumns, person_columns
from lastmile.streaming.sink import WrittenBatch
from lastmile.warehouse import Warehouse

NEW_NEIGHBOUR = "new_neighbour"
REPLENISHMENT_DUE = "replenishment_due"
NEIGHBOUR_JOINED = "neighbour_joined"

#: A seen identifier: ``(token, id_type, first event id, first seen at ISO)`` (:func:`lastmile.streaming.seen.record`).
SeenRow = tuple[str, str, str, str]


def _rank(id_type: str) -> int:
    return TYPE_NAMES.index(id_type) if id_type in TYPE_NAMES else len(TYPE_NAMES)


_BY_STRENGTH: dict[PersonColumns, tuple[tuple[str, str], ...]] = {}


def _by_strength(person: PersonColumns) -> tuple[tuple[str, str], ...]:
    """A table's ``(column, id_type)`` person identifiers, strongest first."""
    columns = _BY_STRENGTH.get(person)
    if columns is None:
        columns = _BY_STRENGTH[person] = tuple(sorted(person.columns, key=lambda c: _rank(c[1])))
    return columns


def person_tokens(row: dict[str, Any], ordered: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """``(id_type, token)`` of a row's person identifiers (``ordered``: its table's :func:`_by_strength`),
    strongest first (blocked values skipped)."""
    return [(id_type, row[column]) for column, id_type in ordered if row.get(column)]


class NewNeighbours:
    """The ``new_neighbour`` signal over a set of seen tokens (grown as batches are decided)."""

    def __init__(self, seen: set[str]) -> None:
        self.seen = seen

    def decide(self, batch: WrittenBatch) -> tuple[list[Event], list[SeenRow]]:
        """The batch's ``new_neighbour`` signals, and the identifiers it shows for the first time."""
        seen = self.seen
        # Only rows naming an identifier not seen before can signal or add anything (seen only
        # grows), so the rest - most rows, once a community is known - are not sorted.
        candidates: list[tuple[str, str, dict[str, Any], tuple[tuple[str, str], ...]]] = []
        for table, person in person_columns().items():
            columns = [column for column, _ in person.columns]
            ordered = _by_strength(person)
            for row in batch.rows(table):
                # The C-level test first (no tuples, no list per row): it is most of the rule's cost.
                if not seen.issuperset(filter(None, map(row.get, columns))):
                    candidates.append((row.get("occurred_at") or "", row.get("event_id", ""), row, ordered))
        candidates.sort(key=itemgetter(0, 1))
        events: list[Event] = []
        new_rows: list[SeenRow] = []
        for occurred_at, event_id, row, ordered in candidates:
            tokens = person_tokens(row, ordered)
            fresh = [(id_type, token) for id_type, token in tokens if token not in seen]
            if fresh and len(fresh) == len(tokens):
                fields = {"id_type": tokens[0][0], "community_id": row.get("community_id"),
                          "channel": row.get("channel") or row.get("source")}
                events.append(Event(event_id, NEW_NEIGHBOUR, "", _time(occurred_at),
                                    {k: v for k, v in fields.items() if v is not None}))
            for id_type, token in fresh:
                seen.add(token)
                new_rows.append((token, id_type, event_id, occurred_at))
        return events, new_rows


def stream_time(warehouse: Warehouse) -> datetime | None:
    """The stream's event-time watermark: the oldest of the order partitions' newest order times.

    Partitions are consumed independently; the slowest one says how far the stream surely
    got. Only rows the stream wrote count (``_source`` ``kafka:...``), not backfilled files.
    """
    if not present(warehouse, "raw_order"):
        return None
    value = warehouse.scalar("""
        SELECT min(newest) FROM (SELECT max(occurred_at) AS newest FROM raw_order WHERE startsWith(_source, 'kafka:') GROUP BY _source)
        """)
    if value is None or value.year < 2000:  # min() of nothing is the epoch
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


class DueReplenishments:
    """The ``replenishment_due`` signal: staples due at the stream's time, each found once per process.

    Not evaluated on every change of the stream's day: while a backlog replays, days fly by in
    seconds, and a staple that was due two replayed days ago is noise. After a restart the
    day's signals are found again with the same ids; the inbox and the journeys' run ids
    absorb them.
    """

    def __init__(self, warehouse: Warehouse, every_s: float = 60.0, rhythm: Rhythm = Rhythm(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.warehouse = warehouse
        self.every_s = every_s
        self.rhythm = rhythm
        self.clock = clock
        self.found: set[str] = set()
        self.evaluations = 0
        self._last = float("-inf")

    def due(self) -> bool:
        """Whether ``every_s`` passed since the last evaluation."""
        return self.clock() - self._last >= self.every_s

    def evaluate(self, as_of: datetime | None = None) -> list[Event]:
        """The signals due at ``as_of`` (default: the stream's time) not found before. Hold the warehouse lock."""
        as_of = as_of or stream_time(self.warehouse)
        if as_of is None:
            return []
        self._last = self.clock()
        self.evaluations += 1
        events = [Event(due.action_id, REPLENISHMENT_DUE, due.oneid, as_of,
                        {"sku": due.sku, "due": due.due.isoformat(), "last_purchase": due.last_purchase.isoformat(),
                         "purchases": due.purchases, "mean_interval_days": due.mean_interval_days})
                  for due in due_replenishments(self.warehouse, as_of, self.rhythm) if due.action_id not in self.found]
        self.found.update(e.event_id for e in events)
        return events


def joined_id(oneid: str, order_event_id: str) -> str:
    """The id of ``oneid``'s ``neighbour_joined`` for an order: deterministic (a second find is the
    same inbox row) and without the OneID in clear, so forgetting the person leaves no trace."""
    return "joined-" + hashlib.sha256(f"{oneid}|{order_event_id}".encode()).hexdigest()[:24]


def neighbours_joined(warehouse: Warehouse, since: datetime, until: datetime, by: str = "occurred_at") -> list[Event]:
    """``neighbour_joined`` for the first orders (of their OneID) placed after ``since`` up to
    ``until``: one per person living in the order's building, the buyer aside. The id
    (:func:`joined_id`) makes a second evaluation note nothing new.

    ``by``: the orders' clock the window is on: ``occurred_at`` (a replay of loaded events) or
    ``_ingested_at`` (the stream: an order that arrives late still joins when it arrives)."""
    if by not in ("occurred_at", "_ingested_at"):
        raise ValueError(f"neighbours_joined: by must be occurred_at or _ingested_at, not {by!r}")
    from lastmile.audiences.definition import TRAITS_VIEW
    from lastmile.journeys.store import aware, warehouse_time

    if not present(warehouse, "raw_order", "event_oneid", TRAITS_VIEW):
        return []
    rows = warehouse.rows(f"""
        WITH orders AS (
            SELECT e.oneid AS buyer, r.event_id AS event_id, r.occurred_at AS at, r.building_id AS building_id,
                   r.community_id AS community_id, r.order_id AS order_id
            FROM raw_order AS r INNER JOIN (SELECT event_id, oneid FROM event_oneid WHERE event_type = 'order') AS e
              ON e.event_id = r.event_id
            WHERE r.{by} > {{since:DateTime64(3, 'UTC')}} AND r.{by} <= {{until:DateTime64(3, 'UTC')}}),
        firsts AS (
            SELECT e.oneid AS buyer, min(r.occurred_at) AS first
            FROM raw_order AS r INNER JOIN (SELECT event_id, oneid FROM event_oneid WHERE event_type = 'order'
                                            AND oneid IN (SELECT buyer FROM orders)) AS e ON e.event_id = r.event_id
            GROUP BY e.oneid)
        SELECT t.oneid, o.event_id, o.at, o.building_id, o.community_id, o.order_id
        FROM orders AS o INNER JOIN firsts AS f ON f.buyer = o.buyer AND f.first = o.at
        INNER JOIN (SELECT oneid, home_building_id FROM {TRAITS_VIEW} WHERE home_building_id != '') AS t
          ON t.home_building_id = o.building_id
        WHERE t.oneid != o.buyer
        ORDER BY o.at, o.event_id, t.oneid""", {"since": warehouse_time(since), "until": warehouse_time(until)})
    return [Event(joined_id(oneid, event_id), NEIGHBOUR_JOINED, oneid, aware(at),
                  {"building_id": building, "community_id": community, "order_id": order_id})
            for oneid, event_id, at, building, community, order_id in rows]
