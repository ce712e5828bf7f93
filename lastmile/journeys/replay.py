"""The journeys over events a batch ingest loaded: the main job's journeys stage.

The stream worker advances journeys as events arrive. After a batch ingest (``lastmile run``)
there was no worker, so :func:`replay` walks the window the way the worker would have, one
simulated day at a time: note that day's events (:func:`~lastmile.journeys.intake.backfill`),
then one pass at the day's end. Passes in time order matter: the contact rules' caps count the
sends decided before, and a wait that ended on Tuesday is taken on Tuesday, not at the end of
the window. Every send passes the contact rules (consent, quiet hours, caps, spending health).

Re-running is harmless: events already in the inbox are not noted again, and the step ids are
deterministic, so the figures (read from ``journey_runs`` and ``journey_steps``) stay the same.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

from lastmile.audiences.definition import EVENT_TABLES
from lastmile.journeys.definition import Journey
from lastmile.journeys.intake import backfill
from lastmile.journeys.scheduler import JourneyRunner, TickReport
from lastmile.journeys.stats import journey_stats
from lastmile.journeys.store import aware
from lastmile.warehouse import Warehouse, quote_ident

#: The passes' spacing: the stream worker passes every few seconds; a day keeps the order of
#: waits and caps (a day's sends are decided together, in event order) at a few dozen passes.
PASS_EVERY = timedelta(days=1)
#: Days the main job (``lastmile run``) replays: the window's last week. A pass costs about a
#: second on the default simulation (20,000 orders over eight weeks), so the whole window would
#: take over a minute; a week shows every journey's entries, sends, refusals and conversions.
MAIN_JOB_DAYS = 7


@dataclass
class ReplayReport:
    """What the journeys did over a window of loaded events."""

    start: datetime | None = None
    end: datetime | None = None
    passes: int = 0
    noted: int = 0
    events: int = 0  # events applied (their person known)
    steps: int = 0  # recorded steps of the passes: entries, sends, waits, branches, goals, ends
    seconds: float = 0.0
    journeys: list[dict[str, Any]] = field(default_factory=list)

    @property
    def steps_per_s(self) -> float:
        return round(self.steps / self.seconds, 1) if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start.isoformat() if self.start else None, "end": self.end.isoformat() if self.end else None,
                "passes": self.passes, "noted": self.noted, "events": self.events, "steps": self.steps,
                "seconds": round(self.seconds, 2), "steps_per_s": self.steps_per_s, "journeys": self.journeys}

    def text(self) -> str:
        """One line per journey: entrants, sends, refusals by reason, conversions, lift."""
        span = f"{self.start:%Y-%m-%d} to {self.end:%Y-%m-%d}" if self.start and self.end else "no events"
        lines = [f"journeys over {span}: {self.events:,} events in {self.passes} daily passes, {self.steps:,} steps "
                 f"({self.steps_per_s:,.0f} steps/s), every send through the contact rules"]
        for j in self.journeys:
            refusals = ", ".join(f"{reason} {n:,}" for reason, n in sorted(j["refusals"].items(), key=lambda kv: (-kv[1], kv[0])))
            line = (f"  {j['journey']}: {j['entered']:,} entered, {j['sent']:,} sent, {j['refused']:,} refused"
                    f"{f' ({refusals})' if refusals else ''}, {j['held_out']:,} held out, {j['converted']:,} converted")
            if j["conversion"] is not None:
                line += f" ({j['conversion']:.1%})"
            if j["lift"] is not None:
                line += f"; lift {j['lift'] * 100:+.1f} points over the holdout ({j['holdout_conversion']:.1%})"
            lines.append(line)
        return "\n".join(lines)


def _event_span(warehouse: Warehouse, event_types: set[str]) -> tuple[datetime, datetime] | None:
    """First and last event time over the loaded tables of ``event_types``."""
    present = set(warehouse.tables())
    tables = sorted({EVENT_TABLES[t] for t in event_types if t in EVENT_TABLES} & present)
    if not tables:
        return None
    union = " UNION ALL ".join(f"SELECT min(occurred_at) AS lo, max(occurred_at) AS hi FROM {quote_ident(t)}" for t in tables)
    lo, hi = warehouse.rows(f"SELECT min(lo), max(hi) FROM ({union}) WHERE hi > toDateTime64(0, 3, 'UTC')")[0]
    return (aware(lo), aware(hi)) if lo is not None and hi is not None else None


def summarize(stats: dict[str, Any]) -> dict[str, Any]:
    """What the main job prints of :func:`~lastmile.journeys.stats.journey_stats`: totals over the steps."""
    sends = stats["sends"].values()
    return {"journey": stats["journey"], "entered": stats["entered"], "holdout_share": stats["holdout_share"],
            "sent": sum(s["sent"] for s in sends), "refused": sum(s["refused"] for s in sends),
            "held_out": sum(s["held_out"] for s in sends), "refusals": dict(stats["refusals"]),
            "converted": stats["converted"], "conversion": stats["conversion"],
            "holdout_conversion": stats["holdout_conversion"], "lift": stats["lift"]}


def replay(warehouse: Warehouse, journeys: Sequence[Journey], desk: Any, zone: tzinfo, days: int | None = None) -> ReplayReport:
    """Advance ``journeys`` over the loaded events, a pass per day; ``days``: only the last
    that many days of the window (the runs' figures cover what was replayed). ``desk``: the
    contact rules (:class:`~lastmile.audiences.contact_rules.ContactDesk`)."""
    report = ReplayReport()
    runner = JourneyRunner(warehouse, journeys, desk, zone)
    span = _event_span(warehouse, runner.event_types) if runner.event_types else None
    before = _steps(warehouse)
    started = time.perf_counter()
    if span is not None:
        first, last = span
        start = max(first, last - timedelta(days=days)) if days else first
        report.start, report.end = start, last
        cursor = start - timedelta(milliseconds=1)  # backfill notes events strictly after its start
        while cursor < last:
            until = min(last, _day_end(cursor, zone))
            report.noted += backfill(warehouse, runner.event_types, cursor, until)
            _add(report, runner.tick(until))
            cursor = until
    entries = _newest_entry(warehouse, runner.audiences)
    if entries is not None and (report.end is None or entries > report.end):
        # Audiences are refreshed at the newest event of any kind (telemetry, stock): their
        # entries may come after the last journey event; one more pass takes them.
        _add(report, runner.tick(entries))
        report.end = entries
    report.seconds = time.perf_counter() - started
    report.steps = _steps(warehouse) - before
    report.journeys = [summarize(journey_stats(warehouse, j)) for j in journeys]
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
    return replay(warehouse, journeys, ContactDesk(warehouse, load_rules(), cfg), cfg.business_zone, days)


def _newest_entry(warehouse: Warehouse, audiences: set[str]) -> datetime | None:
    """When the newest entry into one of ``audiences`` happened (None: none, or no audiences)."""
    if not audiences or "audience_membership_changes" not in warehouse.tables():
        return None
    value = warehouse.scalar("SELECT maxOrNull(at) FROM audience_membership_changes WHERE change = 'enter' "
                             "AND audience IN {a:Array(String)}", {"a": sorted(audiences)})
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


__all__ = ["MAIN_JOB_DAYS", "ReplayReport", "main_job", "replay", "summarize"]
