"""What a journey did: entries, where people are, conversions against the holdout, refusals.

Conversion is the share of runs that reached the goal. With a holdout (people chosen by a
hash of their OneID who follow the journey but receive nothing), the lift is the treated
group's conversion minus the holdout's: what the messages added, not how many were sent.
Its 95 % confidence interval is Newcombe's hybrid score interval for a difference of two
independent proportions (built on Wilson's intervals: sound at small counts and near 0 or 1,
where the plain normal interval is not). People, not runs, are assigned to the holdout, and a
person's runs are alike (some neighbours always bring the crates back), so the runs are not
independent: each group's counts are divided by its design effect first (Rao and Scott's
adjustment for clustered proportions; the effect is the cluster-robust variance of the
group's conversion over the binomial one, at least 1). With one run a person it changes
nothing.

Over a simulation the response probabilities are known, so :func:`expected_lift` says what the
lift should be, and whether the measured interval covers it. A report that checks several
journeys at once (the main job's) uses simultaneous intervals (:func:`simultaneous_confidence`):
with eight 95 % intervals, one in three such reports would otherwise show a miss by chance alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from statsmodels.stats.proportion import confint_proportions_2indep

from lastmile.journeys.definition import Journey
from lastmile.warehouse import Warehouse


def _rate(converted: int, entered: int) -> float | None:
    return round(converted / entered, 4) if entered else None


#: Confidence of the lift's interval.
LIFT_CONFIDENCE = 0.95


def design_effect(people: Sequence[tuple[int, int]]) -> float:
    """The design effect of a conversion rate over runs clustered by person: ``people`` holds
    (runs, converted runs) per person. The cluster-robust (ratio-estimator) variance of the
    rate over its binomial variance, at least 1; 1 when it cannot be estimated."""
    n = len(people)
    runs = sum(m for m, _ in people)
    if n < 2 or not runs:
        return 1.0
    rate = sum(y for _, y in people) / runs
    if rate <= 0.0 or rate >= 1.0:
        return 1.0
    mean_runs = runs / n
    clustered = sum((y - rate * m) ** 2 for m, y in people) / (n * (n - 1) * mean_runs ** 2)
    return max(1.0, clustered / (rate * (1.0 - rate) / runs))


def simultaneous_confidence(journeys: Iterable[Journey]) -> float:
    """The confidence of each interval so that all the lifts of ``journeys`` (those with a goal and
    a holdout) are covered together with ``LIFT_CONFIDENCE`` (Bonferroni)."""
    k = sum(1 for j in journeys if j.goal is not None and j.holdout > 0)
    return 1 - (1 - LIFT_CONFIDENCE) / max(k, 1)


def lift_interval(converted: int, entered: int, held_converted: int, held_entered: int,
                  deff: tuple[float, float] = (1.0, 1.0), confidence: float = LIFT_CONFIDENCE) -> tuple[float, float] | None:
    """Newcombe's interval for treated minus holdout conversion (None: a group is empty);
    ``deff``: the treated and holdout groups' design effects (their counts are divided by them)."""
    if not entered or not held_entered:
        return None
    low, high = confint_proportions_2indep(converted / deff[0], entered / deff[0], held_converted / deff[1],
                                           held_entered / deff[1], method="newcomb", compare="diff",
                                           alpha=1 - confidence)
    return round(float(low), 4), round(float(high), 4)


def _people(warehouse: Warehouse, journey: Journey) -> dict[bool, list[tuple[int, int]]]:
    """Runs and converted runs per person, by holdout group."""
    out: dict[bool, list[tuple[int, int]]] = {False: [], True: []}
    for holdout, runs, converted in warehouse.rows(
            "SELECT holdout, count(), countIf(status = 'converted') FROM journey_runs FINAL WHERE journey = {j:String} "
            "GROUP BY holdout, oneid", {"j": journey.name}):
        out[bool(holdout)].append((int(runs), int(converted)))
    return out


