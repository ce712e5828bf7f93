"""The journey state machine: given a person's run and an event or the clock, the next steps.

Pure: no warehouse, no clock of its own. What a step decides depends only on the run's
state, the input (an event with its time, or "now") and, for history or trait conditions,
a :class:`Facts` lookup. Times of steps are the times things became due (an event's
``occurred_at``, a wait's end), never the moment the code happened to run, so replaying the
same inputs after a crash yields the same steps with the same ids:

``step_id = sha256(journey | version | oneid | run | step)``

where ``run`` is the trigger event's id (or ``field=value`` for ``once_per`` journeys) and
``step`` the step's index (``enter``, ``goal`` and ``end`` for those records). The id of a
send is also its contact-rules send id and its ``action_id`` on ``lastmile.actions``, so a
send is decided once and consumers deduplicate it.

A run also remembers the ids of the events it has applied: an event applied twice (a
replayed batch) changes nothing the second time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, tzinfo
from typing import Any, Protocol

from lastmile.journeys.definition import EXIT, NEXT, EventMatch, Journey, Send, Step

ACTIVE, CONVERTED, EXITED, COMPLETED = "active", "converted", "exited", "completed"
#: The ``event_type`` of an audience entry handed to the engine (``fields``: ``{"audience": name}``).
AUDIENCE_ENTRY = "audience_entry"


class Facts(Protocol):
    """Answers history, trait and place conditions (the audience rule language) for one person."""

    def matches(self, oneid: str, rule: Any, as_of: datetime) -> bool: ...


@dataclass(frozen=True)
class Event:
    """One input: a person's event (top-level contract fields, identifiers left out) or audience entry."""

    event_id: str
    event_type: str
    oneid: str
    at: datetime
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """One person's run of one journey: where they are and what they have done since entry."""

    journey: str
    version: str
    oneid: str
    run_id: str
    trigger_id: str
    entered_at: datetime
    holdout: bool = False
    context: dict[str, Any] = field(default_factory=dict)  # the trigger event's fields
    step: int = 0  # the next step to run (len(steps): waiting for the goal)
    status: str = ACTIVE
    due_at: datetime | None = None  # when the current wait (or the goal window) ends
    events: tuple[tuple[str, str, dict[str, Any]], ...] = ()  # (event_id, type, fields) since entry
    seq: int = 0  # transitions so far: the version the run table keeps the highest of
    ended_at: datetime | None = None
    end_reason: str = ""


@dataclass(frozen=True)
class StepRecord:
    """What happened at one step of one run. ``outcome`` of a send is ``pending`` until the
    contact rules decide it (``sent`` / ``refused``), or ``held_out`` for the holdout group."""

    step_id: str
    journey: str
    version: str
    oneid: str
    run_id: str
    index: int
    name: str
    kind: str  # enter | send | wait | branch | exit | goal | end
    at: datetime
    outcome: str
    detail: str = ""
    holdout: bool = False
    send: Send | None = None
    trigger_id: str = ""
    context: dict[str, Any] = field(default_factory=dict)  # the trigger's fields


@dataclass(frozen=True)
class Transition:
    """The new state of a run and the steps that led there (``run`` None: nobody entered)."""

    run: Run | None
    steps: tuple[StepRecord, ...]


def step_id(journey: str, version: str, oneid: str, run_id: str, step: str) -> str:
    return hashlib.sha256(f"{journey}|{version}|{oneid}|{run_id}|{step}".encode()).hexdigest()[:32]


