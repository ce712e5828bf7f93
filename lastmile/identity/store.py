"""OneID state in the warehouse: kept evidence, incremental resolution, per-event OneIDs.

Three layers, each a set of ClickHouse tables:

* **Evidence** — ``identity_links``: every identity observation extracted from an event
  (hashed tokens only), written by whichever pipeline ingested the event. A row is keyed on
  its event, so re-ingesting a file or replaying a topic changes nothing; its version keeps
  the *first* ingestion time, which is how a resolve finds what is new since the last one.
* **State** — ``identity_nodes``, ``identity_edges``, ``identity_oneids``,
  ``identity_refusals``, ``identity_changes`` (see :mod:`lastmile.identity.state`), plus
  ``identity_runs``: the resolver's graph and names, versioned by run, so a new process
  continues where the last stopped.
* **Use** — the view ``event_oneid``: the OneID of the person behind each event, which dbt
  and the feature store join on. It is a view, so a merge or split shows at once.

Resolution is incremental: load the state, add the links ingested since the last run,
resolve (rules apply to the whole graph, so the result does not depend on batching), write
the state back. ``rebuild`` re-resolves all kept links under the current rules.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lastmile.identity.links import Link
from lastmile.identity.resolver import IdentityResolver, ResolveReport
from lastmile.identity.rules import Rules
from lastmile.identity.state import TABLES, Selection, Snapshot, changed_since, from_rows, snapshot, to_rows
from lastmile.warehouse import Warehouse
from lastmile.warehouse.migrations import Migration, register

#: identity_links columns, in the order ingest writes them.
LINK_FIELDS = ("a_type", "a_token", "b_type", "b_token", "occurred_at_ms", "event_id", "event_type", "role", "reason", "detail")

_DDL = [
    """
CREATE TABLE IF NOT EXISTS identity_links (
    event_id String COMMENT 'Event the observation comes from.',
    event_type LowCardinality(String),
    role LowCardinality(String) COMMENT 'Which identifier object of the event (buyer, collector, claimant, reviewer, identifiers).',
    a_type LowCardinality(String),
    a_token String COMMENT 'Keyed hash of the identifier; empty when the value itself was refused.',
    b_type LowCardinality(String) COMMENT 'Empty for a sighting (the event had one usable identifier).',
    b_token String,
    occurred_at_ms Int64 COMMENT 'Event time, UTC epoch milliseconds.',
    reason LowCardinality(String) COMMENT 'Empty for usable observations; else why the value was refused at extraction.',
    detail String,
    _ingested_at DateTime64(3, 'UTC') DEFAULT now64(3),
    _first_ingested UInt64 DEFAULT 9000000000000 - toUnixTimestamp64Milli(_ingested_at)
        COMMENT 'Version that keeps the earliest ingestion: re-ingestion never makes evidence look new.'
)
ENGINE = ReplacingMergeTree(_first_ingested)
ORDER BY (event_id, role, a_type, a_token, b_type, b_token, reason)
COMMENT 'Identity evidence: identifiers seen together in one event (hashed). The resolver input, kept for rebuilds.'
""",
    """
CREATE TABLE IF NOT EXISTS identity_nodes (
    token String, id_type LowCardinality(String), first_seen_ms Int64, last_seen_ms Int64,
    oneid String COMMENT 'Profile of this identifier; empty when blocked.',
    shared Bool COMMENT 'Linked to too many people to merge on (a leader phone, a household tablet).',
    run UInt64
) ENGINE = ReplacingMergeTree(run) ORDER BY token
COMMENT 'Every identifier (hashed) and its OneID.'
""",
    """
CREATE TABLE IF NOT EXISTS identity_edges (
    token_a String, type_a LowCardinality(String), token_b String, type_b LowCardinality(String),
    first_seen_ms Int64, last_seen_ms Int64, count UInt64, first_event_id String, first_event_type LowCardinality(String),
    status LowCardinality(String) COMMENT 'used, or the rule that refused the link (shared_identifier, type_limit, merge_cap, blocked_value).',
    run UInt64
) ENGINE = ReplacingMergeTree(run) ORDER BY (token_a, token_b)
COMMENT 'Distinct links between identifiers, with the decision taken on each.'
""",
    """
