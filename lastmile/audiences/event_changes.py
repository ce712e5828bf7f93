"""Who can have entered or left an event audience since it was last evaluated: so a refresh
evaluates only them.

An event rule selects a person by their traits row and their events inside the rule's windows
up to ``as_of``. Between two evaluations that can change only for people who

* have events ingested since the last evaluation (``_ingested_at`` of the rule's raw tables
  past the watermark recorded then);
* have an event that crossed a window's edge because ``as_of`` moved: events between the old
  and new ``as_of`` minus the window left it (or came in, when ``as_of`` moved back), events
  between the old and the new ``as_of`` came into it;
* were linked to events differently by OneID (see below);
* have a traits row that changed (a rule that reads traits, or any event rule: a person
  without a traits row is in no audience), known from :mod:`lastmile.audiences.trait_changes`.

The people behind events come from ``event_oneid``. Its state is recorded as a *links token*:

* the resolver's view (``identity_runs`` exists): the last run and the time its evidence was
  resolved through, and the number of forgotten identifiers. Since then, the events whose
  evidence arrived after that time, the identifiers the later runs changed (the resolver
  rewrites only changed rows), with every event that names one of them, and both sides of
  every merge and split (``identity_changes``) are candidates. A rebuild of the whole graph
  or a forget request since cannot be bounded: the audience is compared in full;
* a table of its own (links written with their events): its identity, the newest block
  number, its rows and its newest mutation. Rows in parts written since are candidates; a mutation, a truncation
  or a recreated table cannot be bounded: the audience is compared in full;
* anything else: compared in full every time.

The candidates of one refresh are written to ``audience_event_candidates`` and their OneID
links to ``audience_event_candidate_links`` (one partition a refresh, dropped once it is
written), so the rule joins the window's events against those few links instead of everyone's,
and the published members and the comparison read the same small set. Event audiences
published from the same state share one set (candidates over all their windows: a superset
for each, which is still exact).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from lastmile.audiences.definition import EVENT_TABLES, Audience, Compiled
from lastmile.audiences.trait_changes import CHANGED_PEOPLE
from lastmile.warehouse import Warehouse

CANDIDATES = "audience_event_candidates"
CANDIDATE_LINKS = "audience_event_candidate_links"

TABLES_SQL = (
    f"""CREATE TABLE IF NOT EXISTS {CANDIDATES} (
    audience LowCardinality(String) COMMENT 'The refresh (an audience, or audiences sharing a set).',
    key UInt64 COMMENT 'sipHash64(oneid) of a person whose membership may have changed since the last evaluation.'
) ENGINE = MergeTree PARTITION BY audience ORDER BY key""",
    f"""CREATE TABLE IF NOT EXISTS {CANDIDATE_LINKS} (
    audience LowCardinality(String) COMMENT 'The refresh (as in audience_event_candidates).',
    event_type LowCardinality(String),
    event_id String,
    oneid String COMMENT 'A candidate: their events, as event_oneid resolves them.'
) ENGINE = MergeTree PARTITION BY audience ORDER BY event_id""",
)

#: The candidates of the refresh named by the ``{candidates:String}`` parameter, and their links.
AMONG = f"SELECT key FROM {CANDIDATES} WHERE audience = {{candidates:String}}"
AMONG_LINKS = f"SELECT event_type, event_id, oneid FROM {CANDIDATE_LINKS} WHERE audience = {{candidates:String}}"

_EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True)
class EventState:
    """What an event audience's evaluation read: recorded with its published membership."""

    #: "now" of the rule's windows (naive UTC)
    as_of: datetime
    #: newest ``_ingested_at`` of the rule's raw tables when the evaluation started (naive UTC)
    ingested: datetime
    #: state of ``event_oneid`` ('' : unknown, never bounded)
    links: str

    @staticmethod
    def stored(as_of: Any, ingested: Any, links: Any) -> "EventState":
        """From the columns of ``audience_fingerprints``."""
        return EventState(_naive(as_of), _naive(ingested), str(links or ""))


def _naive(moment: Any) -> datetime:
    if not isinstance(moment, datetime):
        return _EPOCH
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


def incremental(audience: Audience) -> bool:
    """True for rules with event conditions: the audiences this module narrows."""
    return audience.sql is None and audience.compile().uses_events


def current_state(warehouse: Warehouse, compiled: Compiled, as_of: datetime) -> EventState:
    """The state an evaluation at ``as_of`` reads, taken before it runs (so events ingested
    while it runs are candidates again next time, never missed)."""
    tables = sorted({table for table, _ in compiled.windows})
    newest = " UNION ALL ".join(f"SELECT max(_ingested_at) AS t FROM {t}" for t in tables)
    ingested, (engine, uuid), (block, rows, version) = warehouse.rows(f"""
SELECT (SELECT max(t) FROM ({newest})),
       (SELECT tuple(any(engine), toString(any(uuid))) FROM system.tables WHERE database = currentDatabase() AND name = 'event_oneid'),
       (SELECT tuple(max(max_block_number), sum(rows), max(data_version)) FROM system.parts
        WHERE database = currentDatabase() AND table = 'event_oneid' AND active)""")[0]
    links = ""
    if str(engine).endswith("MergeTree"):
        links = f"table/{uuid}/{int(block or 0)}/{int(rows or 0)}/{int(version or 0)}"
    elif engine == "View" and "identity_runs" in warehouse.tables():
        forgotten = ("(SELECT count() FROM identity_forgotten)" if "identity_forgotten" in warehouse.tables() else "0")
        run, through, gone = warehouse.rows(f"SELECT max(run), toUnixTimestamp64Milli(argMax(resolved_through, run)), {forgotten} "
                                            "FROM identity_runs")[0]
        links = f"resolver/{int(run or 0)}/{int(through or 0)}/{int(gone)}"
    return EventState(_naive(as_of), _naive(ingested), links)


