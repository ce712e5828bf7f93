"""The journeys over events a batch ingest loaded: the main job's journeys stage.

The stream worker advances journeys as events arrive. After a batch ingest (``lastmile run``)
there was no worker, so :func:`replay` walks the window the way the worker would have, one
simulated day at a time: note that day's events (:func:`~lastmile.journeys.intake.backfill`),
then one pass at the day's end. Passes in time order matter: the contact rules' caps count the
sends decided before, and a wait that ended on Tuesday is taken on Tuesday, not at the end of
the window. Every send passes the contact rules (consent, quiet hours, caps, spending health).

Re-running is harmless: events already in the inbox are not noted again, and the step ids are
deterministic, so the figures (read from ``journey_runs`` and ``journey_steps``) stay the same.

With :class:`ResidentsRespond` (the main job, over a simulation) the loop is closed: after each
pass the simulated residents answer the sends it allowed
(:class:`~lastmile.simulator.responses.ResponseModel`), their events are judged by the contracts
and loaded into the same raw tables with their OneID evidence, OneID resolves them, and the next
pass applies them, so goals are reached and the holdouts measure what the messages added.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from datetime import time as dt_time
from pathlib import Path
from typing import Any

from lastmile.audiences.definition import EVENT_TABLES
from lastmile.journeys.definition import Journey
from lastmile.journeys.intake import backfill
from lastmile.journeys.replay_signals import ReplaySignals
from lastmile.journeys.scheduler import JourneyRunner, TickReport
from lastmile.journeys.stats import expected_lift, journey_stats, simultaneous_confidence
from lastmile.journeys.store import aware, warehouse_time
from lastmile.warehouse import Warehouse, quote_ident

#: The passes' spacing: the stream worker passes every few seconds; a day keeps the order of
#: waits and caps (a day's sends are decided together, in event order) at a few dozen passes.
PASS_EVERY = timedelta(days=1)
#: ``_source`` of the residents' responses in the raw tables: the replayed window is that of the
#: ingested events, so a second replay covers the same days as the first.
RESPONSES_SOURCE = "simulator:responses"
#: Days the main job (``lastmile run``) replays: the window's last week. A pass costs about a
#: second on the default simulation (20,000 orders over eight weeks), so the whole window would
#: take over a minute; a week shows every journey's entries, sends, refusals and conversions.
MAIN_JOB_DAYS = 7
#: How long after the window's last event its runs are followed (a pass at each day a wait ends
#: or a response comes): the longest shipped journey, a leader's message, a follow-up a week
#: later and a week's goal window, ends within about sixteen days.
FOLLOW_UP = timedelta(days=21)


@dataclass
class ReplayReport:
    """What the journeys did over a window of loaded events."""

    start: datetime | None = None
    end: datetime | None = None  # the window's last event
    followed: datetime | None = None  # the last pass after it (runs followed until they ended)
    passes: int = 0
    noted: int = 0
    events: int = 0  # events applied (their person known)
    steps: int = 0  # recorded steps of the passes: entries, sends, waits, branches, goals, ends
    seconds: float = 0.0
    journeys: list[dict[str, Any]] = field(default_factory=list)
    #: The residents' responses (None: nobody responded, the replay ran without a simulation).
    responses: dict[str, Any] | None = None

    @property
    def steps_per_s(self) -> float:
        return round(self.steps / self.seconds, 1) if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start.isoformat() if self.start else None, "end": self.end.isoformat() if self.end else None,
                "followed": self.followed.isoformat() if self.followed else None,
                "passes": self.passes, "noted": self.noted, "events": self.events, "steps": self.steps,
                "seconds": round(self.seconds, 2), "steps_per_s": self.steps_per_s, "journeys": self.journeys,
                "responses": self.responses}

    def text(self) -> str:
        """One line per journey: entrants, sends, refusals by reason, conversions, lift."""
        span = f"{self.start:%Y-%m-%d} to {self.end:%Y-%m-%d}" if self.start and self.end else "no events"
        if self.followed:
            span += f" (runs followed to {self.followed:%Y-%m-%d})"
        lines = [f"journeys over {span}: {self.events:,} events in {self.passes} daily passes, {self.steps:,} steps "
                 f"({self.steps_per_s:,.0f} steps/s), every send through the contact rules"]
        measured = [j for j in self.journeys if j.get("lift_ci") is not None]
        if measured and (confidence := measured[0].get("lift_confidence")) is not None and confidence > 0.95:
            lines.append(f"  lift intervals at {confidence:.1%} each: together they cover all {len(measured)} lifts with 95 % "
                         "confidence (Bonferroni)")
        for j in self.journeys:
            refusals = ", ".join(f"{reason} {n:,}" for reason, n in sorted(j["refusals"].items(), key=lambda kv: (-kv[1], kv[0])))
            line = (f"  {j['journey']}: {j['entered']:,} entered, {j['sent']:,} sent, {j['refused']:,} refused"
                    f"{f' ({refusals})' if refusals else ''}, {j['held_out']:,} held out, {j['converted']:,} converted")
            if j["conversion"] is not None:
                line += f" ({j['conversion']:.1%})"
            if j["lift"] is not None:
                line += f"; lift {j['lift'] * 100:+.1f} points over the holdout ({j['holdout_conversion']:.1%})"
                if j.get("lift_ci") is not None:
                    low, high = j["lift_ci"]
                    line += f", {j['lift_confidence']:.1%} CI [{low * 100:+.1f}, {high * 100:+.1f}]"
                if j.get("expected_lift") is not None:
                    inside = "inside" if j["expected_inside"] else "OUTSIDE"
                    line += f"; expected {j['expected_lift'] * 100:+.1f} ({inside} the interval)"
            lines.append(line)
        if self.responses is not None:
            r = self.responses
            lines.append(f"  residents responded to {r['responded']:,} of {r['sends']:,} sends ({r['events']:,} events loaded, "
                         f"{r['quarantined']:,} quarantined); every decision in {r['truth']}")
        return "\n".join(lines)


def _event_span(warehouse: Warehouse, event_types: set[str]) -> tuple[datetime, datetime] | None:
    """First and last event time over the loaded tables of ``event_types``."""
    present = set(warehouse.tables())
    tables = sorted({EVENT_TABLES[t] for t in event_types if t in EVENT_TABLES} & present)
    if not tables:
        return None
    union = " UNION ALL ".join(f"SELECT min(occurred_at) AS lo, max(occurred_at) AS hi FROM {quote_ident(t)} "
                               f"WHERE _source != '{RESPONSES_SOURCE}'" for t in tables)
    lo, hi = warehouse.rows(f"SELECT min(lo), max(hi) FROM ({union}) WHERE hi > toDateTime64(0, 3, 'UTC')")[0]
    return (aware(lo), aware(hi)) if lo is not None and hi is not None else None


def summarize(stats: dict[str, Any]) -> dict[str, Any]:
    """What the main job prints of :func:`~lastmile.journeys.stats.journey_stats`: totals over the steps."""
    sends = stats["sends"].values()
    return {"journey": stats["journey"], "entered": stats["entered"], "holdout_share": stats["holdout_share"],
            "sent": sum(s["sent"] for s in sends), "refused": sum(s["refused"] for s in sends),
            "held_out": sum(s["held_out"] for s in sends), "refusals": dict(stats["refusals"]),
            "converted": stats["converted"], "conversion": stats["conversion"],
            "holdout_conversion": stats["holdout_conversion"], "lift": stats["lift"], "lift_ci": stats.get("lift_ci"), "lift_confidence": stats.get("lift_confidence"),
            "expected_lift": stats.get("expected_lift"), "expected_inside": stats.get("expected_inside")}


class ResidentsRespond:
    """The simulated residents answering the replay's allowed sends (the closed loop of the main job).

    :meth:`answer` decides every allowed send not decided yet, loads the responses' events the
    way a batch ingest does (contracts, keyed hashes, raw tables, OneID evidence, then a OneID
    run) and returns the earliest response time, from which the next pass notes events.
    Decisions are deterministic per send id, and the events' ids too: a second replay loads
    nothing new. :meth:`write_truth` writes every decision with its cause.
    """

    def __init__(self, cfg: Any, warehouse: Warehouse, model: Any, truth_path: Path) -> None:
        from lastmile.identity.forget import forgotten_tokens
        from lastmile.identity.store import KeptState
        from lastmile.ingest import Ingestor
        from lastmile.privacy import Identifiers

        self.warehouse = warehouse
        self.model = model
        self.truth_path = truth_path
        self.identifiers = Identifiers(cfg, forgotten=forgotten_tokens(warehouse))
        self.ingestor = Ingestor(self.identifiers)
        self.kept = KeptState()
        self.decisions: dict[str, Any] = {}
        self.loaded = self.quarantined = 0
        self.latest: datetime | None = None  # the latest response time loaded

    def answer(self, since: datetime) -> datetime | None:
        """Decide the allowed sends at or after ``since`` not decided yet; load the responses."""
        from lastmile.simulator.responses import Send

        rows = self.warehouse.rows(
            "SELECT step_id, journey, step_name, oneid, at, template, channel, trigger_fields, run_id FROM journey_steps FINAL "
            "WHERE kind = 'send' AND outcome = 'sent' AND at >= {since:DateTime64(3, 'UTC')} ORDER BY at, step_id",
            {"since": warehouse_time(since)})
        fresh = [r for r in rows if r[0] not in self.decisions]
        if not fresh:
            return None
        orders = self._orders({r[3] for r in fresh})
        events: list[dict[str, Any]] = []
        earliest: datetime | None = None
        for step_id, journey, step, oneid, at, template, channel, trigger, run_id in fresh:
            send = Send(step_id, journey, step, oneid, aware(at), template, channel, json.loads(trigger or "{}"), run_id)
            decision = self.decisions[step_id] = self.model.decide(send, orders.get(oneid, ()))
            if decision.responded:
                events.extend(decision.events)
                earliest = decision.respond_at if earliest is None else min(earliest, decision.respond_at)
                self.latest = decision.respond_at if self.latest is None else max(self.latest, decision.respond_at)
        if events:
            self._load(events)
        return earliest

    def _orders(self, people: set[str]) -> dict[str, list[str]]:
        return orders_of_people(self.warehouse, people)

    def _load(self, events: list[dict[str, Any]]) -> None:
        """Judge, hash and write the events as an ingest does, then resolve their OneIDs."""
        import orjson

        from lastmile.identity.store import resolve_pending
        from lastmile.ingest import write

        batch = self.ingestor.process(RESPONSES_SOURCE, [(n, orjson.dumps(e)) for n, e in enumerate(events, 1)])
        write(self.warehouse, batch)
        self.loaded += batch.valid
        self.quarantined += batch.quarantine_count
        rules = self.identifiers.rules
        resolve_pending(self.warehouse, rules, rules.blocked_tokens(self.identifiers.hasher), self.kept)

    def write_truth(self) -> dict[str, Any]:
        """Write the truth file; the figures the report prints."""
        from lastmile.simulator.responses import write_truth

        decisions = list(self.decisions.values())
        write_truth(self.truth_path, decisions)
        return {"sends": len(decisions), "responded": sum(d.responded for d in decisions),
                "events": sum(len(d.events) for d in decisions if d.responded), "loaded": self.loaded,
                "quarantined": self.quarantined, "truth": str(self.truth_path)}


def orders_of_people(warehouse: Warehouse, people: set[str]) -> dict[str, list[str]]:
    """The orders OneID attributes to each of ``people`` (how a simulation knows who they are)."""
    if not people or "raw_order" not in warehouse.tables() or "event_oneid" not in warehouse.tables():
        return {}
    out: dict[str, list[str]] = {}
    for oneid, order_id in warehouse.rows(
            "SELECT e.oneid, r.order_id FROM event_oneid AS e INNER JOIN (SELECT event_id, order_id FROM raw_order) AS r "
            "ON r.event_id = e.event_id WHERE e.event_type = 'order' AND e.oneid IN {p:Array(String)}", {"p": sorted(people)}):
        out.setdefault(oneid, []).append(order_id)
    return out


def replay(warehouse: Warehouse, journeys: Sequence[Journey], desk: Any, zone: tzinfo, days: int | None = None,
           respond: ResidentsRespond | None = None, signals_at: dt_time | None = None) -> ReplayReport:
    """Advance ``journeys`` over the loaded events, a pass per day; ``days``: only the last
    that many days of the window (the runs' figures cover what was replayed). ``desk``: the
    contact rules (:class:`~lastmile.audiences.contact_rules.ContactDesk`). ``respond``: the
    simulated residents answer each pass's sends, and the next pass sees their events.
    ``signals_at``: the local time of day ``replenishment_due`` is evaluated
    (:class:`~lastmile.journeys.replay_signals.ReplaySignals`).

    After the window's last event the runs are followed until they end (at most
    :data:`FOLLOW_UP` later): a pass at each day a wait ends or a response comes, so runs
    entered on the last days (audience entries as of the data's end among them) reach their
    sends and goals, treated and holdout alike."""
    report = ReplayReport()
    runner = JourneyRunner(warehouse, journeys, desk, zone)
    span = _event_span(warehouse, runner.event_types) if runner.event_types else None
    before = _steps(warehouse)
    started = time.perf_counter()
    if span is not None:
        first, last = span
        start = max(first, last - timedelta(days=days)) if days else first
        report.start, report.end = start, last
        signals = ReplaySignals(warehouse, runner.event_types, start, zone, signals_at or dt_time(8, 0))
        cursor = start - timedelta(milliseconds=1)  # backfill notes events strictly after its start
        pending: datetime | None = None  # the earliest response loaded but not noted yet
        entries = _newest_entry(warehouse, runner.audiences)
        horizon = last + FOLLOW_UP
        while True:
            if cursor < last:
                until = min(last, _day_end(cursor, zone))
            else:  # following the runs: a pass on the next day a wait ends, a response comes or an audience entry
                latest = respond.latest if respond is not None else None
                wanted = [t for t in (_next_due(warehouse, runner), latest, entries) if t is not None and t > cursor]
                if not wanted or min(wanted) > horizon:
                    break
                until = _day_end(min(wanted), zone)
            since = cursor if pending is None else min(cursor, pending - timedelta(milliseconds=1))
            report.noted += signals.note(since, until, due=until <= last)
            report.noted += backfill(warehouse, runner.event_types, since, until)
            _add(report, runner.tick(until))
            if respond is not None:
                # Responses up to this pass's time came after its notes: the next pass notes them.
                earliest = respond.answer(start)
                pending = earliest if earliest is not None and earliest <= until else None
            cursor = until
        report.followed = cursor if cursor > last else None
    report.seconds = time.perf_counter() - started
    report.steps = _steps(warehouse) - before
    truth = None
    if respond is not None:
        report.responses = respond.write_truth()
        truth = [d.truth_row() for d in respond.decisions.values()]
    confidence = simultaneous_confidence(journeys)  # the report checks every journey's lift at once
    report.journeys = [summarize(expected_lift(journey_stats(warehouse, j, confidence), j, truth)) for j in journeys]
    return report


def main_job(cfg: Any, warehouse: Warehouse, days: int | None = MAIN_JOB_DAYS) -> ReplayReport:
    """The journeys of ``LASTMILE_JOURNEYS_DIR`` over the last ``days`` of loaded events, with
    the contact rules of ``LASTMILE_CONTACT_RULES`` (``lastmile run``'s journeys stage)."""
    from lastmile.audiences import AudienceError, load_audiences
    from lastmile.audiences.contact_rules import ContactDesk, load_rules
    from lastmile.journeys.definition import load_journeys

    try:
        audiences: set[str] | None = {a.name for a in load_audiences(cfg.audiences_path)}
    except AudienceError:
        audiences = None
    journeys = load_journeys(cfg.journeys_path, audiences)
    rules = load_rules()
    # A due staple is looked for when the quiet hours end: the first moment its nudge may go out.
    return replay(warehouse, journeys, ContactDesk(warehouse, rules, cfg), cfg.business_zone, days,
                  simulated_residents(cfg, warehouse), rules.quiet_end)


def simulated_residents(cfg: Any, warehouse: Warehouse) -> ResidentsRespond | None:
    """The residents of the simulation in ``$LASTMILE_HOME`` answering sends (None: no simulation there)."""
    from lastmile.simulator.responses import TRUTH_FILE, ResponseModel, Residents, load_rules as load_response_rules

    residents = Residents.from_simulation(cfg.home)
    if not len(residents):
        return None
    return ResidentsRespond(cfg, warehouse, ResponseModel(load_response_rules(), residents), cfg.home / "truth" / TRUTH_FILE)


def _newest_entry(warehouse: Warehouse, audiences: set[str]) -> datetime | None:
    """When the newest entry into one of ``audiences`` happened (None: none, or no audiences)."""
    if not audiences or "audience_membership_changes" not in warehouse.tables():
        return None
    value = warehouse.scalar("SELECT maxOrNull(at) FROM audience_membership_changes WHERE change = 'enter' "
                             "AND audience IN {a:Array(String)}", {"a": sorted(audiences)})
    return aware(value) if value is not None else None


def _next_due(warehouse: Warehouse, runner: JourneyRunner) -> datetime | None:
    """When the next active run of ``runner``'s journeys ends its wait or goal window (None: none waits for the clock)."""
    value = warehouse.scalar("SELECT minOrNull(due_at) FROM journey_runs FINAL WHERE status = 'active' AND due_at IS NOT NULL "
                             "AND (journey, version) IN {j:Array(Tuple(String, String))}",
                             {"j": [(j.name, j.version) for j in runner.journeys]})
    return aware(value) if value is not None else None


def _day_end(moment: datetime, zone: tzinfo) -> datetime:
    """The next local midnight after ``moment`` (a day's pass sees the whole business day)."""
    local = moment.astimezone(zone)
    midnight = datetime(local.year, local.month, local.day, tzinfo=zone) + PASS_EVERY
    return midnight.astimezone(timezone.utc)


def _steps(warehouse: Warehouse) -> int:
    """Rows of journey_steps: the replay counts the steps it wrote."""
    return int(warehouse.scalar("SELECT count() FROM journey_steps") or 0)


def _add(report: ReplayReport, tick: TickReport) -> None:
    report.passes += 1
    report.events += tick.events


__all__ = ["MAIN_JOB_DAYS", "ReplayReport", "ResidentsRespond", "main_job", "orders_of_people", "replay", "simulated_residents", "summarize"]