def journey_stats(warehouse: Warehouse, journey: Journey, confidence: float = LIFT_CONFIDENCE) -> dict[str, Any]:
    """The journey's figures over every run of every version (read from the warehouse);
    ``confidence``: of the lift's interval."""
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
    people = _people(warehouse, journey) if journey.goal is not None and "journey_runs" in tables else {False: [], True: []}
    deff = (round(design_effect(people[False]), 3), round(design_effect(people[True]), 3))
    rate, holdout_rate = _rate(treated["converted"], treated["entered"]), _rate(held["converted"], held["entered"])
    return {
        "journey": journey.name, "version": journey.version, "holdout_share": journey.holdout,
        "entered": treated["entered"] + held["entered"], "treated": treated, "holdout": held,
        "in_step": in_step, "sends": sends, "refusals": refusals, "not_entered": skipped,
        "converted": treated["converted"] + held["converted"],
        "exited": treated["exited"] + held["exited"], "completed": treated["completed"] + held["completed"],
        "conversion": rate, "holdout_conversion": holdout_rate,
        "lift": round(rate - holdout_rate, 4) if rate is not None and holdout_rate is not None else None,
        "design_effect": {"treated": deff[0], "holdout": deff[1]},
        "lift_ci": lift_interval(treated["converted"], treated["entered"], held["converted"], held["entered"], deff, confidence)
        if journey.goal is not None else None,
        "lift_confidence": confidence,
    }


def expected_lift(stats: dict[str, Any], journey: Journey, truth: Iterable[Mapping[str, Any]] | None) -> dict[str, Any]:
    """``stats`` with the lift the simulated residents' response probabilities imply.

    ``truth``: the simulator's response decisions (``truth/responses.jsonl``). A treated run
    reaches the goal through a response with ``q = 1 - prod(1 - p)`` over the sends it got (or
    would have got) answered with the goal's event by the person themself; it would have
    converted anyway with the holdout's rate ``h``, so the expected lift is ``(1 - h) x mean q``
    over the treated entrants (a run whose sends were refused or never came has ``q = 0``).

    A run whose last send was answered got no later send (the response converted it), but one
    would have come without the response: its ``q`` takes the mean continuation of the runs that
    got the same sends and did not answer the last (``1 - prod(1 - p)`` over what followed, 0
    when nothing did). Counting only the sends made would understate a reminder's share.
    ``expected_inside``: whether the measured interval covers the expected lift.
    """
    from lastmile.simulator.responses import EVENT_OF_KIND

    out = dict(stats, expected_lift=None, expected_inside=None)
    if truth is None or journey.goal is None or stats["holdout_conversion"] is None or not stats["treated"]["entered"]:
        return out
    runs: dict[str, list[tuple[str, str, float, bool]]] = {}
    for row in truth:
        if row.get("journey") != journey.name or not row.get("respond"):
            continue
        event_type, own = EVENT_OF_KIND.get(row["respond"], ("", False))
        p = float(row["p"]) if own and event_type == journey.goal.match.event else 0.0
        runs.setdefault(f"{row.get('oneid')}|{row.get('run_id')}", []).append(
            (str(row.get("sent_at")), str(row.get("step")), p, bool(row.get("responded"))))
    continuation: dict[tuple[str, ...], list[float]] = {}  # send steps so far -> what followed, last unanswered
    for sends in runs.values():
        sends.sort()
        for k, (_, _, _, responded) in enumerate(sends):
            if not responded:
                rest = 1.0
                for _, _, p, _ in sends[k + 1:]:
                    rest *= 1.0 - p
                continuation.setdefault(tuple(step for _, step, _, _ in sends[:k + 1]), []).append(1.0 - rest)
    total = 0.0
    for sends in runs.values():
        miss = 1.0
        for _, _, p, _ in sends:
            miss *= 1.0 - p
        if sends[-1][3]:
            followed = continuation.get(tuple(step for _, step, _, _ in sends), [])
            miss *= 1.0 - (sum(followed) / len(followed) if followed else 0.0)
        total += 1.0 - miss
    if not runs:  # no send of this journey was decided by the residents: nothing to expect
        return out
    q = total / stats["treated"]["entered"]
    expected = round((1.0 - stats["holdout_conversion"]) * q, 4)
    out["expected_lift"] = expected
    if stats.get("lift_ci") is not None:
        low, high = stats["lift_ci"]
        out["expected_inside"] = bool(low <= expected <= high)
    return out
