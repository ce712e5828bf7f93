"""The main job's journeys over batch-loaded data: audience entries at the data's time, the
stream's signals over the replayed window, and the spending-health cap on journey sends."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from lastmile.audiences.contact_rules import ContactDesk, ContactRules
from lastmile.config import Settings
from lastmile.journeys import load_journeys
from lastmile.journeys.signals import NEW_NEIGHBOUR, DueReplenishments, NewNeighbours
from lastmile.warehouse import Warehouse
from tests.factories import event
from tests.test_journeys import SHANGHAI, ingest
from tests.warehouses import empty_embedded_warehouse

DAY0 = datetime(2026, 11, 10, 12, 0, tzinfo=SHANGHAI)
RULES = ContactRules(per_day=20, per_week=100)


def order(who: str, at: datetime, n: int, sku: str = "SKU-0012", building: str = "C01-B03") -> dict:
    return event("order", occurred_at=at.isoformat(), order_id=f"ord-loop-{who}-{n}", buyer={"openid": who},
                 building_id=building, items=[{"sku": sku, "category": "vegetables", "qty": 1, "unit_price": 6.5,
                                               "origin": "Chongming, Shanghai", "batch_id": "B2026-11-18-04"}])


def grant(who: str) -> dict:
    return event("consent", occurred_at=(DAY0 - timedelta(days=30)).isoformat(), subject={"openid": who},
                 purpose="marketing", channel="all", granted=True)


def oneid_of(store: Warehouse, event_id: str) -> str:
    return str(store.scalar("SELECT oneid FROM event_oneid WHERE event_id = {e:String}", {"e": event_id}))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Warehouse, list[dict]]]:
    """Two weeks of orders: a regular who buys the same staple every four days, a neighbour who
    orders once before the window, and newcomers inside it (an order, a consent then an order)."""
    with empty_embedded_warehouse(tmp_path_factory.mktemp("loop") / "home") as (cfg, store):
        events = [grant(w) for w in ("oLoop-regular", "oLoop-old")]
        events += [order("oLoop-regular", DAY0 + timedelta(days=4 * k), k) for k in range(4)]
        events += [order("oLoop-old", DAY0, 0, sku="SKU-0203")]
        events += [order("oLoop-new1", DAY0 + timedelta(days=13, hours=2), 0, sku="SKU-0203"),
                   event("consent", occurred_at=(DAY0 + timedelta(days=13, hours=3)).isoformat(), subject={"openid": "oLoop-new2"},
                         purpose="marketing", channel="all", granted=True),
                   order("oLoop-new2", DAY0 + timedelta(days=13, hours=4), 0, sku="SKU-0203")]
        ingest(cfg, events)
        yield cfg, store, events


def test_the_replay_finds_the_streams_signals_over_the_window(loaded) -> None:
    """new_neighbour from the stream's rule over the same rows (the stream's batch of the window's
    events after the earlier ones), replenishment_due from the stream's evaluation at the same moment."""
    from lastmile.identity.forget import forgotten_tokens
    from lastmile.ingest import Ingestor
    from lastmile.journeys.replay_signals import ReplaySignals
    from lastmile.privacy import Identifiers
    from lastmile.streaming.sink import WrittenBatch

    cfg, store, events = loaded
    start = DAY0 + timedelta(days=13)
    ingestor = Ingestor(Identifiers(cfg, forgotten=forgotten_tokens(store)))
    before = [e for e in events if datetime.fromisoformat(e["occurred_at"]) <= start]
    window = [e for e in events if datetime.fromisoformat(e["occurred_at"]) > start]
    stream = NewNeighbours(set())
    stream.decide(WrittenBatch(ingestor.process("test", [(n, orjson.dumps(e)) for n, e in enumerate(before, 1)]), len(before)))
    expected, _ = stream.decide(WrittenBatch(ingestor.process("test", [(n, orjson.dumps(e)) for n, e in enumerate(window, 1)]),
                                             len(window)))

    zone = cfg.business_zone
    signals = ReplaySignals(store, {NEW_NEIGHBOUR, "replenishment_due"}, start, zone, RULES.quiet_end)
    found = signals.new_neighbours(start, start + timedelta(days=1))
    assert [(e.event_id, e.at, e.fields) for e in found] == [(e.event_id, e.at, e.fields) for e in expected]
    assert len(found) == 2  # the two newcomers, each once (the consent first for oLoop-new2)
    assert signals.new_neighbours(start, start + timedelta(days=1)) == []  # seen now

    morning = datetime(2026, 11, 26, 8, 0, tzinfo=SHANGHAI)  # the regular's staple is due on the 26th
    due = signals.due(morning - timedelta(days=1), morning)
    stream_due = DueReplenishments(store).evaluate(morning)
    assert [(e.event_id, e.oneid, e.at, e.fields) for e in due] == [(e.event_id, e.oneid, e.at, e.fields) for e in stream_due]
    assert [e.fields["sku"] for e in due] == ["SKU-0012"]


