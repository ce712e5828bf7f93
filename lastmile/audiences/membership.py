"""Evaluating audiences over the warehouse and publishing their membership with its history.

Four tables, created on first use:

* ``audience_membership_changes`` — append-only history: who entered or left which audience,
  when, under which version of its definition, and why;
* ``audience_members`` — the current members (ReplacingMergeTree with a deleted flag: the
  newest row of a person, by ``updated_at``, says whether they are in; ``FINAL`` shows exactly
  the people in each audience now);
* ``audience_versions`` — every published definition, by version (a hash of the rule);
* ``audience_fingerprints`` — per audience, the version, size and fingerprint (XOR of
  ``sipHash64(oneid)``) of the membership last published: read with ``argMax`` by time.

A refresh compares what an audience selects now with what is published and writes only the
difference, so refreshing again without a change in the data (or the definition) writes
nothing: consumers of the history never see the same entry twice. The comparison and the
writes are statements over the warehouse (INSERT ... SELECT): members never travel through
Python.

Once an audience is published under its current version, a refresh is one statement that
evaluates the predicate once and writes the entries and exits straight from the comparison
with the published members (each person once, with the side they are on, in one grouped
pass); the members table and the size and fingerprint then follow from what was written. The
published members are read without ``FINAL``: the same grouped pass takes each person's
newest row by ``argMax`` (``FINAL`` would merge the table's parts a second time before the
grouping). The history has a min-max index on ``at``, so reading back what one refresh wrote
skips every earlier refresh's rows. A first refresh, or one under a new version of the
definition, first compares in full (restating who stays under the new version); ``evaluate``
(a preview) checks the fingerprint first and reads the published members only when it
differs. A refresh assumes the traits are not rebuilt while it runs.

An audience over traits alone (``trait_changes.row_local``) also records which state of the
traits (a snapshot, :mod:`lastmile.audiences.trait_changes`) its membership was evaluated
over: when that is the current state, a refresh has nothing to evaluate; when it is the state
before, the comparison runs only over the people whose traits changed in between (a dbt
build changes a few per cent of them), so its cost follows the changes, not the audience's size.

A rule with event conditions records the "now", ingestion watermark and OneID state it was
evaluated at; the next refresh evaluates and compares only the people whose events, links,
windows or traits can have changed since (:mod:`lastmile.audiences.event_changes`), or
everyone when that cannot be bounded.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from lastmile.audiences import event_changes, trait_changes
from lastmile.audiences.definition import EVENT_TABLES, TRAITS_VIEW, Audience, AudienceError, Compiled
from lastmile.audiences.event_changes import EventState
from lastmile.audiences.trait_changes import TraitSnapshot
from lastmile.warehouse import Warehouse

TABLES_SQL = (
    """CREATE TABLE IF NOT EXISTS audience_membership_changes (
    audience LowCardinality(String) COMMENT 'Audience name (audiences/*.yml).',
    version String COMMENT 'Hash of the definition that decided the change.',
    oneid String COMMENT 'The person.',
    change Enum8('enter' = 1, 'exit' = 2) COMMENT 'enter or exit.',
    at DateTime64(3, 'UTC') COMMENT 'When the refresh published it (UTC).',
    reason String COMMENT 'Why, in words: which definition version the person now matches or no longer matches.',
    INDEX at_minmax at TYPE minmax GRANULARITY 1
) ENGINE = MergeTree ORDER BY (audience, oneid, at)""",
    # tables created before the index: new parts get it (a refresh reads back only its own part)
    "ALTER TABLE audience_membership_changes ADD INDEX IF NOT EXISTS at_minmax at TYPE minmax GRANULARITY 1",
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
    """CREATE TABLE IF NOT EXISTS audience_fingerprints (
    audience LowCardinality(String) COMMENT 'Audience name.',
    version String COMMENT 'Definition version the membership was published under.',
    size UInt64 COMMENT 'Members published.',
    fingerprint UInt64 COMMENT 'groupBitXor(sipHash64(oneid)) over the published members.',
    traits_snapshot UInt64 DEFAULT 0 COMMENT 'State of audience_traits the membership was evaluated over (audience_trait_snapshots; 0: unknown).',
    updated_at DateTime64(3, 'UTC') COMMENT 'When the refresh wrote it (UTC); the newest row counts.'
) ENGINE = ReplacingMergeTree(updated_at) ORDER BY audience""",
    "ALTER TABLE audience_fingerprints ADD COLUMN IF NOT EXISTS traits_snapshot UInt64 DEFAULT 0 AFTER fingerprint",
    "ALTER TABLE audience_fingerprints ADD COLUMN IF NOT EXISTS events_as_of DateTime64(3, 'UTC') DEFAULT 0 "
    "COMMENT 'Event rules: the as_of (\"now\") of the windows the membership was evaluated at (UTC).' AFTER traits_snapshot",
    "ALTER TABLE audience_fingerprints ADD COLUMN IF NOT EXISTS events_ingested DateTime64(3, 'UTC') DEFAULT 0 "
    "COMMENT 'Event rules: newest _ingested_at of the rule''s event tables when it was evaluated (UTC).' AFTER events_as_of",
    "ALTER TABLE audience_fingerprints ADD COLUMN IF NOT EXISTS events_links String DEFAULT '' "
    "COMMENT 'Event rules: state of event_oneid when it was evaluated (empty: unknown).' AFTER events_ingested",
    *trait_changes.TABLES_SQL,
    *event_changes.TABLES_SQL,
)

SAMPLE_SIZE = 10

#: What an audience selects now (``{predicate}`` filled in), and what is published for it.
_CURRENT = "SELECT oneid FROM " + TRAITS_VIEW + " WHERE {predicate}"
#: Every row of the published members (all of a person's rows; the newest one counts).
_PUBLISHED = ("SELECT oneid, 2 AS side, version, entered_at, updated_at, is_deleted FROM audience_members "
              "WHERE audience = {audience:String}")
#: Every person on either side once: ``now`` (selected now), ``before`` (published: their
#: newest row, by ``updated_at``, is not a deletion; a deletion wins a tie), and the published
#: version and entry time (``{current}`` replaced). No ``FINAL``: the grouping that compares
#: the sides also picks each person's newest row.
_SIDES = """SELECT oneid, max(side = 1) AS now,
       argMaxIf(tuple(is_deleted = 0, version, entered_at), (updated_at, is_deleted), side = 2) AS published,
       published.1 AS before, published.2 AS published_version, published.3 AS published_entered_at
