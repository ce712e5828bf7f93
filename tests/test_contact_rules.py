"""Consent and contact rules: every rule refuses with its reason, consent changes win by event time."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from lastmile.audiences.contact_rules import (
    Allowed,
    ContactDesk,
    ContactRules,
    ContactRulesError,
    Refused,
    Send,
    load_rules,
)
from lastmile.config import Settings
from lastmile.identity.forget import forget
from lastmile.ingest import Ingestor
from lastmile.identity.identifiers import normalize
from lastmile.privacy import Identifiers
from lastmile.streaming.sink import Record, StreamSink
from lastmile.warehouse import Warehouse
from pipelines import beam_ingest
from tests.factories import event
from tests.warehouses import empty_embedded_warehouse

SHANGHAI = timezone(timedelta(hours=8))
#: A Tuesday afternoon in the business zone: outside the default quiet hours.
NOON = datetime(2026, 11, 24, 14, 0, tzinfo=SHANGHAI)
_batches = itertools.count(1)
_people = itertools.count(1)
_sends = itertools.count(1)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Warehouse]]:
    """One embedded warehouse for the module; each test uses people of its own."""
    with empty_embedded_warehouse(tmp_path_factory.mktemp("contact") / "home") as opened:
        yield opened


def ingest(cfg: Settings, events: list[dict]) -> None:
    directory = cfg.home / f"batch{next(_batches)}"
    directory.mkdir(parents=True)
    by_type: dict[str, list[bytes]] = {}
    for e in events:
        by_type.setdefault(e["event_type"], []).append(orjson.dumps(e))
    for event_type, lines in by_type.items():
        (directory / f"{event_type}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    beam_ingest.run(directory, cfg=cfg)


def consent(openid: str, at: datetime, granted: bool, purpose: str = "marketing", channel: str = "mini_program_push") -> dict:
    return event("consent", occurred_at=at.isoformat(), subject={"openid": openid}, purpose=purpose,
                 channel=channel, granted=granted)


def person(store: Warehouse, openid: str) -> str:
    """The OneID of the person who gave consent with this openid."""
    rows = store.rows("SELECT oneid FROM event_oneid WHERE event_id = {e:String}", {"e": _first_event[openid]})
    assert rows, f"no OneID for {openid}"
    return rows[0][0]


_first_event: dict[str, str] = {}
_openid: dict[str, str] = {}


def consenting(cfg: Settings, store: Warehouse, *extra: dict, purposes: tuple[str, ...] = ("marketing",),
               channel: str = "mini_program_push") -> str:
    """A new person who granted ``purposes`` on ``channel`` a week before NOON; their OneID."""
    openid = f"oTest-{next(_people):05d}"
    grants = [consent(openid, NOON - timedelta(days=7), True, p, channel) for p in purposes]
    _first_event[openid] = grants[0]["event_id"]
    ingest(cfg, grants + [{**e, "subject": {"openid": openid}} for e in extra])
    oneid = person(store, openid)
    _openid[oneid] = openid
    return oneid


def send(oneid: str, at: datetime = NOON, origin: str = "lapsed_tea_buyers", purposes: tuple[str, ...] = ("marketing",),
         channel: str = "mini_program_push", send_id: str | None = None, **kw: object) -> Send:
    return Send(send_id or f"send-{next(_sends):06d}", oneid, channel, purposes, at, origin, **kw)  # type: ignore[arg-type]


def refusals(store: Warehouse, oneid: str) -> list[tuple[str, str]]:
    return store.rows("SELECT send_id, reason FROM contact_refusals FINAL WHERE oneid = {o:String} ORDER BY send_id", {"o": oneid})


def test_a_granted_person_is_contacted_and_the_send_is_counted(warehouse: tuple[Settings, Warehouse]) -> None:
    cfg, store = warehouse
    oneid = consenting(cfg, store)
    desk = ContactDesk(store, ContactRules(), cfg)
    s = send(oneid)
    assert desk.decide(s) == Allowed(s.send_id)
    assert store.rows("SELECT send_id, origin FROM contact_sends FINAL WHERE oneid = {o:String}", {"o": oneid}) == [
        (s.send_id, "lapsed_tea_buyers")]
    assert refusals(store, oneid) == []


def test_no_consent_event_at_all_is_no_consent(warehouse: tuple[Settings, Warehouse]) -> None:
    cfg, store = warehouse
    oneid = consenting(cfg, store, purposes=("personalised_recommendation",))
    desk = ContactDesk(store, ContactRules(), cfg)
    decision = desk.decide(send(oneid))
    assert isinstance(decision, Refused) and decision.reason == "no_consent"
    assert "marketing: never granted" in decision.detail
    assert [r for _, r in refusals(store, oneid)] == ["no_consent"]


def test_health_content_needs_the_separate_health_consent(warehouse: tuple[Settings, Warehouse]) -> None:
    cfg, store = warehouse
    oneid = consenting(cfg, store)
    desk = ContactDesk(store, ContactRules(), cfg)
    decision = desk.decide(send(oneid, purposes=("marketing", "health")))
    assert isinstance(decision, Refused) and decision.reason == "no_consent" and "health" in decision.detail


def test_a_grant_on_one_channel_is_not_consent_on_another(warehouse: tuple[Settings, Warehouse]) -> None:
    cfg, store = warehouse
    oneid = consenting(cfg, store, channel="sms")
    desk = ContactDesk(store, ContactRules(), cfg)
    assert desk.decide(send(oneid, channel="sms")).allowed
    assert desk.decide(send(oneid, channel="wecom_leader")).reason == "no_consent"  # type: ignore[union-attr]


def test_granted_then_withdrawn_the_later_event_wins_whatever_the_arrival_order(warehouse: tuple[Settings, Warehouse]) -> None:
    cfg, store = warehouse
    openid = f"oTest-{next(_people):05d}"
    grant = consent(openid, NOON - timedelta(days=3), True)
    withdraw = consent(openid, NOON - timedelta(days=2), False, channel="all")
    regrant_before = consent(openid, NOON - timedelta(days=5), True)
    _first_event[openid] = grant["event_id"]
    ingest(cfg, [withdraw])  # the withdrawal arrives first
    ingest(cfg, [grant, regrant_before])  # older grants arrive late: they do not revive consent
    oneid = person(store, openid)
    desk = ContactDesk(store, ContactRules(), cfg)
    assert desk.current_consent(oneid, "mini_program_push") == {"marketing": False}
    decision = desk.decide(send(oneid))
    assert isinstance(decision, Refused) and decision.reason == "no_consent" and "withdrawn" in decision.detail


def test_a_withdrawal_takes_effect_for_the_next_decision(warehouse: tuple[Settings, Warehouse]) -> None:
    cfg, store = warehouse
    oneid = consenting(cfg, store)
    openid = _openid[oneid]
    desk = ContactDesk(store, ContactRules(), cfg)
    assert desk.decide(send(oneid)).allowed
    ingest(cfg, [consent(openid, NOON - timedelta(hours=1), False)])
    decision = desk.decide(send(oneid, at=NOON + timedelta(minutes=1)))
    assert isinstance(decision, Refused) and decision.reason == "no_consent"


def test_caps_count_sends_across_audiences_and_triggers(warehouse: tuple[Settings, Warehouse]) -> None:
    cfg, store = warehouse
    oneid = consenting(cfg, store)
    desk = ContactDesk(store, ContactRules(per_day=2, per_week=3), cfg)
    assert desk.decide(send(oneid, origin="lapsed_tea_buyers")).allowed
    assert desk.decide(send(oneid, at=NOON + timedelta(hours=1), origin="late_night_regulars")).allowed
    third = desk.decide(send(oneid, at=NOON + timedelta(hours=2), origin="replenishment_nudge"))
    assert isinstance(third, Refused) and third.reason == "capped" and "today" in third.detail
    # The next business day has room again, until the week's cap.
    assert desk.decide(send(oneid, at=NOON + timedelta(days=1), origin="late_night_regulars")).allowed
    week = desk.decide(send(oneid, at=NOON + timedelta(days=2), origin="lapsed_tea_buyers"))
    assert isinstance(week, Refused) and week.reason == "capped" and "week" in week.detail
    # A new week (Monday in the business zone) starts again.
    assert desk.decide(send(oneid, at=NOON + timedelta(days=6), origin="lapsed_tea_buyers")).allowed
    assert [r for _, r in refusals(store, oneid)] == ["capped", "capped"]


def test_service_messages_need_no_marketing_consent_and_do_not_use_the_caps(warehouse: tuple[Settings, Warehouse]) -> None:
    cfg, store = warehouse
    oneid = consenting(cfg, store, purposes=("personalised_recommendation",))
    desk = ContactDesk(store, ContactRules(per_day=1), cfg)
    for hour in range(3):
        assert desk.decide(send(oneid, at=NOON + timedelta(hours=hour), origin="compensation", purposes=("service",))).allowed


@pytest.mark.parametrize(("local", "quiet"), [
    ("2026-11-24T20:59:00+08:00", False), ("2026-11-24T21:00:00+08:00", True), ("2026-11-24T23:59:00+08:00", True),
    ("2026-11-25T00:30:00+08:00", True), ("2026-11-25T07:59:00+08:00", True), ("2026-11-25T08:00:00+08:00", False),
    # The same instants written in UTC: the business zone decides, not the sender's.
    ("2026-11-24T16:30:00+00:00", True), ("2026-11-24T23:59:00+00:00", True), ("2026-11-25T00:00:00+00:00", False),
])
def test_quiet_hours_span_midnight_in_the_business_zone(warehouse: tuple[Settings, Warehouse], local: str, quiet: bool) -> None:
    cfg, store = warehouse
    oneid = consenting(cfg, store)
    desk = ContactDesk(store, ContactRules(per_day=10, per_week=10), cfg)
    decision = desk.decide(send(oneid, at=datetime.fromisoformat(local)))
    assert decision.allowed is not quiet
    if quiet:
        assert isinstance(decision, Refused) and decision.reason == "quiet_hours"


def test_quiet_hours_hold_back_marketing_not_service_messages(warehouse: tuple[Settings, Warehouse]) -> None:
    cfg, store = warehouse
    oneid = consenting(cfg, store)
    desk = ContactDesk(store, ContactRules(), cfg)
    night = datetime(2026, 11, 25, 2, 0, tzinfo=SHANGHAI)
    assert desk.decide(send(oneid, at=night, purposes=("service",))).allowed
    assert desk.decide(send(oneid, at=night)).reason == "quiet_hours"  # type: ignore[union-attr]


def test_spending_health_caps_at_risk_customers_unless_they_declared_a_dietary_need(warehouse: tuple[Settings, Warehouse]) -> None:
    cfg, store = warehouse
    desk = ContactDesk(store, ContactRules(per_day=5, spending_health_daily_cap=1), cfg)
    at_risk = consenting(cfg, store)
    assert desk.decide(send(at_risk, at_risk=True)).allowed
    second = desk.decide(send(at_risk, at=NOON + timedelta(hours=1), at_risk=True))
    assert isinstance(second, Refused) and second.reason == "spending_health"
    exempt = consenting(cfg, store)
    assert desk.decide(send(exempt, at_risk=True, dietary_need_declared=True)).allowed
    assert desk.decide(send(exempt, at=NOON + timedelta(hours=1), at_risk=True, dietary_need_declared=True)).allowed
    healthy = consenting(cfg, store)
    assert desk.decide(send(healthy)).allowed and desk.decide(send(healthy, at=NOON + timedelta(hours=1))).allowed


def test_the_medical_exemption_is_read_from_the_declarations(warehouse: tuple[Settings, Warehouse], tmp_path: Path) -> None:
    from lastmile.models.consent import load_dietary_declarations

    cfg, store = warehouse
    oneid = consenting(cfg, store)
    declarations = tmp_path / "declarations.jsonl"
    declarations.write_bytes(orjson.dumps({"oneid": oneid, "dietary_need": True, "declared_at": "2026-11-01T00:00:00+08:00",
                                           "source": "health_form"}) + b"\n")
    load_dietary_declarations(cfg, declarations)
    desk = ContactDesk(store, ContactRules(per_day=5, spending_health_daily_cap=1), cfg)
    assert desk.decide(send(oneid, at_risk=True)).allowed
    assert desk.decide(send(oneid, at=NOON + timedelta(hours=1), at_risk=True)).allowed


def test_a_forgotten_person_is_never_contacted(warehouse: tuple[Settings, Warehouse]) -> None:
    cfg, store = warehouse
    oneid = consenting(cfg, store)
    openid = _openid[oneid]
    forget(store, Identifiers(cfg), "openid", openid)
    desk = ContactDesk(store, ContactRules(), cfg)
    for purposes in (("marketing",), ("service",)):
        decision = desk.decide(send(oneid, purposes=purposes))
        assert isinstance(decision, Refused) and decision.reason == "forgotten"


def test_a_send_id_is_decided_once(warehouse: tuple[Settings, Warehouse]) -> None:
    cfg, store = warehouse
    oneid = consenting(cfg, store)
    desk = ContactDesk(store, ContactRules(per_day=1), cfg)
    first = desk.decide(send(oneid, send_id=f"retry-{oneid}"))
    assert first.allowed
    assert desk.decide(send(oneid, send_id=f"retry-{oneid}")) == first  # a retry is not capped by itself
    assert store.rows("SELECT count() FROM contact_sends WHERE oneid = {o:String}", {"o": oneid}) == [(1,)]
    refused = desk.decide(send(oneid, at=NOON + timedelta(hours=1), send_id=f"late-{oneid}"))
    assert isinstance(refused, Refused) and refused.reason == "capped"
    # Even once the cap would allow it (the next day), a decided refusal stays the answer.
    assert ContactDesk(store, ContactRules(per_day=5), cfg).decide(send(oneid, send_id=f"late-{oneid}")) == refused
    assert len(refusals(store, oneid)) == 1


def test_the_shipped_rules_file_loads_and_a_typo_is_an_error(tmp_path: Path) -> None:
    shipped = load_rules()
    assert (shipped.per_day, shipped.per_week, shipped.spending_health_daily_cap) == (2, 6, 1)
    assert shipped.quiet_start.hour == 21 and shipped.quiet_end.hour == 8
    bad = tmp_path / "rules.yml"
    bad.write_text("frequency_cap:\n  per_dya: 3\n")
    with pytest.raises(ContactRulesError, match="frequency_cap takes only"):
        load_rules(bad)
    bad.write_text("quiet_hours:\n  start: nine pm\n")
    with pytest.raises(ContactRulesError, match="quiet_hours.start"):
        load_rules(bad)
    assert load_rules(tmp_path / "absent.yml") == ContactRules()


def test_a_withdrawal_arriving_on_the_stream_refuses_the_next_send(warehouse: tuple[Settings, Warehouse]) -> None:
    """The stream worker's sink writes the withdrawal; the very next decision reads it."""
    cfg, store = warehouse
    oneid = consenting(cfg, store)
    openid = _openid[oneid]
    desk = ContactDesk(store, ContactRules(), cfg)
    assert desk.decide(send(oneid)).allowed
    sink = StreamSink(store, Ingestor(Identifiers(cfg)))
    try:
        withdrawal = orjson.dumps(consent(openid, NOON - timedelta(minutes=5), False, channel="all"))
        written = asyncio.run(sink.handle([Record("lastmile.consent", 0, next(_sends), withdrawal)]))
        assert written.batch.valid == 1
    finally:
        sink.close()
    decision = desk.decide(send(oneid, at=NOON + timedelta(seconds=5)))
    assert isinstance(decision, Refused) and decision.reason == "no_consent"


