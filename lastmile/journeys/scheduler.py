"""Advancing journeys: apply the noted events, start runs, end the waits that are due.

:meth:`JourneyRunner.tick` is one pass, run by the stream worker after each OneID
resolution (at most every few seconds) and by ``lastmile journey tick``:

1. audience entries of trigger audiences (``audience_membership_changes``) join the inbox;
2. the inbox's events whose person is known are applied in event order: each active run
   of the person sees it (goal, awaited event, fact for a later branch), and a trigger
   starts a run;
3. runs whose wait ended by ``now`` go on.

Sends are decided by the contact rules (:class:`~lastmile.audiences.contact_rules.ContactDesk`)
with the step id as send id, then recorded with the decision; allowed sends wait in the
outbox (``journey_steps`` not in ``journey_deliveries``) for :func:`publish`. The holdout
group's sends are recorded as ``held_out`` and never reach the desk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

from lastmile.journeys import store
from lastmile.journeys.definition import Journey
from lastmile.journeys.engine import (AUDIENCE_ENTRY, Event, Facts, Run, StepRecord, Transition, enter, on_clock, on_event, retire,
                                      triggered_by)
from lastmile.journeys.facts import WarehouseFacts
from lastmile.streaming.present import present
from lastmile.warehouse import Warehouse

log = logging.getLogger("lastmile.journeys")

#: An event whose person is still unknown this long after it was noted is set aside as ``no_person``.
PATIENCE = timedelta(hours=1)
#: Audience entries older than this (before ``now``) do not start runs: a journey added today
#: does not contact everyone who entered its audience last year.
AUDIENCE_LOOKBACK = timedelta(days=2)


@dataclass
class TickReport:
    """What one pass did."""

    events: int = 0  # inbox events applied
    unresolved: int = 0  # set aside: no person after PATIENCE
    waiting: int = 0  # still waiting for their person
    entered: int = 0
    skipped: int = 0
    due: int = 0  # runs whose wait ended
    sent: int = 0
    refused: int = 0
    held_out: int = 0
    converted: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    more: bool = False  # the pass applied as many inbox events as it was allowed: more wait for the next one
    #: The step ids of the sends the pass allowed (now in the outbox), in decision order.
    allowed: list[str] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "allowed"}


class JourneyRunner:
    """Runs journeys against one warehouse. ``desk``: the contact rules every send passes (a
    :class:`~lastmile.audiences.contact_rules.ContactDesk`); ``zone``: the business time zone
    (local times of waits)."""

    def __init__(self, warehouse: Warehouse, journeys: Sequence[Journey], desk: Any, zone: tzinfo,
                 facts: Facts | None = None, wall_clock: Callable[[], datetime] | None = None) -> None:
        self.warehouse = warehouse
        self.journeys = list(journeys)
        self.desk = desk
        self.zone = zone
        self.facts = facts or WarehouseFacts(warehouse)
        self.wall_clock = wall_clock or (lambda: datetime.now(timezone.utc))
        self.event_types = set().union(*(j.event_types() for j in self.journeys)) if self.journeys else set()
        self.audiences = {j.trigger.audience for j in self.journeys if j.trigger.audience}
        self._retired = False
        #: Events the last limited pass found still waiting for their person: they are the oldest
        #: of the inbox, so the next limited pass reads as many more (up to ``limit``) to apply
        #: about ``limit`` events rather than re-reading the same waiting ones.
        self._waiting = 0
        store.ensure_tables(warehouse)

    # --- one pass ------------------------------------------------------------------------------

    def tick(self, now: datetime, limit: int | None = None) -> TickReport:
        """Apply what is pending and due by ``now`` (an aware time). Hold the warehouse if it is shared.

        ``limit``: apply at most that many inbox events (the oldest; plus as many as the last pass
        found still waiting for their person, up to ``limit``, since they come first), so a pass
        over a large backlog is cut into shorter ones; waits then end only up to the newest event
        read (an event left for the next pass may still cancel them)."""
        report = TickReport()
        if not self._retired:
            self._retire_old_versions(now, report)
        if self.audiences:
            self._note_audience_entries(now)
        through = self._apply_inbox(now, report, limit)
        if through is not None:
            report.more = True
            now = min(now, through)
        due: list[Transition] = []
        runs = store.due_runs(self.warehouse, now)
        if runs:
            self._prepare({r.oneid for r in runs}, min(r.due_at or now for r in runs), now)
        for run in runs:
            journey = self._journey(run)
            if journey is None:
                continue
            transition = on_clock(journey, run, now, self.facts, self.zone)
            if transition is not None:
                report.due += 1
                due.append(transition)
        self._commit(due, report)
        return report

    def _journey(self, run: Run) -> Journey | None:
        """The journey a run belongs to (None: its file was removed, the run stops advancing)."""
        return next((j for j in self.journeys if j.name == run.journey and j.version == run.version), None)

    def _retire_old_versions(self, now: datetime, report: TickReport) -> None:
        """Once per runner: active runs of an earlier version of a loaded journey end (exited),
        with the reason in their last step."""
        current = {j.name: j for j in self.journeys}
        old = [r for r in store.active_runs(self.warehouse, sorted(current))
               if r.version != current[r.journey].version]
        self._commit([retire(current[r.journey], r, now) for r in old], report)
        self._retired = True

    def _note_audience_entries(self, now: datetime) -> None:
        if not present(self.warehouse, "audience_membership_changes"):
            return
        rows = self.warehouse.rows(
            """SELECT lower(hex(SHA256(concat(audience, '|', version, '|', oneid, '|', toString(change), '|', toString(at))))) AS id,
                      audience, oneid, at
            FROM audience_membership_changes
            WHERE change = 'enter' AND audience IN {a:Array(String)}
              AND at > {since:DateTime64(3, 'UTC')} AND at <= {now:DateTime64(3, 'UTC')}
              AND id NOT IN (SELECT event_id FROM journey_inbox WHERE event_type = 'audience_entry')""",
            {"a": sorted(self.audiences), "since": store.warehouse_time(now - AUDIENCE_LOOKBACK), "now": store.warehouse_time(now)})
        store.note(self.warehouse, [Event(eid, AUDIENCE_ENTRY, oneid, store.aware(at), {"audience": audience})
                                    for eid, audience, oneid, at in rows])

    def _apply_inbox(self, now: datetime, report: TickReport, limit: int | None = None) -> datetime | None:
        """Apply the inbox's events whose person is known; returns the time up to which it was read
        when ``limit`` left events for a later pass (else None)."""
        if limit:
            limit += min(self._waiting, limit)
        pending = store.pending(self.warehouse, limit) if limit else store.pending(self.warehouse)
        through = max(e.at for e, _ in pending) if limit and len(pending) >= limit else None
        ready = [e for e, _ in pending if e.oneid]
        wall = self.wall_clock()
        given_up = [e for e, noted in pending if not e.oneid and noted is not None and wall - noted > PATIENCE]
        report.unresolved += len(given_up)
        report.waiting += len(pending) - len(ready) - len(given_up)
        self._waiting = len(pending) - len(ready) - len(given_up)
        if not ready:
            store.mark(self.warehouse, [(e, "no_person") for e in given_up])
            return through
        self._prepare({e.oneid for e in ready}, min(e.at for e in ready), max(now, max(e.at for e in ready)))
        runs: dict[tuple[str, str], list[Run]] = {}
        for run in store.runs_of(self.warehouse, sorted({e.oneid for e in ready})):
            runs.setdefault((run.journey, run.oneid), []).append(run)
        transitions: list[Transition] = []
        for event in ready:
            for journey in self.journeys:
                mine = runs.setdefault((journey.name, event.oneid), [])
                for i, run in enumerate(mine):
                    # Waits that ended before this event go first: a reminder due at 18:00 is
                    # sent even when the order that converts the person (at 20:00) is read in
                    # the same pass.
                    ticked = on_clock(journey, run, event.at, self.facts, self.zone) if run.due_at is not None else None
                    if ticked is not None and ticked.run is not None:
                        run = mine[i] = ticked.run
                        transitions.append(ticked)
                    changed = on_event(journey, run, event, self.facts, self.zone)
                    if changed is not None and changed.run is not None:
                        mine[i] = changed.run
                        transitions.append(changed)
                if triggered_by(journey, event):
                    started = enter(journey, event, mine, self.facts, self.zone)
                    if started is not None:
                        transitions.append(started)
                        if started.run is not None:
                            mine.append(started.run)
        self._commit(transitions, report)
        report.events += len(ready)
        store.mark(self.warehouse, [(e, "applied") for e in ready] + [(e, "no_person") for e in given_up])
        return through

    def _prepare(self, people: set[str], start: datetime, end: datetime) -> None:
        """Tell the facts whom the next conditions are about (one query per condition, not per person)."""
        prepare = getattr(self.facts, "prepare", None)
        if prepare is not None:
            prepare(people, start, end)

    # --- recording -------------------------------------------------------------------------

    def _commit(self, transitions: Sequence[Transition], report: TickReport) -> None:
        """Decide the sends (all of the pass at once, in event order: the caps count the earlier
        ones), record the steps, then save the runs' final states (in that order: see
        :mod:`lastmile.journeys.store`)."""
        if not transitions:
            return
        steps = [step for transition in transitions for step in transition.steps]
        decisions = self._decide([s for s in steps if s.kind == "send" and s.outcome == "pending"])
        recorded: list[tuple[StepRecord, str, str]] = []
        for step in steps:
            outcome, reason = step.outcome, ""
            if step.kind == "send" and step.outcome == "pending":
                outcome, reason = decisions[step.step_id]
                if outcome == "sent":
                    report.sent += 1
                    report.allowed.append(step.step_id)
                else:
                    report.refused += 1
                    report.refusals[reason] = report.refusals.get(reason, 0) + 1
            elif step.kind == "send":
                report.held_out += 1
            elif step.kind == "enter":
                if step.outcome == "skipped":
                    report.skipped += 1
                else:
                    report.entered += 1
            elif step.kind == "goal":
                report.converted += 1
            recorded.append((step, outcome, reason))
        store.save_steps(self.warehouse, recorded)
        latest: dict[tuple[str, str, str], Run] = {}
        for transition in transitions:
            if transition.run is not None:
                r = transition.run
                key = (r.journey, r.oneid, r.run_id)
                if key not in latest or latest[key].seq <= r.seq:
                    latest[key] = r
        store.save_runs(self.warehouse, latest.values())

    def _decide(self, steps: Sequence[StepRecord]) -> dict[str, tuple[str, str]]:
        """Per send step id: ``("sent", "")`` or ``("refused", reason)`` by the contact rules."""
        from lastmile.audiences.contact_rules import Send

        sends = [Send(s.step_id, s.oneid, s.send.channel, s.send.purposes, s.at, origin=f"journey:{s.journey}")
                 for s in steps if s.send is not None]
        decisions = self.desk.decide_many(sends) if sends else []
        return {d.send_id: ("sent", "") if d.allowed else ("refused", d.reason) for d in decisions}


# --- publishing -----------------------------------------------------------------------------

JOURNEY_SEND = "journey_send"


def actions(pending: Sequence[dict[str, Any]]) -> list[Any]:
    """The outbox's sends as ``lastmile.actions`` messages; ``action_id`` is the step id."""
    from lastmile.streaming.actions import Action

    return [Action(action_id=p["step_id"], action=JOURNEY_SEND, event_id=p["trigger_id"], event_type="journey",
                   occurred_at=p["at"].isoformat(), person=None,
                   details={"journey": p["journey"], "version": p["version"], "step": p["step_name"], "oneid": p["oneid"],
                            "run_id": p["run_id"], "template": p["template"], "channel": p["channel"],
                            "purposes": p["purposes"], "params": p["params"], "trigger": p["trigger_fields"]}) for p in pending]


def publish(warehouse: Warehouse, send: Callable[[list[Any]], None], at: datetime | None = None) -> int:
    """Hand the undelivered sends to ``send`` (which returns once the broker acknowledged them),
    then record them delivered. A crash in between re-sends them with the same ``action_id``."""
    pending = store.undelivered(warehouse)
    if not pending:
        return 0
    send(actions(pending))
    store.delivered(warehouse, [p["step_id"] for p in pending], at or datetime.now(timezone.utc))
    return len(pending)