FROM (SELECT oneid, 1 AS side, '' AS version, toDateTime64(0, 3, 'UTC') AS entered_at,
             toDateTime64(0, 3, 'UTC') AS updated_at, toUInt8(0) AS is_deleted FROM ({current})
      UNION ALL
      """ + _PUBLISHED + """)
GROUP BY oneid"""
#: The same comparison when every published member is under the audience's current version
#: (a refresh after the first under that version): only whether each person is in, so the
#: grouping keeps one number per person, their newest row's time in milliseconds with the
#: deleted flag in the low bits (a deletion wins a tie), instead of a version and a time.
_LEAN_SIDES = """SELECT oneid, max(side = 1) AS now, bitAnd(maxIf(newest, side = 2), 1) = 1 AS before,
       {version:String} AS published_version
FROM (SELECT oneid, 1 AS side, toUInt64(0) AS newest FROM ({current})
      UNION ALL
      SELECT oneid, 2 AS side, toUInt64(toUInt64(toUnixTimestamp64Milli(updated_at)) * 4 + is_deleted * 2 + (1 - is_deleted)) AS newest
      FROM audience_members WHERE audience = {audience:String}{among})
GROUP BY oneid"""
#: Narrows the published side of ``_LEAN_SIDES`` to the people whose traits changed.
_AMONG_CHANGED = f" AND sipHash64(oneid) IN (SELECT key FROM {trait_changes.CHANGED_PEOPLE})"
#: Size, fingerprint and a sample of what the audience selects now, next to the published
#: fingerprint (version, size, fingerprint; empty version when never published).
_FINGERPRINT = """SELECT count(), groupBitXor(sipHash64(oneid)), groupArraySorted(""" + str(SAMPLE_SIZE) + """)(oneid),
    (SELECT argMax(tuple(version, size, fingerprint), updated_at) FROM audience_fingerprints WHERE audience = {audience:String})
FROM ({current})"""


@dataclass
class Evaluation:
    """An audience evaluated against its published membership: what a refresh writes."""

    audience: Audience
    as_of: datetime | None
    size: int
    published_size: int
    entries: int
    exits: int
    #: members who stay but were published under another version of the definition
    restated: int
    sample_entries: list[str] = field(default_factory=list)
    sample_exits: list[str] = field(default_factory=list)
    sample_members: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Size, entries, exits and a sample, as the command line prints it."""
        return {
            "audience": self.audience.name,
            "version": self.audience.version,
            "size": self.size,
            "published_size": self.published_size,
            "entries": self.entries,
            "exits": self.exits,
            "restated": self.restated,
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "sample_entries": self.sample_entries,
            "sample_exits": self.sample_exits,
            "sample_members": self.sample_members,
        }


#: Clients whose warehouse has the tables already (checked once per connection, not per refresh).
_READY: "weakref.WeakSet[Any]" = weakref.WeakSet()


def ensure_tables(warehouse: Warehouse) -> None:
    """Create the membership tables if missing; once per connection (a refresh of 20 audiences
    would otherwise spend more on these statements than on some of its comparisons)."""
    if warehouse.client in _READY:
        return
    for statement in TABLES_SQL:
        warehouse.command(statement)
    _READY.add(warehouse.client)