def test_exports_can_filter_a_whole_list_by_current_consent(warehouse: tuple[Settings, Warehouse]) -> None:
    from lastmile.audiences.contact_rules import consented_oneids_sql

    cfg, store = warehouse
    both = consenting(cfg, store, purposes=("marketing", "health"), channel="wecom_leader")
    marketing_only = consenting(cfg, store, purposes=("marketing",), channel="all")
    withdrawn = consenting(cfg, store, purposes=("marketing",), channel="wecom_leader")
    ingest(cfg, [consent(_openid[withdrawn], NOON - timedelta(days=1), False, channel="wecom_leader")])
    ids = {both, marketing_only, withdrawn}

    def listed(purposes: tuple[str, ...]) -> set[str]:
        return {r[0] for r in store.rows(consented_oneids_sql("wecom_leader", purposes))} & ids

    assert listed(("marketing",)) == {both, marketing_only}
    assert listed(("marketing", "health")) == {both}


def test_a_set_of_sends_is_decided_in_order_with_the_caps_counting_the_set(warehouse: tuple[Settings, Warehouse]) -> None:
    """A stream batch's actions are decided together: the third send of the day to one person
    is capped even when all three arrive at once, and a repeated send id gets one answer."""
    cfg, store = warehouse
    oneid, stranger = consenting(cfg, store), f"token:never-seen-{next(_people)}"
    desk = ContactDesk(store, ContactRules(per_day=2, per_week=6), cfg)
    sends = [send(oneid, at=NOON + timedelta(minutes=n)) for n in range(3)] + [send(stranger)]
    decisions = desk.decide_many([*sends, sends[0]])
    assert [d.allowed for d in decisions] == [True, True, False, False, True]
    assert (decisions[2].reason, decisions[3].reason) == ("capped", "no_consent")
    assert store.scalar("SELECT count() FROM contact_sends WHERE oneid = {o:String}", {"o": oneid}) == 2
    assert desk.decide_many(sends) == decisions[:4]  # decided once: the same answers, nothing written
    assert store.scalar("SELECT count() FROM contact_refusals WHERE oneid IN {o:Array(String)}", {"o": [oneid, stranger]}) == 2