def in_holdout(journey: Journey, oneid: str) -> bool:
    """Whether a person is in the journey's holdout: a hash of the journey name and the OneID
    below the share. The same person is held out of every run of that journey, and of
    different journeys independently (the name is in the hash)."""
    if journey.holdout <= 0:
        return False
    digest = hashlib.sha256(f"holdout|{journey.name}|{oneid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < journey.holdout


def _record(journey: Journey, run: Run, label: str, index: int, name: str, kind: str, at: datetime, outcome: str,
            detail: str = "", send: Send | None = None) -> StepRecord:
    return StepRecord(step_id(journey.name, run.version, run.oneid, run.run_id, label), journey.name, run.version,
                      run.oneid, run.run_id, index, name, kind, at, outcome, detail, run.holdout, send, run.trigger_id,
                      run.context)


# --- entry -----------------------------------------------------------------------------------

def triggered_by(journey: Journey, event: Event) -> bool:
    trigger = journey.trigger
    if trigger.audience is not None:
        return event.event_type == AUDIENCE_ENTRY and event.fields.get("audience") == trigger.audience
    return trigger.event is not None and trigger.event.matches(event.event_type, event.fields, {})


def enter(journey: Journey, event: Event, runs: list[Run], facts: Facts | None, zone: tzinfo) -> Transition | None:
    """Start a run for ``event`` (which triggers ``journey``), or record why not.

    ``runs``: every run of this journey for the person. None when the event was handled
    before (its run exists): entering is idempotent.
    """
    if journey.once_per:
        key = event.fields.get(journey.once_per)
        if key is None or key == "":
            skipped = Run(journey.name, journey.version, event.oneid, event.event_id, event.event_id, event.at)
            return Transition(None, (_record(journey, skipped, "enter", -1, "enter", "enter", event.at, "skipped",
                                             f"the trigger event has no {journey.once_per}"),))
        run_id = f"{journey.once_per}={key}"
    else:
        run_id = event.event_id
    if any(r.run_id == run_id for r in runs):
        return None
    run = Run(journey.name, journey.version, event.oneid, run_id, event.event_id, event.at,
              holdout=in_holdout(journey, event.oneid), context=dict(event.fields))
    if not journey.once_per:
        active = [r for r in runs if r.status == ACTIVE]
        reason = ""
        if active:
            reason = f"already in run {active[0].run_id} (entered {active[0].entered_at:%Y-%m-%d %H:%M} UTC)"
        elif runs and not journey.reentry:
            reason = "entered before and the journey takes each person once (reentry: false)"
        if reason:
            return Transition(None, (_record(journey, run, "enter", -1, "enter", "enter", event.at, "skipped", reason),))
    first = _record(journey, run, "enter", -1, "enter", "enter", event.at, "held_out" if run.holdout else "entered",
                    "in the holdout group: follows the steps, receives nothing" if run.holdout else "")
    run, steps = _advance(journey, run, event.at, facts, zone)
    return Transition(run, (first, *steps))


# --- events and the clock ----------------------------------------------------------------------

def on_event(journey: Journey, run: Run, event: Event, facts: Facts | None, zone: tzinfo) -> Transition | None:
    """Apply a person's event to their active run: the goal, an awaited event, or a fact for
    later conditions. None when it changes nothing (not relevant, before entry, seen before)."""
    if run.status != ACTIVE or event.event_id == run.trigger_id or event.at < run.entered_at:
        return None
    if any(seen == event.event_id and kind == event.event_type for seen, kind, _ in run.events):
        return None
    if event.event_type not in journey.event_types():
        return None
    run = replace(run, events=(*run.events, (event.event_id, event.event_type, dict(event.fields))), seq=run.seq + 1)
    goal = journey.goal
    if goal is not None and goal.match.matches(event.event_type, event.fields, run.context):
        run = replace(run, status=CONVERTED, due_at=None, ended_at=event.at, end_reason=f"goal: {event.event_type} {event.event_id}")
        return Transition(run, (_record(journey, run, "goal", len(journey.steps), "goal", "goal", event.at, "converted",
                                        f"{event.event_type} {event.event_id}"),))
    steps: tuple[StepRecord, ...] = ()
    if run.step < len(journey.steps):
        wait = journey.steps[run.step].wait
        if wait is not None and wait.event is not None and wait.event.matches(event.event_type, event.fields, run.context):
            run = replace(run, step=run.step + 1, due_at=None)
            run, steps = _advance(journey, run, event.at, facts, zone)
    return Transition(run, steps)


def on_clock(journey: Journey, run: Run, now: datetime, facts: Facts | None, zone: tzinfo) -> Transition | None:
    """End the waits (and the goal window) that are due by ``now``; each step happens at the
    time it became due, not at ``now``. None when nothing is due."""
    steps: list[StepRecord] = []
    changed = False
    while run.status == ACTIVE and run.due_at is not None and run.due_at <= now:
        due = run.due_at
        changed = True
        if run.step >= len(journey.steps):
            run = replace(run, status=COMPLETED, due_at=None, ended_at=due, end_reason="no goal within the window", seq=run.seq + 1)
            steps.append(_record(journey, run, "end", len(journey.steps), "end", "end", due, "completed", run.end_reason))
            break
        run = replace(run, step=run.step + 1, due_at=None, seq=run.seq + 1)
        run, more = _advance(journey, run, due, facts, zone)
        steps += more
    return Transition(run, tuple(steps)) if changed else None


def retire(journey: Journey, run: Run, at: datetime) -> Transition:
    """End an active run that started under another version of the journey file: its step
    indexes may mean other steps now, so it does not go on under the new file."""
    run = replace(run, status=EXITED, due_at=None, ended_at=at, seq=run.seq + 1,
                  end_reason=f"the journey file changed (version {run.version} -> {journey.version})")
    return Transition(run, (_record(journey, run, "retired", len(journey.steps), "end", "end", at, "exited", run.end_reason),))


# --- running steps ---------------------------------------------------------------------------

def _advance(journey: Journey, run: Run, at: datetime, facts: Facts | None, zone: tzinfo) -> tuple[Run, tuple[StepRecord, ...]]:
    """Run steps from ``run.step`` at time ``at`` until a wait, an exit or the end."""
    out: list[StepRecord] = []
    run = replace(run, seq=run.seq + 1)
    while run.status == ACTIVE and run.step < len(journey.steps):
        index = run.step
        step: Step = journey.steps[index]
        label = str(index)
        if step.kind == "send":
            assert step.send is not None
            out.append(_record(journey, run, label, index, step.name, "send", at, "held_out" if run.holdout else "pending",
                               send=step.send))
            run = replace(run, step=index + 1)
        elif step.kind == "wait":
            assert step.wait is not None
            due = wait_end(step.wait, at, zone)
            detail = f"until {due:%Y-%m-%d %H:%M} UTC" + (f" or a {step.wait.event.event}" if step.wait.event else "")
            out.append(_record(journey, run, label, index, step.name, "wait", at, "waiting", detail))
            return replace(run, due_at=due), tuple(out)
        elif step.kind == "branch":
            assert step.branch is not None
            held = holds(step.branch.condition, run, at, facts)
            target = step.branch.then if held else step.branch.otherwise
            out.append(_record(journey, run, label, index, step.name, "branch", at, "then" if held else "else",
                               "exit" if target == EXIT else "next step" if target == NEXT else f"to {journey.steps[int(target)].name}"))
            if target == EXIT:
                run = replace(run, status=EXITED, ended_at=at, end_reason=f"branch {step.name}")
            else:
                run = replace(run, step=index + 1 if target == NEXT else int(target))
        else:  # exit
            out.append(_record(journey, run, label, index, step.name, "exit", at, "exited"))
            run = replace(run, status=EXITED, ended_at=at, end_reason=f"exit {step.name}")
    if run.status == ACTIVE:
        if journey.goal is not None and journey.goal.within_s > 0:
            return replace(run, due_at=at + timedelta(seconds=journey.goal.within_s)), tuple(out)
        run = replace(run, status=COMPLETED, ended_at=at, end_reason="last step done")
        out.append(_record(journey, run, "end", len(journey.steps), "end", "end", at, "completed", run.end_reason))
    return run, tuple(out)


def wait_end(wait: Any, at: datetime, zone: tzinfo) -> datetime:
    """When a wait that starts at ``at`` ends: after its duration, or at the next (or
    tomorrow's) local time of day in the business zone."""
    if wait.until is None:
        return at + timedelta(seconds=wait.seconds)
    local = at.astimezone(zone)
    day = local.date() + timedelta(days=1 if wait.tomorrow else 0)
    candidate = datetime.combine(day, wait.until, tzinfo=zone)
    if candidate <= local:
        candidate = datetime.combine(day + timedelta(days=1), wait.until, tzinfo=zone)
    return candidate.astimezone(at.tzinfo)


def holds(condition: Any, run: Run, at: datetime, facts: Facts | None) -> bool:
    """Evaluate a branch condition: since-entry events from the run itself, the rest by ``facts``."""
    if "all" in condition:
        return all(holds(c, run, at, facts) for c in condition["all"])
    if "any" in condition:
        return any(holds(c, run, at, facts) for c in condition["any"])
    if "not" in condition:
        return not holds(condition["not"], run, at, facts)
    if "since_entry" in condition:
        spec = condition["since_entry"]
        match = EventMatch(spec["event"], spec.get("where") or {}, tuple(spec.get("same") or ()))
        count = sum(1 for _, event_type, fields in run.events if match.matches(event_type, fields, run.context))
        return count >= int(spec.get("at_least", 1))
    if facts is None:
        raise ValueError("this condition reads the warehouse (traits or event history) and no facts were given")
    return facts.matches(run.oneid, condition["rule"], at)