def _record_fingerprint(warehouse: Warehouse, audience: str, version: str, size: int, fingerprint: int, at: datetime,
                        snapshot: TraitSnapshot | None, events: EventState | None = None) -> None:
    state = events or EventState.stored(None, None, "")
    warehouse.command("INSERT INTO audience_fingerprints (audience, version, size, fingerprint, traits_snapshot, events_as_of, "
                      "events_ingested, events_links, updated_at) VALUES ({a:String}, {v:String}, {n:UInt64}, {f:UInt64}, {s:UInt64}, "
                      "{ea:DateTime64(3, 'UTC')}, {ei:DateTime64(3, 'UTC')}, {el:String}, {at:DateTime64(3, 'UTC')})",
                      {"a": audience, "v": version, "n": size, "f": fingerprint, "s": snapshot.snapshot if snapshot else 0,
                       "ea": state.as_of, "ei": state.ingested, "el": state.links, "at": at})


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


def _query(warehouse: Warehouse, audience: Audience, as_of: datetime | None, present: set[str] | None = None) -> tuple[str, dict[str, Any]]:
    """The audience's SELECT of current members and its parameters (``audience``, ``version`` too);
    ``present``: the tables known to exist, when the caller knows them."""
    present = present or set(warehouse.tables())
    if TRAITS_VIEW not in present:
        raise AudienceError(f"the warehouse has no {TRAITS_VIEW} table yet: build the marts first (lastmile transform)")
    compiled = audience.compile()
    parameters = dict(compiled.parameters, audience=audience.name, version=audience.version)
    if compiled.uses_events:
        missing = [t for t in ("event_oneid", *EVENT_TABLES.values()) if t not in present]
        if missing:
            raise AudienceError(f"{audience.path}: event rules need {', '.join(missing)} in the warehouse (ingest and run the identity stage)")
        if as_of is None:
            raise AudienceError(f"{audience.path}: event rules count events up to the newest one, and the warehouse has none")
        parameters["as_of"] = as_of.astimezone(timezone.utc).replace(tzinfo=None)
    return _CURRENT.format(predicate=compiled.predicate), parameters


def _run(warehouse: Warehouse, audience: Audience, call: Any) -> Any:
    try:
        return call()
    except Exception as exc:  # the engine's message says what is wrong with a sql: predicate
        if type(exc).__module__.startswith("clickhouse_connect") or "DB::Exception" in str(exc):
            raise AudienceError(f"{audience.path}: the warehouse refused the audience's predicate: {' '.join(str(exc).split())[:400]}") from None
        raise


def select_members(warehouse: Warehouse, audience: Audience, as_of: datetime | None = None) -> set[str]:
    """The OneIDs the audience selects in ``audience_traits`` now (``as_of`` default: the newest event)."""
    current, parameters = _query(warehouse, audience, as_of or newest_event_time(warehouse))
    return {row[0] for row in _run(warehouse, audience, lambda: warehouse.rows(current, parameters))}


def evaluate(warehouse: Warehouse, audience: Audience, as_of: datetime | None = None) -> Evaluation:
    """What the audience selects now, next to its published membership (nothing is published)."""
    ensure_tables(warehouse)
    return _compare(warehouse, audience, _fingerprint(warehouse, audience, as_of))


@dataclass
class _Fingerprint:
    """One pass over the people an audience selects now, next to what is stored as published."""

    as_of: datetime | None
    current: str
    parameters: dict[str, Any]
    size: int
    fingerprint: int
    sample: list[str]
    #: version, size and fingerprint of the published membership ('' version: none stored)
    stored: tuple[str, int, int]

    def unchanged(self, audience: Audience) -> bool:
        """Same version, size and fingerprint: the published membership is what is selected."""
        return self.stored == (audience.version, self.size, self.fingerprint)


def _fingerprint(warehouse: Warehouse, audience: Audience, as_of: datetime | None) -> _Fingerprint:
    as_of = as_of or newest_event_time(warehouse)
    current, parameters = _query(warehouse, audience, as_of)
    size, fingerprint, sample, stored = _run(warehouse, audience, lambda: warehouse.rows(_FINGERPRINT.replace("{current}", current), parameters))[0]
    return _Fingerprint(as_of, current, parameters, int(size), int(fingerprint), list(sample),
                        (str(stored[0]), int(stored[1]), int(stored[2])))