def test_audience_entries_at_the_datas_time_start_runs_that_are_followed_to_their_end(loaded, tmp_path: Path) -> None:
    """An entry stamped with the data's newest moment (as the main job's refresh stamps it) starts
    its run then, not at the wall clock; the replay follows it past the last event to its sends."""
    from lastmile.audiences.membership import ensure_tables
    from lastmile.journeys.replay import replay

    cfg, store, events = loaded
    folder = tmp_path / "journeys"
    folder.mkdir()
    (folder / "check_in.yml").write_text("""name: check_in
description: A leader writes the next morning to a neighbour who entered the audience.
owner: test
trigger: {audience: lapsed_health_tea_buyers}
goal: {event: order, within: {days: 2}}
steps:
  - wait: {until: "10:00"}
  - name: leader_message
    send: {template: leader_tea_check_in, channel: wecom_leader, purposes: [marketing]}
""", encoding="utf-8")
    journeys = load_journeys(folder)
    last = max(datetime.fromisoformat(e["occurred_at"]) for e in events)
    old = oneid_of(store, events[6]["event_id"])  # oLoop-old's order
    ensure_tables(store)
    store.insert_rows("audience_membership_changes", [("lapsed_health_tea_buyers", "v1", old, "enter",
                                                       last.astimezone(timezone.utc).replace(tzinfo=None), "test")],
                      ["audience", "version", "oneid", "change", "at", "reason"])
    report = replay(store, journeys, ContactDesk(store, RULES, cfg), cfg.business_zone, days=2)
    assert report.end == last and report.followed is not None and report.followed > last
    assert f"to {last:%Y-%m-%d} (runs followed to" in report.text()
    steps = [(name, outcome, at.replace(tzinfo=timezone.utc)) for name, outcome, at in store.rows(
        "SELECT step_name, toString(outcome), at FROM journey_steps FINAL WHERE journey = 'check_in' AND oneid = {o:String} "
        "ORDER BY at, step_name", {"o": old})]
    next_ten = datetime(2026, 11, 24, 10, 0, tzinfo=SHANGHAI)
    assert steps[0] == ("enter", "entered", last)
    assert ("leader_message", "sent", next_ten) in steps and steps[-1][1] == "completed"


