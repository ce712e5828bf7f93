"""Which identifiers the platform has seen: the memory behind the ``new_neighbour`` signal.

A person is new when an event carries their identifiers and none of them was seen before
(:class:`lastmile.journeys.signals.NewNeighbours`). The worker keeps the seen tokens (keyed
hashes, never raw values) in memory and in the ``stream_seen_identifiers`` table; it records
a batch's new tokens only after the batch's signals are in the journeys' inbox, so a crash in
between notes the same signals again (same ids) rather than losing them.

When the table is created it is seeded from the identifiers already in the raw tables, so
neighbours loaded by a Beam backfill before the stream first ran are not welcomed again.
Identifiers that reach the warehouse only through later backfills are not added: the
signal belongs to the real-time path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lastmile.contracts import contracts, parse_timestamp
from lastmile.warehouse import Warehouse, quote_ident
from lastmile.warehouse.migrations import MIGRATIONS, Migration, register
from lastmile.warehouse.tables import columns_for

TABLE = "stream_seen_identifiers"
#: Streaming migrations use versions 70-79 so they never collide with other modules' numbers.
MIGRATION_VERSION = 70

DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    token String COMMENT 'Keyed hash of the identifier (as in the raw tables).',
    id_type LowCardinality(String) COMMENT 'phone, unionid, openid, member_card or device_id.',
    first_event_id String COMMENT 'Event that showed the identifier first (as far as the stream knows).',
    first_seen_at DateTime64(3, 'UTC') COMMENT 'Event time of that event.'
)
ENGINE = ReplacingMergeTree
ORDER BY token
COMMENT 'Identifiers seen by the real-time path; an event whose identifiers are all absent is a new neighbour.'
"""


@dataclass(frozen=True)
class PersonColumns:
    """The identifier columns of one raw table that name a person (``buyer_phone`` -> phone)."""

    table: str
    event_type: str
    columns: tuple[tuple[str, str], ...]  # (column, id_type)


def person_columns() -> dict[str, PersonColumns]:
    """Per raw table, its person-identifier columns, derived from the contracts' identifier objects."""
    found: dict[str, PersonColumns] = {}
    for event_type, contract in contracts().items():
        cols = tuple((c.name, c.path[1]) for c in columns_for(contract) if len(c.path) == 2 and c.kind == "pii")
        if cols:
            found[contract.table] = PersonColumns(contract.table, event_type, cols)
    return found


def _seed_sql() -> str:
    parts = [
        f"SELECT {quote_ident(column)} AS token, '{id_type}' AS id_type, event_id, occurred_at "
        f"FROM {quote_ident(p.table)} WHERE {quote_ident(column)} IS NOT NULL"
        for p in person_columns().values()
        for column, id_type in p.columns
    ]
    return (f"INSERT INTO {TABLE} (token, id_type, first_event_id, first_seen_at) "
            "SELECT token, any(id_type), argMin(event_id, occurred_at), min(occurred_at) "
            f"FROM ({' UNION ALL '.join(parts)}) GROUP BY token")


if not any(m.version == MIGRATION_VERSION for m in MIGRATIONS):
    register(Migration(MIGRATION_VERSION, "stream_seen_identifiers", lambda: [DDL, _seed_sql()]))


def load(warehouse: Warehouse) -> set[str]:
    """Every seen token (the table must exist: run migrations first)."""
    return {row[0] for row in warehouse.rows(f"SELECT DISTINCT token FROM {TABLE}")}


def record(warehouse: Warehouse, rows: Iterable[tuple[str, str, str, str]]) -> int:
    """Store ``(token, id_type, first_event_id, first_seen_at ISO)`` rows; repeats collapse on token."""
    data = [(token, id_type, event_id, parse_timestamp(seen_at)) for token, id_type, event_id, seen_at in rows]
    return warehouse.insert_rows(TABLE, data, ["token", "id_type", "first_event_id", "first_seen_at"])