def stage_candidates(warehouse: Warehouse, label: str, compiled: Compiled, before: EventState, now: EventState,
                     traits_changed: bool) -> bool:
    """Write the candidates (see the module) of the event conditions of ``compiled`` to
    ``CANDIDATES`` and their links to ``CANDIDATE_LINKS`` under ``label`` (lower case, digits,
    ``_`` and ``-``); False when the change since ``before`` cannot be bounded (nothing written:
    compare in full)."""
    links = _link_candidates(warehouse, before.links, now.links)
    if links is None:
        return False
    parameters: dict[str, Any] = {"candidates": label, "ingested": before.ingested,
                                  "low": min(before.as_of, now.as_of), "high": max(before.as_of, now.as_of)}
    events = []
    for table in sorted({t for t, _ in compiled.windows}):
        edges = ["_ingested_at > {ingested:DateTime64(3, 'UTC')}"]
        if before.as_of != now.as_of:
            edges.append("(occurred_at > {low:DateTime64(3, 'UTC')} AND occurred_at <= {high:DateTime64(3, 'UTC')})")
            for seconds in sorted({s for t, s in compiled.windows if t == table}):
                edges.append(f"(occurred_at > {{low:DateTime64(3, 'UTC')}} - toIntervalSecond({int(seconds)}) "
                             f"AND occurred_at <= {{high:DateTime64(3, 'UTC')}} - toIntervalSecond({int(seconds)}))")
        events.append(f"SELECT event_id FROM {table} WHERE " + " OR ".join(edges))
    types = [name for name, table in EVENT_TABLES.items() if any(t == table for t, _ in compiled.windows)]
    parts = [f"SELECT sipHash64(oneid) AS key FROM event_oneid WHERE event_type IN {types!r} AND event_id IN ("
             + " UNION ALL ".join(events) + ")", *links]
    if traits_changed:
        parts.append(f"SELECT key FROM {CHANGED_PEOPLE}")
    drop(warehouse, label)
    warehouse.command(f"INSERT INTO {CANDIDATES} (audience, key) SELECT {{candidates:String}}, key FROM ("
                      + " UNION ALL ".join(parts) + ")", parameters)
    warehouse.command(f"INSERT INTO {CANDIDATE_LINKS} (audience, event_type, event_id, oneid) "
                      f"SELECT {{candidates:String}}, event_type, event_id, oneid FROM event_oneid "
                      f"WHERE event_type IN {types!r} AND sipHash64(oneid) IN ({AMONG})", {"candidates": label})
    return True


def drop(warehouse: Warehouse, label: str) -> None:
    """Forget the candidates written under ``label``."""
    if not re.fullmatch(r"[a-z0-9_-]+", label):
        raise ValueError(f"candidate set label {label!r}: lower case, digits, _ and - only")
    for table in (CANDIDATES, CANDIDATE_LINKS):
        warehouse.command(f"ALTER TABLE {table} DROP PARTITION '{label}'")


def _link_candidates(warehouse: Warehouse, before: str, now: str) -> list[str] | None:
    """SELECTs of the keys of people whose events OneID links differently since ``before``;
    None when that cannot be bounded."""
    if not before or not now or before.split("/")[0] != now.split("/")[0]:
        return None
    if before == now:
        return []
    kind, *old = before.split("/")
    _, *new = now.split("/")
    if kind == "table":
        if len(old) != 4 or old[0] != new[0]:
            return None
        block, rows, version = int(old[1]), int(old[2]), int(old[3])
        # a part whose data version is not its first block was rewritten by a mutation
        mutated, kept = warehouse.rows(f"""
SELECT countIf(data_version != min_block_number AND data_version > {version}), sumIf(rows, min_block_number <= {block})
FROM system.parts WHERE database = currentDatabase() AND table = 'event_oneid' AND active""")[0]
        if int(mutated) or int(kept or 0) < rows:  # rewritten or removed links: not bounded
            return None
        return [f"SELECT sipHash64(oneid) AS key FROM event_oneid WHERE _part IN (SELECT name FROM system.parts "
                f"WHERE database = currentDatabase() AND table = 'event_oneid' AND active AND max_block_number > {block})"]
    run, through, forgotten = int(old[0]), int(old[1]), int(old[2])
    if int(new[2]) != forgotten or warehouse.scalar(f"SELECT count() FROM identity_runs WHERE run > {run} AND kind != 'resolve'"):
        return None
    changed = f"SELECT token FROM identity_nodes WHERE run > {run}"
    return [
        # evidence resolved since: events that may have had no person, or another one
        f"SELECT sipHash64(oneid) AS key FROM event_oneid WHERE event_id IN (SELECT event_id FROM identity_links "
        f"WHERE _ingested_at > fromUnixTimestamp64Milli(toInt64({through}), 'UTC'))",
        # identifiers the later runs changed: their people now, and every event naming one of them
        f"SELECT sipHash64(oneid) AS key FROM identity_nodes WHERE run > {run}",
        f"SELECT sipHash64(oneid) AS key FROM event_oneid WHERE event_id IN (SELECT event_id FROM identity_links "
        f"WHERE a_token IN ({changed}) OR b_token IN ({changed}))",
        # the people merges and splits took identifiers from or gave them to
        f"SELECT sipHash64(arrayJoin([from_oneid, to_oneid])) AS key FROM identity_changes WHERE run > {run}",
    ]


def readable(warehouse: Warehouse, compiled: Compiled) -> bool:
    """True when the tables the state is read from exist (otherwise the refresh says which are missing)."""
    return {"event_oneid", *(t for t, _ in compiled.windows)} <= set(warehouse.tables())