def test_a_journey_send_to_an_at_risk_person_beyond_the_daily_cap_is_refused_for_spending_health(loaded, tmp_path: Path) -> None:
    """The desk asks who is at risk for sends whose caller did not say: the at-risk regular gets the
    first marketing message of the day, the second is refused for spending_health; someone not at
    risk gets both."""
    from lastmile.journeys.scheduler import JourneyRunner
    from lastmile.journeys.engine import Event
    from lastmile.journeys import store as journey_store
    from lastmile.models.spending_risk import SpendingRisk

    cfg, store, events = loaded
    assert SpendingRisk(cfg).at_risk(["anyone"]) == set()  # no trained model here: nobody flagged, and why
    risk = SpendingRisk(cfg)
    risk.at_risk([])
    assert risk.unavailable and "lastmile train" in risk.unavailable

    folder = tmp_path / "journeys"
    folder.mkdir()
    (folder / "twice.yml").write_text("""name: twice
description: Two offers an hour apart.
owner: test
trigger: {event: order}
steps:
  - name: first
    send: {template: offer, channel: mini_program_push, purposes: [marketing]}
  - wait: {hours: 1}
  - name: second
    send: {template: offer_again, channel: mini_program_push, purposes: [marketing]}
""", encoding="utf-8")
    regular = oneid_of(store, events[2]["event_id"])
    other = oneid_of(store, events[6]["event_id"])
    rules = ContactRules(per_day=20, per_week=100, spending_health_daily_cap=1, spending_health_holdout=0.0)
    asked: list[list[str]] = []

    def flagged(oneids):
        asked.append(list(oneids))
        return {regular} & set(oneids)

    runner = JourneyRunner(store, load_journeys(folder), ContactDesk(store, rules, cfg, risk=flagged), cfg.business_zone)
    at = datetime(2026, 11, 30, 11, 0, tzinfo=SHANGHAI)
    journey_store.note(store, [Event(f"ev-risk-{n}", "order", who, at, {"order_id": f"ord-risk-{n}"})
                               for n, who in enumerate((regular, other))])
    runner.tick(at + timedelta(hours=2))
    outcomes = dict(((oneid, name), (outcome, reason)) for oneid, name, outcome, reason in store.rows(
        "SELECT oneid, step_name, toString(outcome), reason FROM journey_steps FINAL WHERE journey = 'twice' AND kind = 'send'"))
    assert outcomes[(regular, "first")] == ("sent", "")
    assert outcomes[(regular, "second")] == ("refused", "spending_health")
    assert outcomes[(other, "first")] == ("sent", "") and outcomes[(other, "second")] == ("sent", "")
    assert any(regular in a for a in asked)


def test_the_stream_notes_neighbour_joined_after_the_first_order_is_resolved(loaded) -> None:
    """A newcomer's first order in oLoop-old's building becomes oLoop-old's ``neighbour_joined``
    (the referral's goal) at the pass after OneID resolved it, once, however often it is read;
    the order's event time lies days before the journeys' clock (it arrived late)."""
    import asyncio

    from lastmile.identity.store import resolve_pending
    from lastmile.ingest import Ingestor
    from lastmile.journeys.signals import joined_id
    from lastmile.journeys.stream import StreamJourneys
    from lastmile.privacy import Identifiers
    from lastmile.streaming.sink import Record, StreamSink
    from tests.test_journeys import shipped

    cfg, store, events = loaded
    old = oneid_of(store, events[6]["event_id"])
    store.command("CREATE TABLE audience_traits (oneid String, home_building_id String) ENGINE = MergeTree ORDER BY oneid")
    sink = StreamSink(store, Ingestor(Identifiers(cfg)))
    try:
        store.insert_rows("audience_traits", [(old, "C01-B03")], ["oneid", "home_building_id"])
        hook = StreamJourneys(sink, [shipped("neighbour_referral"), shipped("predictive_reservation")],
                              ContactDesk(store, RULES, cfg), cfg.business_zone, every_s=0)
        assert hook.joins
        sink.handlers.append(hook.handler())
        first = order("oLoop-new3", DAY0 + timedelta(days=15), 0)
        asyncio.run(sink.handle([Record("lastmile.order", 0, 1, orjson.dumps(first))]))
        joined = joined_id(old, first["event_id"])
        assert old not in joined  # forgetting the person leaves no trace in the inbox's ids
        inbox = "SELECT count() FROM journey_inbox FINAL WHERE event_id = {e:String}"
        hook.after_resolve()  # the order's buyer is not resolved yet: nobody joined
        assert store.scalar(inbox, {"e": joined}) == 0
        identifiers = sink.ingestor.identifiers
        resolve_pending(store, identifiers.rules, frozenset(identifiers.rules.blocked_tokens(identifiers.hasher)))
        hook.after_resolve()
        hook.after_resolve()  # read again within the lookback: still one signal
        assert store.rows("SELECT event_type, oneid FROM journey_inbox FINAL WHERE event_id = {e:String}", {"e": joined}) == [
            ("neighbour_joined", old)]
        buyer = oneid_of(store, first["event_id"])
        assert store.scalar("SELECT count() FROM journey_inbox FINAL WHERE event_type = 'neighbour_joined' AND oneid = {o:String}",
                            {"o": buyer}) == 0  # the buyer is not their own neighbour
    finally:
        sink.close()
        store.command("DROP TABLE IF EXISTS audience_traits")