def test_a_pass_decided_at_once_gets_the_answers_of_its_sends_decided_one_at_a_time(
        warehouse: tuple[Settings, Warehouse]) -> None:
    """A journey pass decides its sends together (one read per rule for all of them): each must
    get the answer it gets alone, in order. The mix: consent withdrawn, the day's cap reached by
    the pass's own earlier sends, quiet hours, the spending-health cap of an at-risk person
    (read by the desk's model, as for journey sends), service messages, a stranger. The
    one-at-a-time sends are two weeks later (same weekday and hours), so neither run's sends
    count toward the other's caps."""
    cfg, store = warehouse
    granted, thrice, at_risk, withdrawn = (consenting(cfg, store) for _ in range(4))
    ingest(cfg, [consent(_openid[withdrawn], NOON - timedelta(days=1), False)])
    stranger = f"token:never-seen-{next(_people)}"
    rules = ContactRules(per_day=2, per_week=6, spending_health_daily_cap=1, spending_health_holdout=0.0)

    def desk() -> ContactDesk:
        return ContactDesk(store, rules, cfg, risk=lambda people: {at_risk} & set(people))

    def mix(later: timedelta) -> list[Send]:
        def at(minutes: int) -> datetime:
            return NOON + later + timedelta(minutes=minutes)

        return [send(granted, at(0)), send(withdrawn, at(1)), send(thrice, at(2)), send(thrice, at(3)), send(thrice, at(4)),
                send(granted, datetime(2026, 11, 24, 23, 30, tzinfo=SHANGHAI) + later), send(at_risk, at(5)),
                send(at_risk, at(6)), send(withdrawn, at(7), purposes=("service",)), send(thrice, at(8), purposes=("service",)),
                send(granted, at(9), purposes=("marketing", "health")), send(stranger, at(10))]

    def answers(decisions: list) -> list[tuple[bool, str, str]]:
        return [(d.allowed, getattr(d, "reason", ""), getattr(d, "detail", "")) for d in decisions]

    together = answers(desk().decide_many(mix(timedelta(0))))
    one_desk = desk()
    alone = answers([one_desk.decide(s) for s in mix(timedelta(days=14))])
    assert together == alone
    assert [reason for _, reason, _ in together] == ["", "no_consent", "", "", "capped", "quiet_hours", "", "spending_health",
                                                     "", "", "no_consent", "no_consent"]


