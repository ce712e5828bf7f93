"""``lastmile journey``: list, validate, the figures of one journey, one pass by hand, publishing its sends.

:func:`register` adds the commands to the main command line (:mod:`lastmile.cli` passes its
error handling and consoles in, so this module does not import it back).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from lastmile.config import settings


def _audience_names() -> set[str] | None:
    """The audience names journeys may trigger on (None when the audiences folder does not load)."""
    from lastmile.audiences import AudienceError, load_audiences

    try:
        return {a.name for a in load_audiences(settings().audiences_path)}
    except AudienceError:
        return None


def _journeys(bad_input: type[Exception], names: Optional[list[str]] = None) -> list[Any]:
    from lastmile.journeys import load_journeys

    journeys = load_journeys(settings().journeys_path, _audience_names())
    if not names:
        return journeys
    known = {j.name: j for j in journeys}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise bad_input(f"no journey named {', '.join(unknown)} in {settings().journeys_path} (have: {', '.join(known) or 'none'})")
    return [known[n] for n in names]


def _moment(text: Optional[str], bad_input: type[Exception], option: str) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise bad_input(f"{option} {text!r} is not an ISO 8601 time (e.g. 2026-05-01T09:00:00+08:00)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _trigger(journey: Any) -> str:
    if journey.trigger.audience:
        return f"enters {journey.trigger.audience}"
    match = journey.trigger.event
    where = ", ".join(f"{k}={v}" for k, v in match.where.items())
    return match.event + (f" ({where})" if where else "")


def register(app: typer.Typer, friendly: Callable[..., Any], bad_input: type[Exception], console: Console, err: Console) -> None:
    """Add ``lastmile journey list|validate|stats|tick`` to ``app``."""
    journey_app = typer.Typer(help="Journeys (journeys/*.yml): validate, list, their figures, and one pass by hand.",
                              no_args_is_help=True)

    @journey_app.command("validate")
    @friendly
    def validate_cmd(path: Optional[Path] = typer.Argument(None, help="A journey file or folder (default LASTMILE_JOURNEYS_DIR).")) -> None:
        """Check journey files: the first error names the file, the line and what was expected (exit 2)."""
        from lastmile.journeys import load_journey, load_journeys

        target = path or settings().journeys_path
        audiences = _audience_names()
        journeys = load_journeys(target, audiences) if target.is_dir() else [load_journey(target, audiences)]
        for journey in journeys:
            console.print(f"ok {journey.name} (version {journey.version}, {len(journey.steps)} steps) {journey.path}",
                          highlight=False, soft_wrap=True)

    @journey_app.command("list")
    @friendly
    def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
        """The journeys of LASTMILE_JOURNEYS_DIR: name, trigger, steps, goal, holdout, owner."""
        rows = [{"name": j.name, "version": j.version, "trigger": _trigger(j), "steps": [s.name for s in j.steps],
                 "goal": j.goal.match.event if j.goal else None, "holdout": j.holdout, "owner": j.owner,
                 "description": j.description, "path": str(j.path)} for j in _journeys(bad_input)]
        if as_json:
            typer.echo(json.dumps(rows, ensure_ascii=False))
            return
        table = Table("name", "trigger", "steps", "goal", "holdout", "owner")
        for r in rows:
            table.add_row(r["name"], r["trigger"], " → ".join(r["steps"]), r["goal"] or "", f"{r['holdout']:.0%}", r["owner"])
        console.print(table)

    @journey_app.command("stats")
    @friendly
    def stats_cmd(name: str = typer.Argument(..., help="The journey's name."),
                  together: bool = typer.Option(False, "--together",
                                                help="The lift's interval simultaneous with those of every journey of the "
                                                     "folder (Bonferroni), as `lastmile run` prints it, for checking them all."),
                  as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
        """Entered, where people are now, converted (goal reached), exited, sends and refusals by
        reason, and conversion against the holdout group (95 % interval of the lift)."""
        from lastmile.journeys.stats import journey_stats
        from lastmile.warehouse import connect

        from lastmile.journeys.stats import LIFT_CONFIDENCE, expected_lift, simultaneous_confidence
        from lastmile.simulator.responses import TRUTH_FILE, read_truth

        (journey,) = _journeys(bad_input, [name])
        confidence = simultaneous_confidence(_journeys(bad_input)) if together else LIFT_CONFIDENCE
        truth_path = settings().home / "truth" / TRUTH_FILE  # a simulation's residents: the expected lift
        s = expected_lift(journey_stats(connect(), journey, confidence), journey,
                          read_truth(truth_path) if truth_path.exists() else None)
        if as_json:
            typer.echo(json.dumps(s, ensure_ascii=False))
            return
        console.print(f"{s['journey']} (version {s['version']}): {s['entered']:,} entered, {s['converted']:,} converted, "
                      f"{s['exited']:,} exited, {s['completed']:,} completed without the goal", highlight=False)
        table = Table("group", "entered", "still in", "converted", "conversion")
        for group in ("treated", "holdout"):
            g = s[group]
            rate = s["conversion" if group == "treated" else "holdout_conversion"]
            table.add_row(group, f"{g['entered']:,}", f"{g['active']:,}", f"{g['converted']:,}", "" if rate is None else f"{rate:.1%}")
        console.print(table)
        if s["lift"] is not None:
            interval = (f", {s['lift_confidence']:.1%} CI [{s['lift_ci'][0] * 100:+.1f}, {s['lift_ci'][1] * 100:+.1f}]"
                        if s["lift_ci"] else "")
            console.print(f"lift: {s['lift'] * 100:+.1f} points of conversion over the holdout ({s['holdout_share']:.0%} held out)"
                          f"{interval}", highlight=False)
            if s["expected_lift"] is not None:
                console.print(f"expected from the simulated residents' response probabilities: {s['expected_lift'] * 100:+.1f} "
                              f"points ({'inside' if s['expected_inside'] else 'OUTSIDE'} the interval)", highlight=False)
        if s["in_step"]:
            console.print("in each step now: " + ", ".join(f"{k} {v:,}" for k, v in s["in_step"].items()), highlight=False)
        for step, figures in s["sends"].items():
            refusals = ", ".join(f"{reason} {n:,}" for reason, n in sorted(figures["refusals"].items()))
            console.print(f"send {step}: {figures['sent']:,} sent, {figures['refused']:,} refused"
                          f"{f' ({refusals})' if refusals else ''}, {figures['held_out']:,} held out", highlight=False)
        if s["not_entered"]:
            console.print("not entered: " + ", ".join(f"{k} {v:,}" for k, v in s["not_entered"].items()), highlight=False)

    @journey_app.command("tick")
    @friendly
    def tick_cmd(
        now: Optional[str] = typer.Option(None, help="The pass's time (default: now): waits that ended by then go on."),
        since: Optional[str] = typer.Option(None, help="First note the events loaded by a batch ingest that happened "
                                            "after this time (the stream notes its own)."),
        as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    ) -> None:
        """One pass: apply the noted events whose person is known, start runs, end the waits that are due.
        Not while `lastmile stream` runs (it makes these passes itself); `lastmile journey publish` sends the messages."""
        from lastmile.audiences.contact_rules import ContactDesk, load_rules
        from lastmile.journeys import store
        from lastmile.journeys.intake import backfill
        from lastmile.journeys.scheduler import JourneyRunner
        from lastmile.warehouse import connect

        cfg = settings()
        journeys = _journeys(bad_input)
        moment = _moment(now, bad_input, "--now") or datetime.now(timezone.utc)
        warehouse = connect(cfg)
        runner = JourneyRunner(warehouse, journeys, ContactDesk(warehouse, load_rules(), cfg), cfg.business_zone)
        noted = 0
        start = _moment(since, bad_input, "--since")
        if start is not None:
            noted = backfill(warehouse, runner.event_types, start, moment)
        report = runner.tick(moment).as_dict()
        report["noted"] = noted
        report["undelivered"] = len(store.undelivered(warehouse))
        if as_json:
            typer.echo(json.dumps(report, ensure_ascii=False))
            return
        console.print(f"{report['events']:,} events applied ({report['waiting']:,} waiting for their OneID, {report['unresolved']:,} "
                      f"set aside without one), {report['entered']:,} runs started, {report['due']:,} waits ended; "
                      f"{report['sent']:,} sends allowed, {report['refused']:,} refused, {report['held_out']:,} held out; "
                      f"{report['converted']:,} converted. {report['undelivered']:,} sends wait for `lastmile journey publish` "
                      "(or the stream worker) to publish them.",
                      highlight=False, soft_wrap=True)

    @journey_app.command("publish")
    @friendly
    def publish_cmd() -> None:
        """Publish the allowed sends not yet delivered to lastmile.actions (keyed by action_id, the step id)
        and record them delivered. The stream worker does this itself while it runs (unless --no-journeys)."""
        import asyncio

        from lastmile.journeys.scheduler import publish
        from lastmile.journeys.store import ensure_tables
        from lastmile.journeys.stream import publish_to_kafka
        from lastmile.streaming.broker import bootstrap
        from lastmile.warehouse import connect

        cfg = settings()
        warehouse = connect(cfg)
        ensure_tables(warehouse)
        address = bootstrap(cfg)
        count = publish(warehouse, lambda sends: asyncio.run(publish_to_kafka(address, sends)))
        console.print(f"{count:,} journey sends published to lastmile.actions ({address})", highlight=False)

    app.add_typer(journey_app, name="journey")