def _compare(warehouse: Warehouse, audience: Audience, fp: _Fingerprint) -> Evaluation:
    """Entries, exits and restated members; the published membership is only read when the
    fingerprint differs, so an unchanged audience costs one pass over the people it selects."""
    if fp.unchanged(audience):
        return Evaluation(audience, fp.as_of, fp.size, fp.size, 0, 0, 0, sample_members=fp.sample)
    sql = f"""
SELECT countIf(now), countIf(before), countIf(now AND NOT before), countIf(before AND NOT now),
       countIf(now AND before AND published_version != {{version:String}}),
       groupArraySortedIf({SAMPLE_SIZE})(oneid, now AND NOT before),
       groupArraySortedIf({SAMPLE_SIZE})(oneid, before AND NOT now),
       groupArraySortedIf({SAMPLE_SIZE})(oneid, now)
FROM ({_SIDES.replace("{current}", fp.current)})"""
    row = _run(warehouse, audience, lambda: warehouse.rows(sql, fp.parameters))[0]
    size, published, entries, exits, restated = (int(v) for v in row[:5])
    return Evaluation(audience, fp.as_of, size, published, entries, exits, restated,
                      sample_entries=list(row[5]), sample_exits=list(row[6]), sample_members=list(row[7]))


def refresh(warehouse: Warehouse, audience: Audience, as_of: datetime | None = None, now: datetime | None = None) -> Evaluation:
    """Evaluate and publish: entries and exits into the history, the current members updated.

    Writes only the difference to what is published; a definition seen for the first time is
    recorded in ``audience_versions``, and members who stay under a new version have their
    row updated to it (their entry time kept). Returns the evaluation that was published.
    When the published membership is under this version already, the entries and exits are
    written straight from the comparison (one evaluation of the predicate) and counted from
    what was written.
    """
    ensure_tables(warehouse)
    return _refresh(warehouse, audience, as_of or newest_event_time(warehouse), now)


@dataclass(frozen=True)
class _Shared:
    """Candidates staged once for event audiences published from the same state."""

    label: str
    before: EventState
    state: EventState
    published_snapshot: int
    snapshot: TraitSnapshot


def _refresh(warehouse: Warehouse, audience: Audience, as_of: datetime | None, now: datetime | None,
             shared: _Shared | None = None) -> Evaluation:
    stored, traits_state = warehouse.rows(_STATE, {"a": audience.name})[0]
    by_events = event_changes.incremental(audience) and as_of is not None and event_changes.readable(warehouse, audience.compile())
    snapshot = trait_changes.snapshot_from(warehouse, traits_state) if by_events or trait_changes.row_local(audience) else None
    events = None
    if by_events:
        events = (shared.state if shared is not None and shared.snapshot == snapshot
                  else event_changes.current_state(warehouse, audience.compile(), as_of))
    direct = _refresh_directly(warehouse, audience, as_of, now, (str(stored[0]), *(int(v) for v in stored[1:4])), snapshot,
                               events and (EventState.stored(*stored[4:]), events), shared)
    if direct is not None:
        return direct
    fp = _fingerprint(warehouse, audience, as_of)
    if fp.unchanged(audience):  # the fingerprint is written after the version, so the version is recorded
        return _compare(warehouse, audience, fp)
    version = audience.version
    at = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(tzinfo=None)
    known = warehouse.scalar(
        "SELECT count() FROM audience_versions WHERE audience = {a:String} AND version = {v:String}", {"a": audience.name, "v": version})
    if not known:
        definition = audience.sql if audience.sql is not None else json.dumps(audience.rule, ensure_ascii=False, sort_keys=True, default=str)
        warehouse.insert_rows("audience_versions", [(audience.name, version, audience.kind, definition, audience.owner, at)],
                              ["audience", "version", "kind", "definition", "owner", "published_at"])
    result = _compare(warehouse, audience, fp)
    if result.entries or result.exits or result.restated:
        _publish(warehouse, audience, fp, at, restate=bool(result.restated))
    _record_fingerprint(warehouse, audience.name, version, fp.size, fp.fingerprint, at, snapshot, events)
    return result


def refresh_all(warehouse: Warehouse, audiences: list[Audience], as_of: datetime | None = None,
                now: datetime | None = None) -> list[Evaluation]:
    """``refresh`` of each audience, those over traits alone published from the traits build
    before the current one together: their entries and exits among the changed people are
    written by one statement per table for all of them, instead of five statements each.
    Returns the evaluations in the order of ``audiences``."""
    ensure_tables(warehouse)
    as_of = as_of or newest_event_time(warehouse)
    names = [a.name for a in audiences]
    local = [a for a in audiences if trait_changes.row_local(a)]
    snapshot = trait_changes.current_snapshot(warehouse) if local and len(set(names)) == len(names) else None
    together: list[tuple[Audience, tuple[str, int, int, int]]] = []
    if snapshot is not None and snapshot.previous:
        rows = warehouse.rows("SELECT audience, argMax(tuple(version, size, fingerprint, traits_snapshot), updated_at) "
                              "FROM audience_fingerprints WHERE audience IN {names:Array(String)} GROUP BY audience",
                              {"names": [a.name for a in local]})
        stored = {str(name): (str(t[0]), int(t[1]), int(t[2]), int(t[3])) for name, t in rows}
        together = [(a, stored[a.name]) for a in local if a.name in stored and stored[a.name][0] == a.version
                    and stored[a.name][3] in (snapshot.previous, snapshot.snapshot)]
    results = _refresh_together(warehouse, together, snapshot, as_of, now) if together else {}
    shared = _stage_shared(warehouse, [a for a in audiences if a.name not in results], as_of) if len(set(names)) == len(names) else {}
    try:
        return [results[a.name] if a.name in results else _refresh(warehouse, a, as_of, now, shared.get(a.name)) for a in audiences]
    finally:
        for label in {s.label for s in shared.values()}:
            event_changes.drop(warehouse, label)