CREATE TABLE IF NOT EXISTS identity_oneids (
    oneid String, origin_token String, survivor String COMMENT 'OneID standing for this one now (itself while alive; empty when gone).',
    run UInt64
) ENGINE = ReplacingMergeTree(run) ORDER BY oneid
COMMENT 'Every OneID ever issued and where it lives on after merges.'
""",
    """
CREATE TABLE IF NOT EXISTS identity_refusals (
    event_id String, event_type LowCardinality(String), occurred_at_ms Int64, role LowCardinality(String),
    id_type LowCardinality(String), token String, reason LowCardinality(String), detail String
) ENGINE = ReplacingMergeTree ORDER BY (event_id, role, id_type, token, reason)
COMMENT 'Identifier values refused at extraction (blocked, malformed, self-links), without the raw value.'
""",
    """
CREATE TABLE IF NOT EXISTS identity_changes (
    run UInt64, kind LowCardinality(String) COMMENT 'merge, split or removed',
    from_oneid String, to_oneid String, identifiers UInt64
) ENGINE = ReplacingMergeTree ORDER BY (run, kind, from_oneid, to_oneid)
COMMENT 'Change log of profiles, so downstream tables can remap OneIDs.'
""",
    """
CREATE TABLE IF NOT EXISTS identity_runs (
    run UInt64, at DateTime64(3, 'UTC') DEFAULT now64(3), kind LowCardinality(String) COMMENT 'resolve or rebuild',
    resolved_through DateTime64(3, 'UTC') COMMENT 'Evidence ingested up to this time is in the state.',
    links_added UInt64, profiles UInt64, identifiers UInt64, used UInt64, refused UInt64, merges UInt64, splits UInt64
) ENGINE = MergeTree ORDER BY run
COMMENT 'One row per identity resolution.'
""",
]

register(Migration(10, "identity_tables", lambda: [s.strip() for s in _DDL]))

_STATE_SCHEMA: dict[str, list[str]] = {
    "identity_nodes": ["token", "id_type", "first_seen_ms", "last_seen_ms", "oneid", "shared"],
    "identity_edges": ["token_a", "type_a", "token_b", "type_b", "first_seen_ms", "last_seen_ms", "count",
                       "first_event_id", "first_event_type", "status"],
    "identity_oneids": ["oneid", "origin_token", "survivor"],
    "identity_refusals": ["event_id", "event_type", "occurred_at_ms", "role", "id_type", "token", "reason", "detail"],
    "identity_changes": ["run", "kind", "from_oneid", "to_oneid", "identifiers"],
}
_VERSIONED = ("identity_nodes", "identity_edges", "identity_oneids")


def event_oneid_sql(rules: Rules) -> str:
    """The ``event_oneid`` view: each event's person is its strongest non-shared identifier's profile.

    A group-chat order typed with the leader's phone and the neighbour's openid belongs to the
    neighbour: the leader's phone is shared, so it loses to any unshared identifier.

    ``identity_links`` is read once (both identifiers of a row through ARRAY JOIN) and without
    FINAL: copies of a link row share its whole key (event, role, both tokens) and differ only
    in when they were ingested, so they cannot change an argMax or a GROUP BY. Same rows, and
    a filter on ``event_id`` (the incremental dbt model re-resolves a few events) no longer
    merges every part of the table.
    """
    types = list(rules.strength)
    strengths = [int(rules.strength[t]) for t in types]
    return f"""
CREATE OR REPLACE VIEW event_oneid AS
SELECT event_type, event_id,
       argMax(n.oneid, (NOT n.shared, transform(t.id_type, {types!r}, {strengths!r}, 0), t.token)) AS oneid
