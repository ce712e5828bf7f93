"""Triggers for marketing automation, decided from what a batch wrote.

Two rules are plain functions of a batch's rows (identifiers already hashed):

* **Cold-chain compensation** - a claim (``return`` with kind=claim) whose reason is
  ``temperature``: the neighbour says the chilled or frozen goods arrived warm. The action
  asks marketing automation to compensate (a voucher, a refund); whether the compartment
  really left its range is the telemetry job's finding, joined later, not this trigger's.
* **Welcome a new neighbour** - the first event carrying a person's identifiers when none
  of them was seen before (see :mod:`lastmile.streaming.seen`).

The third is clock-driven, so it is not a batch rule:

* **Replenishment nudge** - a customer whose next purchase of a staple is due today ("eggs
  every Monday", :mod:`lastmile.features.replenishment`). It needs OneIDs and weeks of
  history, so :class:`Replenishments` evaluates it behind the stream, after OneID runs,
  at the stream's own time (its event-time watermark), and queues the actions for the
  worker to publish.

Actions are at-least-once: a crash between publishing and committing re-sends them. Each
has a deterministic ``action_id`` (one compensation per order, one welcome per person's
strongest identifier), so consumers deduplicate on it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from lastmile.features.replenishment import Rhythm, due_replenishments
from lastmile.identity.identifiers import TYPE_NAMES
from lastmile.streaming.seen import PersonColumns, person_columns
from lastmile.streaming.sink import WrittenBatch
from lastmile.warehouse import Warehouse

COMPENSATE = "compensate_cold_chain"
WELCOME = "welcome_neighbour"
REPLENISH = "replenishment_nudge"


@dataclass(frozen=True)
class Action:
    """One message on ``lastmile.actions``."""

    action_id: str
    action: str
    event_id: str
    event_type: str
    occurred_at: str
    person: str | None  # token of the strongest identifier, when the event names a person
    details: dict[str, Any] = field(default_factory=dict)

    def key(self) -> bytes:
        return self.action_id.encode()

    def to_json(self) -> bytes:
        return orjson.dumps(self)  # orjson serialises dataclasses natively (as asdict would, without the deep copy)


def _rank(id_type: str) -> int:
    return TYPE_NAMES.index(id_type) if id_type in TYPE_NAMES else len(TYPE_NAMES)


_BY_STRENGTH: dict[PersonColumns, tuple[tuple[str, str], ...]] = {}


def person_tokens(row: dict[str, Any], person: PersonColumns) -> list[tuple[str, str]]:
    """``(id_type, token)`` of a row's person identifiers, strongest first (blocked values skipped)."""
    columns = _BY_STRENGTH.get(person)
    if columns is None:
        columns = _BY_STRENGTH[person] = tuple(sorted(person.columns, key=lambda c: _rank(c[1])))
    return [(id_type, row[column]) for column, id_type in columns if row.get(column)]


def compensations(batch: WrittenBatch) -> list[Action]:
    """A compensation for every temperature claim in the batch (one per order)."""
    actions: dict[str, Action] = {}
    claimant = person_columns().get("raw_return")
    for row in batch.rows("raw_return"):
        if row.get("kind") != "claim" or row.get("reason") != "temperature":
            continue
        tokens = person_tokens(row, claimant) if claimant else []
        subject = row.get("order_id") or row["event_id"]
        action_id = f"compensate:{subject}"
        actions.setdefault(action_id, Action(
            action_id=action_id, action=COMPENSATE, event_id=row["event_id"], event_type="return",
            occurred_at=row["occurred_at"], person=tokens[0][1] if tokens else None,
            details={"order_id": row.get("order_id"), "amount": row.get("amount"),
                     "community_id": row.get("community_id"), "evidence": row.get("evidence") or []},
        ))
    return list(actions.values())


@dataclass
class Welcomes:
    """The welcome rule over a set of seen tokens (updated as events are judged)."""

    seen: set[str]

    def decide(self, batch: WrittenBatch) -> tuple[list[Action], list[tuple[str, str, str, str]]]:
        """Welcomes for the batch, and the ``(token, id_type, event_id, occurred_at)`` rows newly seen.

        Events are taken in event-time order across tables, so a person's order and their
        identify in one batch give one welcome, on whichever happened first.
        """
        seen = self.seen
        # Only rows naming an identifier not seen before can welcome or add anything (seen
        # only grows), so the rest - most rows, once a community is known - are not sorted.
        candidates: list[tuple[str, str, dict[str, Any], PersonColumns, list[tuple[str, str]]]] = []
        for table, person in person_columns().items():
            columns = [column for column, _ in person.columns]
            for row in batch.rows(table):
                # The C-level test first (no tuples, no list per row): it is most of the rule's cost.
                if not seen.issuperset(filter(None, map(row.get, columns))):
                    candidates.append((row.get("occurred_at") or "", row.get("event_id", ""), row, person,
                                       person_tokens(row, person)))
        candidates.sort(key=lambda c: (c[0], c[1]))
        actions: list[Action] = []
        new_rows: list[tuple[str, str, str, str]] = []
        for occurred_at, _, row, person, tokens in candidates:
            fresh = [(id_type, token) for id_type, token in tokens if token not in seen]
            if len(fresh) == len(tokens):
                id_type, token = tokens[0]
                actions.append(Action(
                    action_id=f"welcome:{token}", action=WELCOME, event_id=row["event_id"],
                    event_type=person.event_type, occurred_at=occurred_at, person=token,
                    details={"id_type": id_type, "community_id": row.get("community_id"),
                             "channel": row.get("channel") or row.get("source")},
                ))
            for id_type, token in fresh:
                seen.add(token)
                new_rows.append((token, id_type, row["event_id"], occurred_at))
        return actions, new_rows