def _stage_shared(warehouse: Warehouse, audiences: list[Audience], as_of: datetime | None) -> dict[str, _Shared]:
    """Candidates staged once for the event audiences published under their current version
    from the same event state and traits build (two or more): by audience name."""
    events = [a for a in audiences if event_changes.incremental(a)]
    if len(events) < 2 or as_of is None or not all(event_changes.readable(warehouse, a.compile()) for a in events):
        return {}
    rows = warehouse.rows("SELECT audience, argMax(tuple(version, traits_snapshot, events_as_of, events_ingested, events_links), updated_at) "
                          "FROM audience_fingerprints WHERE audience IN {names:Array(String)} GROUP BY audience",
                          {"names": [a.name for a in events]})
    stored = {str(name): t for name, t in rows}
    groups: dict[tuple, list[Audience]] = {}
    for a in events:
        t = stored.get(a.name)
        if t is not None and t[0] == a.version and t[4]:
            groups.setdefault((int(t[1]), EventState.stored(*t[2:])), []).append(a)
    groups = {k: v for k, v in groups.items() if len(v) >= 2}
    if not groups:
        return {}
    snapshot = trait_changes.current_snapshot(warehouse)
    shared: dict[str, _Shared] = {}
    for n, ((published_snapshot, before), members) in enumerate(groups.items()):
        if snapshot is None or published_snapshot not in (snapshot.snapshot, snapshot.previous or -1):
            continue
        windows = tuple(w for a in members for w in a.compile().windows)
        union = Compiled("", {}, True, windows)
        state = event_changes.current_state(warehouse, union, as_of)
        label = f"shared-{n}"  # not an audience name (no "-" in those)
        if event_changes.stage_candidates(warehouse, label, union, before, state, traits_changed=published_snapshot != snapshot.snapshot):
            shared.update({a.name: _Shared(label, before, state, published_snapshot, snapshot) for a in members})
    return shared