def test_a_neighbour_signing_up_with_consent_is_welcomed_before_oneid_runs(warehouse: tuple[Settings, Warehouse]) -> None:
    """The welcome's person has no OneID yet (``token:<token>``): the consent events naming their identifier decide."""
    cfg, store = warehouse
    openid = f"oSignup-{next(_people):05d}"
    ingest(cfg, [consent(openid, NOON - timedelta(minutes=1), True)])
    token = Identifiers(cfg).hasher.token("openid", normalize("openid", openid))
    desk = ContactDesk(store, ContactRules(), cfg)

    def welcome(person: str) -> Send:
        return send(f"token:{person}", origin="welcome_neighbour", send_id=f"welcome:{person}")

    signed_up, silent = desk.decide_many([welcome(token), welcome("some-other-token")])
    assert signed_up.allowed
    assert isinstance(silent, Refused) and silent.reason == "no_consent"


def test_the_stream_worker_has_no_switch_around_the_contact_rules() -> None:
    """Every send of the worker is a journey send and passes the contact rules: the only way to
    send nothing is to run without journeys, never to send without consent."""
    from dataclasses import fields

    from typer.main import get_command

    from lastmile.cli import app
    from pipelines.faust_worker import StreamOptions

    assert "contact_rules" not in {f.name for f in fields(StreamOptions)}
    flags = {flag for p in get_command(app).commands["stream"].params for flag in [*p.opts, *p.secondary_opts]}  # type: ignore[attr-defined]
    assert "--no-journeys" in flags and not any("contact" in flag for flag in flags)