FROM (
    SELECT event_type, event_id, tok.1 AS token, tok.2 AS id_type
    FROM identity_links ARRAY JOIN [(a_token, a_type), (b_token, b_type)] AS tok
    WHERE reason = '' AND tok.1 != ''
) AS t
INNER JOIN (SELECT token, oneid, shared FROM identity_nodes FINAL WHERE oneid != '') AS n ON n.token = t.token
GROUP BY event_type, event_id
"""


#: Evidence across events: a pickup made by the buyer links the identifiers shown at the
#: locker (usually a phone) with those the order was placed with (an openid, or a member
#: card in a store). This is how "ordered in the mini-program, picked up with a phone"
#: becomes one person. Collections by family, neighbours or the leader link nothing.
PICKUP_BY_BUYER_SQL = """
INSERT INTO identity_links (event_id, event_type, role, a_type, a_token, b_type, b_token, occurred_at_ms, reason, detail)
WITH
    -- Evidence that arrived since the last resolution. Read without FINAL: a replayed copy of
    -- old evidence may look new, which only derives the same links again (identity_links keeps
    -- their first ingestion), and every read below is narrowed to these events' orders.
    new_evidence AS (
        SELECT event_id, role FROM identity_links
        WHERE _ingested_at > {since:DateTime64(3, 'UTC')} AND reason = '' AND role IN ('buyer', 'collector')
    ),
    -- Orders whose evidence arrived since the last resolution: their earlier pickups pair up now.
    new_orders AS (
        SELECT order_id FROM raw_order
        WHERE event_id IN (SELECT event_id FROM new_evidence WHERE role = 'buyer')
    ),
    -- Pickups by the buyer that are new, or whose order is. The raw tables collapse on
    -- event_id keeping the latest ingestion (what FINAL would keep): argMax over the candidate
    -- events' copies reads the same rows as FINAL without merging the whole table.
    pickups AS (
        SELECT event_id, argMax(order_id, _ingested_at) AS order_id FROM raw_pickup
        WHERE event_id IN (SELECT event_id FROM raw_pickup
                           WHERE event_id IN (SELECT event_id FROM new_evidence WHERE role = 'collector')
                              OR order_id IN (SELECT order_id FROM new_orders))
        GROUP BY event_id
        HAVING argMax(collector_role, _ingested_at) = 'buyer'
    ),
    orders AS (
        SELECT event_id, argMax(order_id, _ingested_at) AS order_id FROM raw_order
        WHERE event_id IN (SELECT event_id FROM raw_order WHERE order_id IN (SELECT order_id FROM pickups))
        GROUP BY event_id
    ),
    -- identity_links without FINAL: copies of a link share its whole key and differ only in
    -- when they were ingested (as the event_oneid view reads it); DISTINCT drops them.
    p AS (
        SELECT DISTINCT l.event_id AS event_id, r.order_id AS order_id, l.occurred_at_ms AS occurred_at_ms,
               arrayJoin(arrayFilter(x -> x.2 != '', [(l.a_type, l.a_token), (l.b_type, l.b_token)])) AS id
        FROM identity_links AS l
        INNER JOIN pickups AS r ON r.event_id = l.event_id
        WHERE l.reason = '' AND l.role = 'collector' AND l.event_id IN (SELECT event_id FROM pickups)
    ),
    o AS (
        SELECT DISTINCT r.order_id AS order_id,
               arrayJoin(arrayFilter(x -> x.2 != '', [(l.a_type, l.a_token), (l.b_type, l.b_token)])) AS id
        FROM identity_links AS l
        INNER JOIN orders AS r ON r.event_id = l.event_id
        WHERE l.reason = '' AND l.role = 'buyer' AND l.event_id IN (SELECT event_id FROM orders)
    )