def _refresh_together(warehouse: Warehouse, together: list[tuple[Audience, tuple[str, int, int, int]]],
                      snapshot: TraitSnapshot, as_of: datetime | None, now: datetime | None) -> dict[str, Evaluation]:
    """``_refresh_directly`` of audiences over traits alone, published from ``snapshot`` or the one before."""
    at = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(tzinfo=None)
    behind = [(a, stored) for a, stored in together if stored[3] == snapshot.previous]
    keys = [f"{a.name}/{a.version}" for a, _ in behind]
    parameters: dict[str, Any] = {"at": at, "keys": keys}
    branches = []
    for i, (audience, _) in enumerate(behind):
        current, own = _query(warehouse, audience, as_of, {TRAITS_VIEW})
        current = current.replace(f"FROM {TRAITS_VIEW} WHERE", f"FROM {trait_changes.CHANGED_TRAITS} AS {TRAITS_VIEW} WHERE", 1)
        sides = _LEAN_SIDES.replace("{among}", _AMONG_CHANGED).replace("{current}", current)
        # each audience's parameters under its own prefix; ``at`` is shared
        branches.append(re.sub(r"\{(?!at:)(\w+):", rf"{{q{i}_\1:", _CHANGES.replace("{sides}", sides)))
        parameters.update({f"q{i}_{k}": v for k, v in own.items()})
    of_refresh = "concat(audience, '/', version) IN {keys:Array(String)} AND at = {at:DateTime64(3, 'UTC')}"
    written: dict[str, tuple] = {}
    if behind:
        try:
            warehouse.command(_INSERT_CHANGES + "\nUNION ALL".join(branches), parameters)
        except Exception as exc:
            if not (type(exc).__module__.startswith("clickhouse_connect") or "DB::Exception" in str(exc)):
                raise
            if warehouse.scalar(f"SELECT count() FROM audience_membership_changes WHERE {of_refresh}", parameters):
                raise AudienceError(f"the warehouse stopped a refresh of {', '.join(a.name for a, _ in behind)} midway: "
                                    f"{' '.join(str(exc).split())[:300]}") from None
            return {}  # nothing written: each audience is refreshed on its own, and the one at fault named
        warehouse.command("INSERT INTO audience_members (audience, oneid, version, entered_at, updated_at, is_deleted) "
                          f"SELECT audience, oneid, version, at, at, change = 'exit' FROM audience_membership_changes WHERE {of_refresh}", parameters)
        written = {str(row[0]): row[1:] for row in warehouse.rows(f"""
SELECT audience, countIf(change = 'enter'), countIf(change = 'exit'), groupBitXor(sipHash64(oneid)),
       groupArraySortedIf({SAMPLE_SIZE})(oneid, change = 'enter'), groupArraySortedIf({SAMPLE_SIZE})(oneid, change = 'exit')
FROM audience_membership_changes WHERE {of_refresh} GROUP BY audience""", parameters)}
    samples = {str(name): rows for name, rows in warehouse.rows(_SAMPLES, {"names": [a.name for a, _ in together], "n": _SAMPLE_WINDOW})}
    results: dict[str, Evaluation] = {}
    fingerprints = []
    for audience, (version, size, fingerprint, published_snapshot) in together:
        entries, exits, changed, sample_entries, sample_exits = written.get(audience.name, (0, 0, 0, [], []))
        entries, exits = int(entries), int(exits)
        if published_snapshot != snapshot.snapshot:  # XOR removes who left and adds who entered
            fingerprints.append((audience.name, version, size + entries - exits, fingerprint ^ int(changed)))
        results[audience.name] = Evaluation(audience, as_of, size + entries - exits, size, entries, exits, 0,
                                            sample_entries=list(sample_entries), sample_exits=list(sample_exits),
                                            sample_members=_sample_from(warehouse, audience.name, samples.get(audience.name, [])))
    if fingerprints:
        warehouse.command("INSERT INTO audience_fingerprints (audience, version, size, fingerprint, traits_snapshot, updated_at) "
                          "SELECT f.1, f.2, f.3, f.4, {s:UInt64}, {at:DateTime64(3, 'UTC')} "
                          "FROM (SELECT arrayJoin({f:Array(Tuple(String, String, UInt64, UInt64))}) AS f)",
                          {"f": fingerprints, "s": snapshot.snapshot, "at": at})
    return results


def stored_fingerprint(warehouse: Warehouse, audience: str) -> tuple[str, int, int]:
    """Version, size and fingerprint last published for ``audience`` (``('', 0, 0)``: none)."""
    stored = warehouse.rows("SELECT argMax(tuple(version, size, fingerprint), updated_at) FROM audience_fingerprints WHERE audience = {a:String}",
                            {"a": audience})[0][0]
    return str(stored[0]), int(stored[1]), int(stored[2])


#: What a refresh starts from, in one round trip: the version, size, fingerprint and traits
#: snapshot last published for the audience, and the state of the traits.
_STATE = ("SELECT (SELECT argMax(tuple(version, size, fingerprint, traits_snapshot, events_as_of, events_ingested, events_links), "
          "updated_at) FROM audience_fingerprints "
          "WHERE audience = {a:String}), " + trait_changes.STATE)


def _refresh_directly(warehouse: Warehouse, audience: Audience, as_of: datetime | None, now: datetime | None,
                      stored: tuple[str, int, int, int], snapshot: TraitSnapshot | None,
                      events: tuple[EventState, EventState] | None = None, shared: _Shared | None = None) -> Evaluation | None:
    """Refresh an audience published under its current version, evaluating the predicate once.

    A fingerprint pass (one evaluation) followed by the comparison (a second) would double
    the cost of every changed refresh, and a dbt build brings changes. Instead the
    comparison writes the entries and exits at once (none when nothing changed), and the
    size and fingerprint follow from the stored ones and what was written. None when there
    is no stored fingerprint under this version (first refresh, changed definition): the
    full path then restates and records the version.

    With a ``snapshot`` of the traits (an audience over traits alone): published from this
    snapshot, nothing it reads changed and nothing is evaluated; published from the previous
    one, only the people whose traits changed are evaluated and compared.

    With ``events`` (an event rule: the event state it was published at, and the current
    one): only the people :mod:`lastmile.audiences.event_changes` finds are evaluated and
    compared, unless the change since cannot be bounded (then everyone is).
    """
    version, published_size, published_fingerprint, published_snapshot = stored
    if version != audience.version:
        return None
    if events is not None:
        return _refresh_events(warehouse, audience, as_of, now, stored, snapshot, *events, shared)
    if snapshot is not None and published_snapshot == snapshot.snapshot:
        return Evaluation(audience, as_of, published_size, published_size, 0, 0, 0,
                          sample_members=sample_members(warehouse, audience.name))
    changed_only = snapshot is not None and snapshot.previous != 0 and published_snapshot == snapshot.previous
    current, parameters = _query(warehouse, audience, as_of, {TRAITS_VIEW} if snapshot is not None else None)
    if changed_only:  # the predicate reads only the person's row: the changed rows stand for the traits
        current = current.replace(f"FROM {TRAITS_VIEW} WHERE", f"FROM {trait_changes.CHANGED_TRAITS} AS {TRAITS_VIEW} WHERE", 1)
    fp = _Fingerprint(as_of, current, parameters, published_size, published_fingerprint, [], (version, published_size, published_fingerprint))
    at = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(tzinfo=None)
    _publish(warehouse, audience, fp, at, restate=False, lean=True, among=_AMONG_CHANGED if changed_only else "")
    moved = snapshot is not None and published_snapshot != snapshot.snapshot
    return _written(warehouse, audience, as_of, at, stored, snapshot, moved, None)