def stream_time(warehouse: Warehouse) -> datetime | None:
    """The stream's event-time watermark: the oldest of the order partitions' newest order times.

    Partitions are consumed independently; the slowest one says how far the stream surely
    got. Only rows the stream wrote count (``_source`` ``kafka:...``), not backfilled files.
    """
    value = warehouse.scalar("""
        SELECT min(newest) FROM (SELECT max(occurred_at) AS newest FROM raw_order WHERE startsWith(_source, 'kafka:') GROUP BY _source)
        """)
    if value is None or value.year < 2000:  # min() of nothing is the epoch
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


class Replenishments:
    """The replenishment rule behind the stream: evaluate after OneID runs, queue what is new.

    :meth:`after_resolve` runs on the OneID thread holding the warehouse lock (a callback of
    :class:`~lastmile.streaming.identity.IdentityRefresher`); it evaluates at most every
    ``every_s`` seconds. A graceful stop calls
    :meth:`evaluate` once more after the last resolution. The worker publishes
    :meth:`drain` on its loop. Each nudge is queued once per process; after a restart the
    day's nudges are queued again with the same ``action_id`` (at-least-once, as every action).
    """

    def __init__(self, warehouse: Warehouse, every_s: float = 60.0, rhythm: Rhythm = Rhythm(),
                 clock: Callable[[], float] = time.monotonic, desk: Any = None,
                 hand_over: Callable[[list[Action]], None] | None = None) -> None:
        self.warehouse = warehouse
        #: Optional :class:`~lastmile.audiences.contact_rules.ContactDesk`: nudges it refuses
        #: (no consent, quiet hours at the stream's time, caps) are not queued.
        self.desk = desk
        #: A journey took the nudge over: the due nudges go to it (as signals), undecided and unqueued.
        self.hand_over = hand_over
        self.every_s = every_s
        self.rhythm = rhythm
        self.clock = clock
        self.sent: set[str] = set()
        self.evaluations = 0
        self._pending: list[Action] = []
        self._lock = threading.Lock()
        self._last = float("-inf")

    def after_resolve(self) -> None:
        """Evaluate if ``every_s`` passed since the last evaluation.

        Not on every change of the stream's day: while a backlog replays, days fly by in
        seconds, and a nudge for a staple that was due two replayed days ago is noise.
        """
        if self.clock() - self._last >= self.every_s:
            self.evaluate()

    def evaluate(self, as_of: datetime | None = None) -> None:
        """Queue the nudges due at ``as_of`` (default: the stream's time) not queued before. Hold the warehouse lock."""
        as_of = as_of or stream_time(self.warehouse)
        if as_of is None:
            return
        self._last = self.clock()
        self.evaluations += 1
        actions = [self.action(due, as_of) for due in due_replenishments(self.warehouse, as_of, self.rhythm)
                   if due.action_id not in self.sent]
        if self.hand_over is not None:
            self.hand_over(actions)
            self.sent.update(a.action_id for a in actions)
            return
        if self.desk is not None:
            actions = [a for a, d in zip(actions, self.desk.decide_actions(actions, as_of)) if d.allowed]
        with self._lock:
            self._pending += actions
            self.sent.update(a.action_id for a in actions)

    @staticmethod
    def action(due, as_of: datetime) -> Action:
        return Action(action_id=due.action_id, action=REPLENISH, event_id="", event_type="order",
                      occurred_at=as_of.isoformat(), person=None,
                      details={"oneid": due.oneid, "sku": due.sku, "due": due.due.isoformat(),
                               "last_purchase": due.last_purchase.isoformat(), "purchases": due.purchases,
                               "mean_interval_days": due.mean_interval_days})

    def drain(self) -> list[Action]:
        """The queued nudges (each handed out once)."""
        with self._lock:
            out, self._pending = self._pending, []
        return out
