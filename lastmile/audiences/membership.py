"""Evaluating audiences over the warehouse and publishing their membership with its history.

Three tables, created on first use:

* ``audience_membership_changes`` — append-only history: who entered or left which audience,
  when, under which version of its definition, and why;
* ``audience_members`` — the current members (ReplacingMergeTree with a deleted flag: read
  it with ``FINAL``, which shows exactly the people in each audience now);
* ``audience_versions`` — every published definition, by version (a hash of the rule).

A refresh compares what an audience selects now with what is published and writes only the
difference, so refreshing again without a change in the data (or the definition) writes
nothing: consumers of the history never see the same entry twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from lastmile.audiences.definition import EVENT_TABLES, TRAITS_VIEW, Audience, AudienceError
from lastmile.warehouse import Warehouse

TABLES_SQL = (
    """CREATE TABLE IF NOT EXISTS audience_membership_changes (
    audience LowCardinality(String) COMMENT 'Audience name (audiences/*.yml).',
    version String COMMENT 'Hash of the definition that decided the change.',
    oneid String COMMENT 'The person.',
    change Enum8('enter' = 1, 'exit' = 2) COMMENT 'enter or exit.',
    at DateTime64(3, 'UTC') COMMENT 'When the refresh published it (UTC).',
    reason String COMMENT 'Why, in words: which definition version the person now matches or no longer matches.'
) ENGINE = MergeTree ORDER BY (audience, oneid, at)""",
    """CREATE TABLE IF NOT EXISTS audience_members (
    audience LowCardinality(String) COMMENT 'Audience name.',
    oneid String COMMENT 'The person.',
    version String COMMENT 'Definition version the membership was last confirmed under.',
    entered_at DateTime64(3, 'UTC') COMMENT 'When the person entered (UTC).',
    updated_at DateTime64(3, 'UTC') COMMENT 'When this row was written (UTC).',
    is_deleted UInt8 COMMENT '1: the person left (hidden by FINAL).'
) ENGINE = ReplacingMergeTree(updated_at, is_deleted) ORDER BY (audience, oneid)""",
    """CREATE TABLE IF NOT EXISTS audience_versions (
    audience LowCardinality(String) COMMENT 'Audience name.',
    version String COMMENT 'Hash of the definition.',
    kind LowCardinality(String) COMMENT 'sql or rule.',
    definition String COMMENT 'The predicate or the rule (JSON) as published.',
    owner String COMMENT 'Owner named in the file.',
    published_at DateTime64(3, 'UTC') COMMENT 'First refresh under this version (UTC).'
) ENGINE = ReplacingMergeTree(published_at) ORDER BY (audience, version)""",
)

SAMPLE_SIZE = 10


@dataclass
class Evaluation:
    """An audience evaluated against the published membership (what a refresh would write)."""

    audience: Audience
    members: set[str]
    published: dict[str, str]  # oneid -> version it is published under
    as_of: datetime | None
    entries: list[str] = field(default_factory=list)
    exits: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.entries = sorted(self.members - self.published.keys())
        self.exits = sorted(self.published.keys() - self.members)

    @property
    def restated(self) -> list[str]:
        """Members who stay but were published under another version of the definition."""
        return sorted(o for o in self.members if o in self.published and self.published[o] != self.audience.version)

    def summary(self) -> dict[str, Any]:
        """Size, entries, exits and a sample, as the command line and the API print it."""
        return {
            "audience": self.audience.name,
            "version": self.audience.version,
            "size": len(self.members),
            "published_size": len(self.published),
            "entries": len(self.entries),
            "exits": len(self.exits),
            "restated": len(self.restated),
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "sample_entries": self.entries[:SAMPLE_SIZE],
            "sample_exits": self.exits[:SAMPLE_SIZE],
            "sample_members": sorted(self.members)[:SAMPLE_SIZE],
        }


def ensure_tables(warehouse: Warehouse) -> None:
    for statement in TABLES_SQL:
        warehouse.command(statement)


def newest_event_time(warehouse: Warehouse) -> datetime | None:
    """"Now" for event rules: the newest event in the raw tables, so an evaluation of the same
    data gives the same members whenever it runs."""
    present = set(warehouse.tables())
    tables = [t for t in EVENT_TABLES.values() if t in present]
    if not tables:
        return None
    newest = warehouse.scalar("SELECT max(t) FROM (" + " UNION ALL ".join(f"SELECT max(occurred_at) AS t FROM {t}" for t in tables) + ")")
    if newest is None or newest.year <= 1970:
        return None
    return newest if newest.tzinfo else newest.replace(tzinfo=timezone.utc)


def _published(warehouse: Warehouse, name: str) -> dict[str, str]:
    if "audience_members" not in warehouse.tables():
        return {}
    return dict(warehouse.rows("SELECT oneid, version FROM audience_members FINAL WHERE audience = {a:String}", {"a": name}))


def select_members(warehouse: Warehouse, audience: Audience, as_of: datetime | None) -> set[str]:
    """The OneIDs the audience selects in ``audience_traits`` now."""
    present = set(warehouse.tables())
    if TRAITS_VIEW not in present:
        raise AudienceError(f"the warehouse has no {TRAITS_VIEW} table yet: build the marts first (lastmile transform)")
    compiled = audience.compile()
    parameters = dict(compiled.parameters)
    if compiled.uses_events:
        missing = [t for t in ("event_oneid", *EVENT_TABLES.values()) if t not in present]
        if missing:
            raise AudienceError(f"{audience.path}: event rules need {', '.join(missing)} in the warehouse (ingest and run the identity stage)")
        if as_of is None:
            raise AudienceError(f"{audience.path}: event rules count events up to the newest one, and the warehouse has none")
        parameters["as_of"] = as_of.astimezone(timezone.utc).replace(tzinfo=None)
    sql = f"SELECT oneid FROM {TRAITS_VIEW} WHERE {compiled.predicate}"
    try:
        return {row[0] for row in warehouse.rows(sql, parameters)}
    except Exception as exc:  # the engine's message says what is wrong with a sql: predicate
        if type(exc).__module__.startswith("clickhouse_connect") or "DB::Exception" in str(exc):
            raise AudienceError(f"{audience.path}: the warehouse refused the audience's predicate: {' '.join(str(exc).split())[:400]}") from None
        raise


def evaluate(warehouse: Warehouse, audience: Audience, as_of: datetime | None = None) -> Evaluation:
    """What the audience selects now, next to its published membership (nothing is written)."""
    as_of = as_of or newest_event_time(warehouse)
    return Evaluation(audience, select_members(warehouse, audience, as_of), _published(warehouse, audience.name), as_of)


def refresh(warehouse: Warehouse, audience: Audience, as_of: datetime | None = None, now: datetime | None = None) -> Evaluation:
    """Evaluate and publish: entries and exits into the history, the current members updated.

    Writes only the difference to what is published; a definition seen for the first time is
    recorded in ``audience_versions``, and members who stay under a new version have their
    row updated to it (their entry time kept).
    """
    ensure_tables(warehouse)
    result = evaluate(warehouse, audience, as_of)
    version = audience.version
    at = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(tzinfo=None)
    known = warehouse.scalar("SELECT count() FROM audience_versions WHERE audience = {a:String} AND version = {v:String}",
                             {"a": audience.name, "v": version})
    if not known:
        definition = audience.sql if audience.sql is not None else json.dumps(audience.rule, ensure_ascii=False, sort_keys=True)
        warehouse.insert_rows("audience_versions", [(audience.name, version, audience.kind, definition, audience.owner, at)],
                              ["audience", "version", "kind", "definition", "owner", "published_at"])
    changes = [(audience.name, version, oneid, "enter", at, f"matches {audience.name} version {version}") for oneid in result.entries]
    changes += [(audience.name, version, oneid, "exit", at,
                 f"no longer matches {audience.name} version {version}"
                 + (f" (entered under {result.published[oneid]})" if result.published[oneid] != version else ""))
                for oneid in result.exits]
    warehouse.insert_rows("audience_membership_changes", changes, ["audience", "version", "oneid", "change", "at", "reason"])
    restated = result.restated
    entered_at: dict[str, Any] = {}
    if restated:
        entered_at = dict(warehouse.rows(
            "SELECT oneid, entered_at FROM audience_members FINAL WHERE audience = {a:String} AND oneid IN {o:Array(String)}",
            {"a": audience.name, "o": restated}))
    rows = [(audience.name, oneid, version, at, at, 0) for oneid in result.entries]
    rows += [(audience.name, oneid, version, entered_at.get(oneid, at), at, 0) for oneid in restated]
    rows += [(audience.name, oneid, result.published[oneid], at, at, 1) for oneid in result.exits]
    warehouse.insert_rows("audience_members", rows, ["audience", "oneid", "version", "entered_at", "updated_at", "is_deleted"])
    return result