def _refresh_events(warehouse: Warehouse, audience: Audience, as_of: datetime | None, now: datetime | None,
                    stored: tuple[str, int, int, int], snapshot: TraitSnapshot | None, before: EventState,
                    state: EventState, shared: _Shared | None = None) -> Evaluation:
    """``_refresh_directly`` of an event rule: among the candidates since ``before`` when they
    can be bounded (traits: published from this build or the one before), else everyone.
    ``shared``: candidates staged already, used when staged from this audience's state."""
    version, published_size, published_fingerprint, published_snapshot = stored
    label = audience.name
    if shared is not None and (shared.before, shared.state, shared.published_snapshot, shared.snapshot) == (
            before, state, published_snapshot, snapshot):
        narrowed, own, label = True, False, shared.label
    else:
        traits_bounded = snapshot is not None and (published_snapshot == snapshot.snapshot
                                                   or (snapshot.previous != 0 and published_snapshot == snapshot.previous))
        narrowed = own = traits_bounded and snapshot is not None and event_changes.stage_candidates(
            warehouse, label, audience.compile(), before, state, traits_changed=published_snapshot != snapshot.snapshot)
    current, parameters = _query(warehouse, audience, as_of)
    if narrowed:
        compiled = audience.compile(among=event_changes.AMONG_LINKS)
        current = (f"SELECT oneid FROM {TRAITS_VIEW} WHERE sipHash64(oneid) IN ({event_changes.AMONG}) "
                   f"AND {compiled.predicate}")
        parameters = dict(compiled.parameters, audience=audience.name, version=audience.version, as_of=parameters["as_of"],
                          candidates=label)
    fp = _Fingerprint(as_of, current, parameters, published_size, published_fingerprint, [], (version, published_size, published_fingerprint))
    at = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(tzinfo=None)
    try:
        _publish(warehouse, audience, fp, at, restate=False, lean=True,
                 among=f" AND sipHash64(oneid) IN ({event_changes.AMONG})" if narrowed else "")
    finally:
        if own:
            event_changes.drop(warehouse, label)
    moved = state != before or snapshot is None or published_snapshot != snapshot.snapshot
    return _written(warehouse, audience, as_of, at, stored, snapshot, moved, state)


def _written(warehouse: Warehouse, audience: Audience, as_of: datetime | None, at: datetime, stored: tuple[str, int, int, int],
             snapshot: TraitSnapshot | None, moved: bool, events: EventState | None) -> Evaluation:
    """The evaluation a direct refresh published at ``at``, its fingerprint recorded when the
    membership or the state it was evaluated over (``moved``) changed."""
    version, published_size, published_fingerprint, _ = stored
    entries, exits, changed, sample_entries, sample_exits, sample = warehouse.rows(f"""
SELECT countIf(change = 'enter'), countIf(change = 'exit'), groupBitXor(sipHash64(oneid)),
       groupArraySortedIf({SAMPLE_SIZE})(oneid, change = 'enter'), groupArraySortedIf({SAMPLE_SIZE})(oneid, change = 'exit'),
       ({_SAMPLE})
FROM audience_membership_changes WHERE audience = {{a:String}} AND at = {{at:DateTime64(3, 'UTC')}} AND version = {{v:String}}""",
                                                                                   {"a": audience.name, "v": version, "at": at,
                                                                                    "n": _SAMPLE_WINDOW})[0]
    entries, exits = int(entries), int(exits)
    size = published_size + entries - exits
    if entries or exits or moved:  # XOR removes who left and adds who entered
        _record_fingerprint(warehouse, audience.name, version, size, published_fingerprint ^ int(changed), at, snapshot, events)
    return Evaluation(audience, as_of, size, published_size, entries, exits, 0,
                      sample_entries=list(sample_entries), sample_exits=list(sample_exits),
                      sample_members=_sample_from(warehouse, audience.name, sample))