SELECT p.event_id, 'pickup', 'collector=buyer', p.id.1, p.id.2, o.id.1, o.id.2, p.occurred_at_ms, '', concat('order ', p.order_id)
FROM p INNER JOIN o ON o.order_id = p.order_id
WHERE p.id.2 != o.id.2
"""


def derive_cross_event_links(warehouse: Warehouse, since: datetime | None = None) -> None:
    """Add evidence that spans events (see :data:`PICKUP_BY_BUYER_SQL`); idempotent.

    Only pairs where the pickup or the order brought evidence after ``since`` (the last
    resolution's watermark; ``None``: everything) are derived - the rest were derived by
    an earlier resolution - so the cost follows what is new, not the history (the stream
    resolves every few seconds). Re-deriving writes the same keys again; ``identity_links``
    keeps their first ingestion, so only evidence that is really new counts as new.
    """
    warehouse.command(PICKUP_BY_BUYER_SQL, {"since": since or datetime(1970, 1, 1, tzinfo=timezone.utc)})


@dataclass
class ResolveOutcome:
    """What one resolution did, for the CLI and the run summary."""

    run: int
    links_added: int
    report: ResolveReport
    #: Seconds per step (``derive``, ``read``, ``resolve``, ``diff``, ``write``), for logs and benchmarks.
    steps: dict[str, float] = field(default_factory=dict)

    @property
    def merges(self) -> int:
        return sum(1 for c in self.report.changes if c.kind == "merge")

    @property
    def splits(self) -> int:
        return sum(1 for c in self.report.changes if c.kind == "split")


#: Sort order when reading state back: the resolver numbers nodes in read order, so a fixed
#: order makes a restored resolver the same object whatever the storage returned.
_READ_ORDER = {"identity_nodes": "token", "identity_edges": "token_a, token_b", "identity_oneids": "oneid"}


def _read(warehouse: Warehouse, table: str, columns: list[str]) -> pd.DataFrame:
    cols = ", ".join(columns)
    order = f" ORDER BY {_READ_ORDER[table]}" if table in _READ_ORDER else ""
    frame = warehouse.client.query_df(f"SELECT {cols} FROM {table} FINAL{order}")
    return frame if len(frame.columns) else pd.DataFrame(columns=columns)


def _canonical_edges(edges: pd.DataFrame) -> pd.DataFrame:
    """token_a < token_b, so an edge has one key in ``identity_edges`` whichever way it was built."""
    swap = (edges["token_a"] > edges["token_b"]).to_numpy()
    if swap.any():
        edges = edges.copy()
        for left, right in (("token_a", "token_b"), ("type_a", "type_b")):
            a, b = edges[left].to_numpy(copy=True), edges[right].to_numpy(copy=True)
            edges[left] = pd.Series(a).where(~swap, b).to_numpy()
            edges[right] = pd.Series(b).where(~swap, a).to_numpy()
    return edges


def load_state(warehouse: Warehouse, rules: Rules, blocked_tokens: frozenset[str]) -> IdentityResolver:
    """The resolver as the last run left it (empty on a new warehouse)."""
    rows = {t: _read(warehouse, t, cols) for t, cols in _STATE_SCHEMA.items()}
    if rows["identity_nodes"].empty:
        return IdentityResolver(rules, blocked_tokens)
    return from_rows(IdentityResolver(rules, blocked_tokens), rows)


def save_state(warehouse: Warehouse, resolver: IdentityResolver, run: int,
               saved: Snapshot | None = None) -> Snapshot:
    """Write the state back; versioned tables replace their rows, the logs deduplicate.

    With ``saved`` - the state as this process last wrote or read it (see :class:`KeptState`) -
    only the rows that differ from it are built and written: the rest are in the warehouse
    already, so a run costs what changed rather than the whole state. Returns the snapshot
    of what is now saved.
    """
    _insert_state(warehouse, _state_frames(resolver, None if saved is None else changed_since(resolver, saved)), run)
    return snapshot(resolver)


def _insert_state(warehouse: Warehouse, frames: Mapping[str, pd.DataFrame], run: int) -> None:
    for table, frame in frames.items():
        if frame.empty:
            continue
        if table in _VERSIONED:
            frame = frame.assign(run=run)
        warehouse.client.insert_df(table, frame)


@dataclass
class KeptState:
    """A resolver kept in memory between runs by a process that resolves again and again
    (the stream worker, every few seconds), with the rows it last saved.

    Loading the state is O(state) (every node, link and OneID, read back and rebuilt) and so
    was saving it; with a kept state a run reads only the new evidence and writes only the
    rows it changed. The kept copy is used only while it is provably current: the warehouse's
    latest run is the one this process wrote, under the same rules and blocked tokens.
    Anything else (another process resolved or rebuilt, a forget request, a failed run)
    reloads from the warehouse, as :func:`resolve_pending` always does without one.
    """

    resolver: IdentityResolver | None = None
    saved: Snapshot | None = None
    run: int = -1
    rules: Rules | None = None
    blocked: frozenset[str] = frozenset()
    loads: int = 0  # how often the state was (re)loaded from the warehouse
    #: The ``event_oneid`` view this process last created: re-creating an unchanged view costs
    #: a DDL round trip (~0.1 s on chDB) on every run. Forgotten on a reload, which re-creates it.
    view_sql: str = ""

    def current(self, run: int, rules: Rules, blocked: frozenset[str]) -> bool:
        return self.resolver is not None and self.run == run and self.rules == rules and self.blocked == blocked

    def clear(self) -> None:
        self.resolver, self.saved, self.run, self.view_sql = None, None, -1, ""


def _links_since(warehouse: Warehouse, since: datetime | None) -> tuple[pa.Table, datetime | None]:
    """Evidence first ingested after ``since`` (all of it for ``None``), and the new watermark.

    ``FINAL`` keeps each link's first ingestion, so a replayed copy never looks new. It is
    applied only to the events that have a copy ingested after ``since`` (``event_id`` leads
    the table's key, so the other granules are skipped): the same rows as ``FINAL`` over the
    whole table, at a cost that follows what is new rather than the history (the stream
    resolves every few seconds). Read as Arrow, which the resolver takes as it is: a pandas
    frame of Python strings cost twice the query itself.
    """
    where = "" if since is None else (
        "WHERE event_id IN (SELECT event_id FROM identity_links WHERE _ingested_at > {since:DateTime64(3, 'UTC')}) "
        "AND _ingested_at > {since:DateTime64(3, 'UTC')}")
    table = warehouse.client.query_arrow(
        f"SELECT {', '.join(LINK_FIELDS)}, _ingested_at FROM identity_links FINAL {where}",
        parameters={"since": since} if since is not None else None,
    )
    if table.num_rows == 0:
        return table, since
    return table, pc.max(table.column("_ingested_at")).as_py()


def _as_links(table: pa.Table) -> tuple[pa.Table, list[Link]]:
    """Split evidence rows into the usable links and refusals (as :class:`Link`)."""
    refused_rows = pc.not_equal(table.column("reason"), "")
    usable = table.filter(pc.invert(refused_rows))
    sighting = pc.equal(usable.column("b_token"), "")
    for column in ("b_type", "b_token"):  # a sighting has no second identifier: null, not ""
        at = usable.schema.get_field_index(column)
        values = usable.column(column)
        usable = usable.set_column(at, pa.field(column, pa.string()),
                                   pc.if_else(sighting, pa.scalar(None, pa.string()), values))
    refused = [
        Link(r["a_type"], r["a_token"], None, None, int(r["occurred_at_ms"]), r["event_id"], r["event_type"], r["role"],
             r["reason"], r["detail"] or None)
        for r in table.filter(refused_rows).to_pylist()
    ]
    return usable, refused


def resolve_pending(warehouse: Warehouse, rules: Rules, blocked_tokens: frozenset[str],
                    kept: KeptState | None = None, lock: AbstractContextManager | None = None) -> ResolveOutcome:
    """Resolve the evidence ingested since the last run into the kept state.

    ``kept``: continue from a resolver kept in memory (see :class:`KeptState`) instead of
    loading the state from the warehouse, and write only what changed. Same outcome.

    ``lock``: the process's warehouse lock, when other threads use the warehouse meanwhile
    (the stream worker writes batches while OneID resolves). It is held for each warehouse
    step - deriving and reading the new evidence, then writing the state - and released while
    the resolver computes, so batch writes are not held up by the arithmetic. Nothing a batch
    writes in between can be lost: it is ingested after this run's watermark (read under the
    lock), so the next run reads it.
    """
    lock = lock or nullcontext()
    steps: dict[str, float] = {}
    clock = time.perf_counter()

    def step(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        steps[name] = round(steps.get(name, 0.0) + now - clock, 4)
        clock = now

    try:
        with lock:
            last = warehouse.rows("SELECT run, resolved_through FROM identity_runs ORDER BY run DESC LIMIT 1")
            run, since = (int(last[0][0]), last[0][1]) if last else (0, None)
            derive_cross_event_links(warehouse, since)
            step("derive")
            evidence, through = _links_since(warehouse, since)
            if kept is not None and kept.current(run, rules, blocked_tokens):
                resolver, saved = kept.resolver, kept.saved
            else:
                resolver, saved = load_state(warehouse, rules, blocked_tokens), None
                if kept is not None:
                    kept.loads += 1
                    kept.view_sql = ""
                    saved = snapshot(resolver)  # what the warehouse holds now
        step("read")
        assert resolver is not None
        usable, refused = _as_links(evidence)
        if usable.num_rows:
            resolver.add(usable)
        if refused:
            resolver.add(refused)
        report = resolver.resolve()
        step("resolve")
        run += 1
        frames = _state_frames(resolver, None if saved is None else changed_since(resolver, saved))
        saved = snapshot(resolver)
        step("diff")
        with lock:
            _insert_state(warehouse, frames, run)
            _record(warehouse, run, "resolve", through, evidence.num_rows, report)
            view = event_oneid_sql(rules)
            if kept is None or kept.view_sql != view:
                warehouse.command(view)
        step("write")
    except BaseException:
        if kept is not None:
            kept.clear()  # the kept resolver may hold evidence the warehouse's state does not
        raise
    if kept is not None:
        kept.resolver, kept.saved, kept.run, kept.rules, kept.blocked = resolver, saved, run, rules, blocked_tokens
        kept.view_sql = view
    return ResolveOutcome(run, evidence.num_rows, report, steps)


def _state_frames(resolver: IdentityResolver, select: Selection | None = None) -> dict[str, pd.DataFrame]:
    """The resolver's state tables as stored (the stored columns, edges in canonical order):
    every row, or the rows ``select`` names (see :func:`lastmile.identity.state.to_rows`)."""
    rows = {}
    for table, frame in to_rows(resolver, select).items():
        if table in TABLES:
            frame = frame[_STATE_SCHEMA[table]]
            rows[table] = _canonical_edges(frame) if table == "identity_edges" else frame
    return rows


def rebuild(warehouse: Warehouse, rules: Rules, blocked_tokens: frozenset[str]) -> ResolveOutcome:
    """Re-resolve every kept link under ``rules``; the change log records merges and splits."""
    resolver = load_state(warehouse, rules, blocked_tokens)
    report = resolver.rebuild(rules, blocked_tokens)
    last = warehouse.rows("SELECT run, resolved_through FROM identity_runs ORDER BY run DESC LIMIT 1")
    run = (int(last[0][0]) if last else 0) + 1
    save_state(warehouse, resolver, run)
    _record(warehouse, run, "rebuild", last[0][1] if last else None, 0, report)
    warehouse.command(event_oneid_sql(rules))
    return ResolveOutcome(run, 0, report)


def _record(warehouse: Warehouse, run: int, kind: str, through: datetime | None, added: int, report: ResolveReport) -> None:
    merges = sum(1 for c in report.changes if c.kind == "merge")
    splits = sum(1 for c in report.changes if c.kind == "split")
    warehouse.insert_rows(
        "identity_runs",
        [(run, kind, through or datetime(1970, 1, 1), added, report.profiles, report.identifiers, report.used,
          sum(report.refused.values()), merges, splits)],
        ["run", "kind", "resolved_through", "links_added", "profiles", "identifiers", "used", "refused", "merges", "splits"],
    )
