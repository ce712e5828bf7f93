"""What a journey did: entries, where people are, conversions against the holdout, refusals.

Conversion is the share of runs that reached the goal. With a holdout (people chosen by a
hash of their OneID who follow the journey but receive nothing), the lift is the treated
group's conversion minus the holdout's: what the messages added, not how many were sent.
"""

from __future__ import annotations

from typing import Any

from lastmile.journeys.definition import Journey
from lastmile.warehouse import Warehouse


def _rate(converted: int, entered: int) -> float | None:
    return round(converted / entered, 4) if entered else None


def journey_stats(warehouse: Warehouse, journey: Journey) -> dict[str, Any]:
    """The journey's figures over every run of every version (read from the warehouse)."""
    tables = set(warehouse.tables())
    groups = {"treated": {"entered": 0, "active": 0, "converted": 0, "exited": 0, "completed": 0},
              "holdout": {"entered": 0, "active": 0, "converted": 0, "exited": 0, "completed": 0}}
    in_step: dict[str, int] = {}
    sends: dict[str, dict[str, Any]] = {}
    skipped: dict[str, int] = {}
    if "journey_runs" in tables:
        for holdout, status, step, count in warehouse.rows(
                "SELECT holdout, toString(status), step, count() FROM journey_runs FINAL WHERE journey = {j:String} "
                "GROUP BY holdout, status, step", {"j": journey.name}):
            group = groups["holdout" if holdout else "treated"]
            group["entered"] += count
            group[status] = group.get(status, 0) + count
            if status == "active":
                name = journey.steps[step].name if step < len(journey.steps) else "waiting for the goal"
                in_step[name] = in_step.get(name, 0) + count
    refusals: dict[str, int] = {}
    if "journey_steps" in tables:
        for name, kind, outcome, reason, detail, count in warehouse.rows(
                "SELECT step_name, toString(kind), toString(outcome), reason, if(kind = 'enter' AND outcome = 'skipped', "
                "splitByString(' (', detail)[1], ''), count() FROM journey_steps FINAL WHERE journey = {j:String} "
                "GROUP BY step_name, kind, outcome, reason, 5", {"j": journey.name}):
            if kind == "send":
                entry = sends.setdefault(name, {"sent": 0, "refused": 0, "held_out": 0, "refusals": {}})
                entry[outcome] = entry.get(outcome, 0) + count
                if outcome == "refused":
                    entry["refusals"][reason] = entry["refusals"].get(reason, 0) + count
                    refusals[reason] = refusals.get(reason, 0) + count
            elif kind == "enter" and outcome == "skipped":
                why = "already in a run" if detail.startswith("already in run") else detail
                skipped[why] = skipped.get(why, 0) + count
    treated, held = groups["treated"], groups["holdout"]
    rate, holdout_rate = _rate(treated["converted"], treated["entered"]), _rate(held["converted"], held["entered"])
    return {
        "journey": journey.name, "version": journey.version, "holdout_share": journey.holdout,
        "entered": treated["entered"] + held["entered"], "treated": treated, "holdout": held,
        "in_step": in_step, "sends": sends, "refusals": refusals, "not_entered": skipped,
        "converted": treated["converted"] + held["converted"],
        "exited": treated["exited"] + held["exited"], "completed": treated["completed"] + held["completed"],
        "conversion": rate, "holdout_conversion": holdout_rate,
        "lift": round(rate - holdout_rate, 4) if rate is not None and holdout_rate is not None else None,
    }