#: People read to find a sample of current members without ``FINAL`` (those who left are skipped).
_SAMPLE_WINDOW = 10 * SAMPLE_SIZE


def sample_members(warehouse: Warehouse, audience: str) -> list[str]:
    """The first members of ``audience`` by OneID (at most ``SAMPLE_SIZE``).

    Takes the people of the audience's first rows in key order (all rows of each of them)
    and keeps those whose newest row is not a deletion; only when too many of them left does
    it fall back to ``FINAL``.
    """
    return _sample_from(warehouse, audience, warehouse.scalar(_SAMPLE, {"a": audience, "n": _SAMPLE_WINDOW}))


#: ``_SAMPLE`` of several audiences: (audience, rows).
_SAMPLES = ("SELECT audience, arraySort(groupArray(tuple(oneid, member, n))) FROM (SELECT audience, oneid, "
            "argMax(is_deleted, (updated_at, is_deleted)) = 0 AS member, count() AS n FROM audience_members "
            "WHERE audience IN {names:Array(String)} AND (audience, oneid) IN (SELECT audience, oneid FROM audience_members "
            "WHERE audience IN {names:Array(String)} ORDER BY audience, oneid LIMIT {n:UInt32} BY audience) "
            "GROUP BY audience, oneid) GROUP BY audience")
#: The people of the audience's first rows in key order: (oneid, is a member, rows), by OneID.
_SAMPLE = ("SELECT groupArray(tuple(oneid, member, n)) FROM (SELECT oneid, argMax(is_deleted, (updated_at, is_deleted)) = 0 AS member, "
           "count() AS n FROM audience_members WHERE audience = {a:String} AND oneid IN (SELECT oneid FROM audience_members "
           "WHERE audience = {a:String} ORDER BY oneid LIMIT {n:UInt32}) GROUP BY oneid ORDER BY oneid)")


def _sample_from(warehouse: Warehouse, audience: str, rows: list[tuple[str, bool, int]]) -> list[str]:
    """``sample_members`` from the rows of ``_SAMPLE``."""
    found = [oneid for oneid, member, _ in rows if member][:SAMPLE_SIZE]
    if len(found) < SAMPLE_SIZE and sum(n for _, _, n in rows) >= _SAMPLE_WINDOW:  # more people may follow
        found = [r[0] for r in warehouse.rows(
            f"SELECT oneid FROM audience_members FINAL WHERE audience = {{a:String}} ORDER BY oneid LIMIT {SAMPLE_SIZE}", {"a": audience})]
    return found


#: The entries and exits of one audience (``{sides}`` replaced), as rows of the history.
_INSERT_CHANGES = "INSERT INTO audience_membership_changes (audience, version, oneid, change, at, reason)"
_CHANGES = """
SELECT {audience:String}, {version:String}, oneid, if(now, 'enter', 'exit'), {at:DateTime64(3, 'UTC')},
       if(now, concat('matches ', {audience:String}, ' version ', {version:String}),
          concat('no longer matches ', {audience:String}, ' version ', {version:String},
                 if(published_version != {version:String}, concat(' (entered under ', published_version, ')'), '')))
FROM ({sides}) WHERE now != before"""


def _publish(warehouse: Warehouse, audience: Audience, fp: _Fingerprint, at: datetime, restate: bool, lean: bool = False,
             among: str = "") -> None:
    """Entries and exits into the history, then the current members (and restated ones) updated.
    ``lean``: every published member is under the current version (see ``_LEAN_SIDES``);
    ``among``: a condition on ``oneid`` when ``fp.current`` selects among some people only
    (those whose traits changed, an event rule's candidates), so only their published rows
    are compared."""
    if lean and not restate:
        sides = _LEAN_SIDES.replace("{among}", among).replace("{current}", fp.current)
    else:
        sides = _SIDES.replace("{current}", fp.current)
    parameters = dict(fp.parameters, at=at)
    at_param = "{at:DateTime64(3, 'UTC')}"
    statements = []
    if restate:
        statements.append(f"""
INSERT INTO audience_members (audience, oneid, version, entered_at, updated_at, is_deleted)
SELECT {{audience:String}}, oneid, {{version:String}}, published_entered_at, {at_param}, 0 FROM ({sides})
WHERE now AND before AND published_version != {{version:String}}""")
    # one statement: entries and exits are read against the same published membership
    statements.append(_INSERT_CHANGES + _CHANGES.replace("{sides}", sides))
    statements.append(f"""
INSERT INTO audience_members (audience, oneid, version, entered_at, updated_at, is_deleted)
SELECT audience, oneid, version, at, at, change = 'exit' FROM audience_membership_changes
WHERE audience = {{audience:String}} AND at = {at_param} AND version = {{version:String}}""")
    for statement in statements:
        _run(warehouse, audience, lambda: warehouse.command(statement, parameters))
