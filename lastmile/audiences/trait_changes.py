"""Whose traits changed since the traits were last seen: so a refresh evaluates only them.

A dbt build rebuilds ``audience_traits`` whole, yet from one build to the next only a small
share of people get different traits. An audience over traits alone (no event conditions, no
clock, no other table) selects a person by that person's row only, so when its membership was
published from one state of the traits, only the people whose rows differ in the next state
can enter or leave.

A *snapshot* is one state of the traits table, named by a 64-bit id and recognised by a token:
the table's identity and its active parts (a MergeTree table's rows cannot change without its
parts changing, so the same token means the same rows). The first refresh that meets a new
token hashes every row (``sipHash64(oneid)`` as the key, ``cityHash64`` of the whole row) and
compares the hashes with those of the latest snapshot:

* ``audience_trait_hashes`` — the row hashes of the latest snapshot (one partition a snapshot;
  older partitions are dropped once the next is recorded);
* ``audience_changed_people`` — the keys of the people added, removed or changed since the
  previous snapshot;
* ``audience_changed_traits`` — the current rows of those people (same columns as the traits);
* ``audience_trait_snapshots`` — one row a snapshot: token, id and the snapshot the changed
  people are relative to. It is written last, so a snapshot whose row exists is complete; a
  build cut short is redone by the next refresh (its token differs from the recorded one).

An audience's stored fingerprint names the snapshot its membership was last published from:
the same one means nothing it reads changed, the previous one means only the changed people
need evaluating, anything else means a full comparison. Like the rest of a refresh, this
assumes the traits are not rebuilt while a refresh runs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from lastmile.audiences.definition import TRAITS_VIEW, Audience
from lastmile.warehouse import Warehouse

HASHES = "audience_trait_hashes"
CHANGED_PEOPLE = "audience_changed_people"
CHANGED_TRAITS = "audience_changed_traits"
SNAPSHOTS = "audience_trait_snapshots"

TABLES_SQL = (
    f"""CREATE TABLE IF NOT EXISTS {SNAPSHOTS} (
    token String COMMENT 'Identity and active parts of audience_traits when it was hashed: the same token, the same rows.',
    snapshot UInt64 COMMENT 'Id of this state of the traits (named in audience_fingerprints.traits_snapshot).',
    previous UInt64 COMMENT 'Snapshot the changed people are relative to (0: none).',
    changed UInt64 COMMENT 'People added, removed or changed since the previous snapshot.',
    created_at DateTime64(3, 'UTC') COMMENT 'When the snapshot was recorded (UTC); the newest row is the current snapshot.'
) ENGINE = MergeTree ORDER BY created_at""",
    f"""CREATE TABLE IF NOT EXISTS {HASHES} (
    snapshot UInt64 COMMENT 'The snapshot.',
    key UInt64 COMMENT 'sipHash64(oneid).',
    row_hash UInt64 COMMENT 'cityHash64 of the whole traits row.'
) ENGINE = MergeTree PARTITION BY snapshot ORDER BY tuple()""",
    f"""CREATE TABLE IF NOT EXISTS {CHANGED_PEOPLE} (
    key UInt64 COMMENT 'sipHash64(oneid) of a person added, removed or changed since the previous snapshot.'
) ENGINE = MergeTree ORDER BY key""",
)

#: Functions and words that make a ``sql:`` predicate depend on more than the person's row
#: (the clock, randomness, dictionaries, other tables, neighbouring rows). Such audiences are
#: always compared in full; a false alarm only costs time.
_NOT_ROW_LOCAL = re.compile(
    r"\b(select|from|join\w*|global\w*|now\w*|today|yesterday|rand\w*|generate\w*|dict\w*|current\w*|"
    r"hostname|uptime|blocknumber|rownumber\w*|neighbor|running\w*|getsetting|serveruuid|\w*queryid|"
    r"filesystem\w*)\b|\bin\s+[a-z_`\"]", re.IGNORECASE)

#: The state of the traits, one column for a SELECT list (a refresh reads it with the
#: audience's fingerprint): the table's uuid ('' when it is not a MergeTree table), its active
#: parts, and the newest recorded snapshot.
STATE = f"""tuple(
    (SELECT if(engine LIKE '%MergeTree', toString(uuid), '') FROM system.tables WHERE database = currentDatabase() AND name = '{TRAITS_VIEW}'),
    (SELECT arrayStringConcat(arraySort(groupArray(name)), ',') FROM system.parts
     WHERE database = currentDatabase() AND table = '{TRAITS_VIEW}' AND active),
    (SELECT argMax(tuple(token, snapshot, previous), created_at) FROM {SNAPSHOTS}))"""


@dataclass(frozen=True)
class TraitSnapshot:
    """The current state of the traits and the state its changed people are relative to."""

    snapshot: int
    #: 0 when there is no earlier snapshot to compare with
    previous: int


def row_local(audience: Audience) -> bool:
    """True when the audience selects a person by that person's traits row alone."""
    if audience.sql is not None:
        return not _NOT_ROW_LOCAL.search(audience.sql)
    return not audience.compile().uses_events


