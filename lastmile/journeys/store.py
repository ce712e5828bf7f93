"""Journey state in the warehouse: runs, steps, the inbox of events and the outbox of sends.

``journey_runs`` keeps one row per run, a ``ReplacingMergeTree`` versioned by the run's
transition count (``seq``): the latest state wins, and writing the same state again (a
replay) replaces it with itself. ``journey_steps`` is keyed by the deterministic step id,
so a step recorded twice is one step. ``journey_inbox`` holds the events the stream noted
for journeys until they are applied (written by the batch handler before the batch's
offsets are committed, so an event cannot be lost between Kafka and a journey), and
``journey_deliveries`` which allowed sends reached ``lastmile.actions``.

The order of writes for one pass (steps, then runs, then the inbox marks) makes a crash
at any point harmless: the pass is re-run from the last saved runs, produces the same
step ids, the contact rules return their first decision for each send id, and events
already applied to a run are recognised by their id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

import orjson

from lastmile.journeys.engine import Event, Run, StepRecord
from lastmile.streaming.present import present
from lastmile.warehouse import Warehouse

DDL = (
    """CREATE TABLE IF NOT EXISTS journey_runs (
    journey LowCardinality(String) COMMENT 'Journey name (journeys/*.yml).',
    version String COMMENT 'Version of the journey file the run started under.',
    oneid String COMMENT 'The person.',
    run_id String COMMENT 'The trigger event id, or field=value for once_per journeys.',
    trigger_id String COMMENT 'Event (or audience change) that started the run.',
    holdout UInt8 COMMENT '1: in the holdout group (follows the steps, receives nothing).',
    status LowCardinality(String) COMMENT 'active, converted (goal reached), exited (exit or branch) or completed.',
    step Int32 COMMENT 'Index of the next step (equal to the number of steps: waiting for the goal).',
    entered_at DateTime64(3, 'UTC'),
    due_at Nullable(DateTime64(3, 'UTC')) COMMENT 'When the current wait (or the goal window) ends.',
    ended_at Nullable(DateTime64(3, 'UTC')),
    end_reason String,
    state String COMMENT 'JSON: the trigger fields and the events applied since entry.',
    seq UInt32 COMMENT 'Transitions so far: the row with the highest wins.'
) ENGINE = ReplacingMergeTree(seq) ORDER BY (journey, oneid, run_id)
COMMENT 'Per person and journey run: where they are. Read with FINAL.'""",
    """CREATE TABLE IF NOT EXISTS journey_steps (
    step_id String COMMENT 'sha256 of journey|version|oneid|run|step: also the send id and action_id.',
    journey LowCardinality(String),
    version String,
    oneid String,
    run_id String,
    trigger_id String,
    step_index Int32 COMMENT '-1: the entry; number of steps: goal or end.',
    step_name String,
    kind LowCardinality(String) COMMENT 'enter, send, wait, branch, exit, goal or end.',
    at DateTime64(3, 'UTC') COMMENT 'When the step happened (event time or the end of a wait).',
    outcome LowCardinality(String) COMMENT 'entered, skipped, held_out, sent, refused, waiting, then, else, exited, converted, completed.',
    reason String COMMENT 'Why a send was refused (the contact rules reason).',
    detail String,
    template String,
    channel String,
    purposes Array(String),
    params String COMMENT 'JSON of the template parameters.',
    trigger_fields String COMMENT 'JSON of the trigger''s fields (what the template may quote: the order, the SKU).',
    holdout UInt8
) ENGINE = ReplacingMergeTree ORDER BY step_id
COMMENT 'Every step of every run, once. Read with FINAL.'""",
    """CREATE TABLE IF NOT EXISTS journey_inbox (
    event_id String,
    event_type LowCardinality(String) COMMENT 'An event type, a signal (new_neighbour, replenishment_due) or audience_entry.',
    oneid String COMMENT 'Empty until resolved (event_oneid).',
    occurred_at DateTime64(3, 'UTC'),
    fields String COMMENT 'JSON of the event''s top-level fields (identifiers left out).',
    noted_at DateTime64(3, 'UTC') DEFAULT now64(3),
    outcome LowCardinality(String) COMMENT 'Empty while pending; applied, or no_person when it never resolved.',
    done UInt8
) ENGINE = ReplacingMergeTree(done) ORDER BY (event_id, event_type)
TTL toDateTime(noted_at) + INTERVAL 30 DAY
COMMENT 'Events noted for journeys; done = 1 once applied (kept 30 days: a replay of older events finds their runs, which know them). Read with FINAL.'""",
    """CREATE TABLE IF NOT EXISTS journey_deliveries (
    step_id String,
    delivered_at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree ORDER BY step_id
COMMENT 'Allowed journey sends published to lastmile.actions.'""",
)

_RUN_COLUMNS = ["journey", "version", "oneid", "run_id", "trigger_id", "holdout", "status", "step", "entered_at", "due_at",
                "ended_at", "end_reason", "state", "seq"]
_STEP_COLUMNS = ["step_id", "journey", "version", "oneid", "run_id", "trigger_id", "step_index", "step_name", "kind", "at",
                 "outcome", "reason", "detail", "template", "channel", "purposes", "params", "trigger_fields", "holdout"]


def _json(value: Any) -> str:
    """JSON text of a state or of fields (what ``json.dumps(value, ensure_ascii=False, default=str)``
    gives, read back the same; orjson: a pass writes thousands of them while the worker waits)."""
    return orjson.dumps(value, default=str, option=orjson.OPT_PASSTHROUGH_DATETIME).decode()


def ensure_tables(warehouse: Warehouse) -> None:
    for ddl in DDL:
        warehouse.command(ddl)


def warehouse_time(moment: datetime | None) -> datetime | None:
    """An aware time as the warehouse's DateTime64 parameters take it (naive UTC)."""
    return None if moment is None else moment.astimezone(timezone.utc).replace(tzinfo=None)


def aware(moment: datetime) -> datetime:
    """A warehouse time (naive UTC) as an aware one."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def maybe_aware(moment: datetime | None) -> datetime | None:
    return None if moment is None else aware(moment)


# --- runs ------------------------------------------------------------------------------------

def save_runs(warehouse: Warehouse, runs: Iterable[Run]) -> int:
    rows = [(r.journey, r.version, r.oneid, r.run_id, r.trigger_id, int(r.holdout), r.status, r.step, warehouse_time(r.entered_at),
             warehouse_time(r.due_at), warehouse_time(r.ended_at), r.end_reason,
             _json({"context": r.context, "events": [list(e) for e in r.events]}),
             r.seq) for r in runs]
    return warehouse.insert_rows("journey_runs", rows, _RUN_COLUMNS) if rows else 0


_SELECT_RUNS = "SELECT " + ", ".join(_RUN_COLUMNS) + " FROM journey_runs FINAL"


def _run(row: Sequence[Any]) -> Run:
    values = dict(zip(_RUN_COLUMNS, row))
    state = json.loads(values["state"] or "{}")
    return Run(values["journey"], values["version"], values["oneid"], values["run_id"], values["trigger_id"],
               aware(values["entered_at"]), bool(values["holdout"]), state.get("context") or {}, int(values["step"]),
               values["status"], maybe_aware(values["due_at"]),
               tuple((e[0], e[1], e[2]) for e in state.get("events") or []), int(values["seq"]),
               maybe_aware(values["ended_at"]), values["end_reason"])


def runs_of(warehouse: Warehouse, people: Sequence[str]) -> list[Run]:
    """Every run (any status) of these people, across journeys."""
    if not people:
        return []
    return [_run(r) for r in warehouse.rows(f"{_SELECT_RUNS} WHERE oneid IN {{p:Array(String)}}", {"p": list(people)})]


def active_runs(warehouse: Warehouse, journeys: Sequence[str]) -> list[Run]:
    """The active runs of these journeys."""
    return [_run(r) for r in warehouse.rows(f"{_SELECT_RUNS} WHERE status = 'active' AND journey IN {{j:Array(String)}}",
                                            {"j": list(journeys)})]


def due_runs(warehouse: Warehouse, now: datetime) -> list[Run]:
    """Active runs whose wait (or goal window) ends by ``now``."""
    return [_run(r) for r in warehouse.rows(
        f"{_SELECT_RUNS} WHERE status = 'active' AND due_at IS NOT NULL AND due_at <= {{now:DateTime64(3, 'UTC')}} "
        "ORDER BY due_at, journey, oneid, run_id", {"now": warehouse_time(now)})]


# --- steps -----------------------------------------------------------------------------------

def save_steps(warehouse: Warehouse, steps: Iterable[tuple[StepRecord, str, str]]) -> int:
    """Record steps with their final outcome and refusal reason: ``(record, outcome, reason)``."""
    rows = []
    for s, outcome, reason in steps:
        send = s.send
        if send is None:  # most steps: nothing to quote
            rows.append((s.step_id, s.journey, s.version, s.oneid, s.run_id, s.trigger_id, s.index, s.name, s.kind,
                         warehouse_time(s.at), outcome, reason, s.detail, "", "", [], "{}", "{}", int(s.holdout)))
            continue
        rows.append((s.step_id, s.journey, s.version, s.oneid, s.run_id, s.trigger_id, s.index, s.name, s.kind, warehouse_time(s.at),
                     outcome, reason, s.detail, send.template, send.channel, list(send.purposes),
                     _json(send.params),
                     _json(s.context), int(s.holdout)))
    return warehouse.insert_rows("journey_steps", rows, _STEP_COLUMNS) if rows else 0


# --- the inbox -------------------------------------------------------------------------------

def note(warehouse: Warehouse, events: Iterable[Event]) -> int:
    """Put events in the inbox (a replayed event is one row: the table collapses on its id and
    an applied event stays applied)."""
    rows = [(e.event_id, e.event_type, e.oneid, warehouse_time(e.at), _json(e.fields), "", 0)
            for e in events]
    return warehouse.insert_rows("journey_inbox", rows, ["event_id", "event_type", "oneid", "occurred_at", "fields", "outcome", "done"]) if rows else 0


def pending(warehouse: Warehouse, limit: int = 50_000) -> list[tuple[Event, datetime]]:
    """The ``limit`` oldest events not applied yet, with their person when known (inbox or
    ``event_oneid``), in event order; also when each was noted.

    The oldest pending events are picked first and only they are looked up in ``event_oneid``
    (a view OneID computes per event): a pass over a backlog then costs what its own events
    cost, not what the whole backlog does."""
    oldest = f"SELECT * FROM journey_inbox FINAL WHERE done = 0 ORDER BY occurred_at, event_id LIMIT {int(limit)}"
    if present(warehouse, "event_oneid"):
        rows = warehouse.rows(
            f"""WITH i AS ({oldest})
            SELECT i.event_id, toString(i.event_type), if(i.oneid != '', i.oneid, ifNull(e.oneid, '')), i.occurred_at, i.fields,
                   i.noted_at
            FROM i LEFT JOIN (SELECT event_id, oneid FROM event_oneid WHERE event_id IN (SELECT event_id FROM i)) AS e
              ON e.event_id = i.event_id
            ORDER BY i.occurred_at, i.event_id""")
    else:
        rows = warehouse.rows(f"SELECT event_id, toString(event_type), oneid, occurred_at, fields, noted_at FROM ({oldest}) "
                              "ORDER BY occurred_at, event_id")
    return [(Event(eid, etype, oneid or "", aware(at), json.loads(fields or "{}")), aware(noted)) for eid, etype, oneid, at, fields, noted in rows]


def mark(warehouse: Warehouse, events: Iterable[tuple[Event, str]]) -> int:
    """Mark inbox events done with an outcome (``applied`` or ``no_person``)."""
    rows = [(e.event_id, e.event_type, e.oneid, warehouse_time(e.at), _json(e.fields), outcome, 1)
            for e, outcome in events]
    return warehouse.insert_rows("journey_inbox", rows, ["event_id", "event_type", "oneid", "occurred_at", "fields", "outcome", "done"]) if rows else 0


def newest_noted(warehouse: Warehouse) -> datetime | None:
    value = warehouse.scalar("SELECT max(occurred_at) FROM journey_inbox")
    return None if value is None or value.year < 2000 else aware(value)


# --- the outbox ------------------------------------------------------------------------------

def undelivered(warehouse: Warehouse, limit: int = 10_000, among: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Allowed sends not yet published, oldest first; ``among``: only these step ids (the sends one
    pass allowed: a read by the table's key instead of a scan of every step)."""
    if among is not None and not among:
        return []
    ids = "step_id IN {among:Array(String)}" if among is not None else "1"
    rows = warehouse.rows(
        f"""SELECT step_id, journey, version, oneid, run_id, trigger_id, step_name, at, template, channel, purposes, params,
               trigger_fields
        FROM journey_steps FINAL
        WHERE {ids} AND kind = 'send' AND outcome = 'sent' AND step_id NOT IN (SELECT step_id FROM journey_deliveries WHERE {ids})
        ORDER BY at, step_id LIMIT {int(limit)}""", {"among": list(among)} if among is not None else None)
    keys = ["step_id", "journey", "version", "oneid", "run_id", "trigger_id", "step_name", "at", "template", "channel", "purposes", "params",
            "trigger_fields"]
    out = []
    for row in rows:
        item = dict(zip(keys, row))
        item["at"] = aware(item["at"])
        item["params"] = json.loads(item["params"] or "{}")
        item["trigger_fields"] = json.loads(item["trigger_fields"] or "{}")
        item["purposes"] = list(item["purposes"])
        out.append(item)
    return out


def delivered(warehouse: Warehouse, step_ids: Sequence[str], at: datetime) -> int:
    return warehouse.insert_rows("journey_deliveries", [(s, warehouse_time(at)) for s in step_ids], ["step_id", "delivered_at"]) if step_ids else 0