def current_snapshot(warehouse: Warehouse) -> TraitSnapshot | None:
    """The snapshot of the traits as they are now, recorded first if the traits changed.

    None when the traits are not a MergeTree table (a view has no parts to recognise a state
    by): audiences are then compared in full. The tables of ``TABLES_SQL`` must exist.
    """
    return snapshot_from(warehouse, warehouse.scalar("SELECT " + STATE))


def snapshot_from(warehouse: Warehouse, state: tuple) -> TraitSnapshot | None:
    """``current_snapshot`` from a ``STATE`` read already."""
    uuid, parts, (recorded_token, recorded, recorded_previous) = state
    if not uuid:
        return None
    token = f"{uuid}/{parts}"
    if token == recorded_token:
        return TraitSnapshot(int(recorded), int(recorded_previous))
    return _record(warehouse, token, int(recorded) if recorded_token else 0)


def _record(warehouse: Warehouse, token: str, previous: int) -> TraitSnapshot:
    """Hash the traits, find who changed since ``previous`` and record the new snapshot."""
    snapshot = int.from_bytes(hashlib.sha256(token.encode()).digest()[:8], "big") or 1
    _drop_partitions(warehouse, keep={previous})  # a build cut short may have left its rows
    warehouse.command(f"INSERT INTO {HASHES} SELECT {snapshot}, sipHash64(oneid), cityHash64(*) FROM {TRAITS_VIEW}")
    changed = 0
    if previous:
        warehouse.command(f"TRUNCATE TABLE {CHANGED_PEOPLE}")
        # changed: not exactly one row on each side with the same hash
        warehouse.command(f"""INSERT INTO {CHANGED_PEOPLE} SELECT key FROM {HASHES} WHERE snapshot IN ({previous}, {snapshot})
GROUP BY key HAVING NOT (countIf(snapshot = {previous}) = 1 AND countIf(snapshot = {snapshot}) = 1 AND min(row_hash) = max(row_hash))""")
        warehouse.command(f"CREATE OR REPLACE TABLE {CHANGED_TRAITS} ENGINE = MergeTree ORDER BY tuple() AS SELECT * FROM {TRAITS_VIEW} "
                          f"WHERE sipHash64(oneid) IN (SELECT key FROM {CHANGED_PEOPLE})")
        changed = int(warehouse.scalar(f"SELECT count() FROM {CHANGED_PEOPLE}"))
    warehouse.command(f"INSERT INTO {SNAPSHOTS} (token, snapshot, previous, changed, created_at) VALUES "
                      "({t:String}, {s:UInt64}, {p:UInt64}, {c:UInt64}, {at:DateTime64(3, 'UTC')})",
                      {"t": token, "s": snapshot, "p": previous, "c": changed, "at": datetime.now(timezone.utc).replace(tzinfo=None)})
    _drop_partitions(warehouse, keep={snapshot})
    return TraitSnapshot(snapshot, previous)


def _drop_partitions(warehouse: Warehouse, keep: set[int]) -> None:
    partitions = warehouse.rows("SELECT DISTINCT partition FROM system.parts WHERE database = currentDatabase() "
                                "AND table = {t:String} AND active", {"t": HASHES})
    for (partition,) in partitions:
        if int(partition) not in keep:
            warehouse.command(f"ALTER TABLE {HASHES} DROP PARTITION {int(partition)}")
