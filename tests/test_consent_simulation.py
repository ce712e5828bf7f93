"""The simulated residents' consent, through Beam ingest to the contact rules; and the
spending-health cap's arms: what the simulator does to capped residents and how the effect is measured."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from lastmile.audiences.contact_rules import ContactDesk, ContactRules, Refused, Send
from lastmile.config import Settings
from lastmile.contracts import EventParser
from lastmile.models.spending_effect import measure, record_arms
from lastmile.models.spending_holdout import in_holdout
from lastmile.simulator import SimulationConfig, simulate
from lastmile.simulator.spending_cap import SpendingCap
from lastmile.simulator.world import build_world
from lastmile.warehouse import Warehouse
from pipelines import beam_ingest
from tests.warehouses import empty_embedded_warehouse

FIXED_NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
CFG = SimulationConfig(seed=5, orders=1_500, weeks=2)
SHANGHAI = timezone(timedelta(hours=8))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("consent-sim")
    simulate(CFG, out)
    return out


@pytest.fixture(scope="module")
def ingested(sim: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Warehouse]]:
    """The simulation's orders, identity events and consent, ingested by the Beam pipeline."""
    events = tmp_path_factory.mktemp("consent-events")
    for name in ("order", "identify", "consent"):
        shutil.copy(sim / "events" / f"{name}.jsonl", events / f"{name}.jsonl")
    with empty_embedded_warehouse(tmp_path_factory.mktemp("consent-home")) as (cfg, store):
        beam_ingest.run(events, cfg=cfg)
        yield cfg, store


def test_every_resident_who_ordered_chose_by_persona_and_some_withdrew_later(sim: Path) -> None:
    parser = EventParser(now=lambda: FIXED_NOW)
    malformed = {r["line"] for r in _jsonl(sim / "truth" / "injected.jsonl")
                 if r["file"] == "events/consent.jsonl" and r["kind"] == "malformed"}
    events = []
    for n, line in enumerate((sim / "events" / "consent.jsonl").read_bytes().splitlines(), 1):
        if n in malformed:
            with pytest.raises(Exception):
                parser.judge(line)
            continue
        events.append(parser.judge(line)[0])
    assert malformed and len(events) > 1_000
    truth = _jsonl(sim / "truth" / "consent.jsonl")
    persona = {r["person_id"]: r["persona"] for r in _jsonl(sim / "truth" / "persons.jsonl")}
    buyers = {r["person_id"] for r in _jsonl(sim / "truth" / "orders.jsonl")}
    consenting = {r["person_id"] for r in truth}
    assert consenting <= buyers and len(consenting) > 0.9 * len(buyers)
    # seniors read SMS and trust their leader; young night owls neither as much
    by = Counter((persona[r["person_id"]], r["channel"]) for r in truth if r["purpose"] == "marketing")
    people = Counter(persona[p] for p in consenting)
    share = {k: (by[k] + by[(k[0], "all")]) / people[k[0]] for k in by if k[1] != "all"}
    assert share[("senior_health", "sms")] > share[("young_night", "sms")] + 0.15
    assert share[("senior_health", "wecom_leader")] > share[("young_night", "wecom_leader")]
    # health-related processing is its own consent, on every channel at once
    assert {(e["channel"]) for e in events if e["purpose"] == "health"} == {"all"}
    withdrawn = [e for e in events if not e["granted"]]
    assert withdrawn and 0.01 < len(withdrawn) / len(events) < 0.08
    assert {e["source"] for e in withdrawn} >= {"sms_reply", "leader_form"}


def test_consent_leaves_every_other_file_as_it_was(sim: Path, tmp_path: Path) -> None:
    without = simulate(replace(CFG, consent=False), tmp_path)
    assert "consent" not in without.counts and not (tmp_path / "events" / "consent.jsonl").exists()
    for path in sorted((tmp_path / "events").glob("*.jsonl")):
        assert path.read_bytes() == (sim / "events" / path.name).read_bytes(), path.name


def test_ingested_consent_lets_sends_through_and_a_withdrawal_refuses_them(sim: Path, ingested: tuple[Settings, Warehouse]) -> None:
    cfg, store = ingested
    injected = sum(1 for r in _jsonl(sim / "truth" / "injected.jsonl") if r["file"] == "events/consent.jsonl" and r["kind"] == "malformed")
    assert store.scalar("SELECT count() FROM quarantine WHERE source LIKE '%consent.jsonl'") == injected
    valid = [e for e in _jsonl_events(sim / "events" / "consent.jsonl")]
    assert store.scalar("SELECT count() FROM raw_consent FINAL") == len({e["event_id"] for e in valid})
    # each consent event reaches its person's OneID, as the contact rules read it
    oneid_of = dict(store.rows("SELECT event_id, oneid FROM event_oneid WHERE event_type = 'consent'"))
    push = [e for e in valid if e["channel"] == "mini_program_push" and e["purpose"] == "marketing"]
    withdrawn = {oneid_of[e["event_id"]] for e in push if not e["granted"] and e["event_id"] in oneid_of}
    granted = {oneid_of[e["event_id"]] for e in push if e["granted"] and e["event_id"] in oneid_of} - withdrawn
    assert withdrawn and granted
    desk = ContactDesk(store, ContactRules(per_day=50, per_week=50), cfg)
    at = datetime(2026, 9, 22, 10, 0, tzinfo=SHANGHAI)
    sends = [Send(f"t-{o}", o, "mini_program_push", ("marketing",), at, "test") for o in sorted(withdrawn | granted)]
    decisions = {s.oneid: d for s, d in zip(sends, desk.decide_many(sends))}
    assert all(isinstance(decisions[o], Refused) and decisions[o].reason == "no_consent"
               and "withdrawn" in decisions[o].detail for o in withdrawn)
    assert sum(decisions[o].allowed for o in granted) > 0.9 * len(granted)


def test_the_holdout_of_the_cap_is_never_capped(ingested: tuple[Settings, Warehouse], sim: Path) -> None:
    cfg, store = ingested
    events = _jsonl_events(sim / "events" / "consent.jsonl")
    oneid_of = dict(store.rows("SELECT event_id, oneid FROM event_oneid WHERE event_type = 'consent'"))
    person = next(oneid_of[e["event_id"]] for e in events if e["granted"] and e["purpose"] == "marketing"
                  and e["channel"] in ("mini_program_push", "all") and e["event_id"] in oneid_of
                  and not any(not x["granted"] and oneid_of.get(x["event_id"]) == oneid_of[e["event_id"]] for x in events))
    noon = datetime(2026, 9, 23, 12, 0, tzinfo=SHANGHAI)
    for share, second in ((0.0, "spending_health"), (1.0, None)):
        desk = ContactDesk(store, ContactRules(per_day=5, spending_health_daily_cap=1, spending_health_holdout=share), cfg)
        sends = [Send(f"h{share}-{k}", person, "mini_program_push", ("marketing",), noon + timedelta(hours=k, days=int(share)),
                      "test", at_risk=True) for k in range(2)]
        first, then = desk.decide_many(sends)
        assert first.allowed and getattr(then, "reason", None) == second
    assert in_holdout(person, 1.0) and not in_holdout(person, 0.0)


def test_capped_residents_drop_the_configured_share_of_impulse_units_and_the_holdout_none() -> None:
    cfg = SimulationConfig(seed=3, orders=2_000, weeks=2, spending_cap_from_day=7, spending_cap_effect=0.38)
    world = build_world(cfg)
    cap = SpendingCap(world, cfg)
    held = [p for p in cap.at_risk if p.index not in cap.capped]
    capped = [p for p in cap.at_risk if p.index in cap.capped]
    assert held and capped and abs(len(held) / len(cap.at_risk) - cfg.spending_health_holdout) < 0.12
    impulse = next(i for i, s in enumerate(world.skus) if s.is_impulse)
    staple = next(i for i, s in enumerate(world.skus) if not s.is_impulse)
    late, early = 8 * 86_400_000, 6 * 86_400_000
    basket = [(impulse, 4), (staple, 2)]
    assert cap.basket(late, held[0], basket) == basket and cap.basket(early, capped[0], basket) == basket
    kept = [cap.basket(late, capped[k % len(capped)], basket) for k in range(2_500)]
    assert all((staple, 2) in lines for lines in kept)
    bought = sum(units for lines in kept for s, units in lines if s == impulse)
    assert abs(1 - bought / (4 * len(kept)) - 0.38) < 0.03
    rows = cap.suppressed_rows()
    assert sum(r["units"] for r in rows) == 4 * len(kept) - bought
    assert {r["cause"] for r in rows} == {"spending_health_cap"} and {r["sku"] for r in rows} == {world.skus[impulse].sku}
    arms = Counter(r["arm"] for r in cap.arm_rows())
    assert arms == {"capped": len(capped), "holdout": len(held)}


@pytest.fixture(scope="module")
def orders_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    with empty_embedded_warehouse(tmp_path_factory.mktemp("cap-home")) as (_, store):
        yield store


def _customer_orders(store: Warehouse, effect: float, seed: int) -> None:
    """Four weeks of orders of 300 at-risk customers; from the third week, the capped arm's
    impulse spend is ``1 + effect`` times what it would have been."""
    rng = np.random.default_rng(seed)
    store.command("DROP TABLE IF EXISTS int_customer_orders")
    store.command("CREATE TABLE int_customer_orders (oneid String, ordered_at DateTime64(3, 'UTC'), "
                  "impulse_amount_cny Decimal(18, 2), lines UInt32) ENGINE = MergeTree ORDER BY (oneid, ordered_at)")
    start = datetime(2026, 9, 7, tzinfo=timezone.utc)
    since = start + timedelta(days=14)
    rows, arms = [], {}
    for k in range(300):
        oneid = f"oid_{seed}_{k:04d}"
        held = in_holdout(oneid, 0.3)
        arms[oneid] = (held, since)
        rate = rng.gamma(1.5, 1 / 1.5) * 0.8
        for day in range(28):
            for _ in range(rng.poisson(rate)):
                at = start + timedelta(days=day, hours=float(rng.uniform(8, 22)))
                spend = float(rng.gamma(2.0, 30.0)) * (1 + effect if at >= since and not held else 1.0)
                rows.append((oneid, at.replace(tzinfo=None), round(spend, 2), 2))
    store.insert_rows("int_customer_orders", rows, ["oneid", "ordered_at", "impulse_amount_cny", "lines"])
    store.command("DROP TABLE IF EXISTS spending_health_arms")
    record_arms(store, arms, "test")
    record_arms(store, arms, "test")  # recording again changes nothing


@pytest.mark.parametrize("effect", [-0.38, 0.0])
def test_the_measured_effect_of_the_cap_covers_the_true_one(orders_store: Warehouse, effect: float) -> None:
    _customer_orders(orders_store, effect, seed=11)
    result = measure(orders_store, resamples=500)
    assert result is not None and result.capped + result.holdout == 300 and 60 < result.holdout < 120
    assert result.low < effect < result.high and result.low < result.effect < result.high
    assert abs(result.effect - effect) < 0.15 and result.high - result.low < 0.5
    assert (result.capped_weekly_cny < result.holdout_weekly_cny) == (effect < 0) or effect == 0


def _jsonl_events(path: Path) -> list[dict[str, Any]]:
    """The valid events of a file (each event id once: duplicates re-send the same event)."""
    parser = EventParser(now=lambda: FIXED_NOW)
    out, seen = [], set()
    for line in path.read_bytes().splitlines():
        try:
            event = parser.judge(line)[0]
        except Exception:
            continue
        if event["event_id"] not in seen:
            seen.add(event["event_id"])
            out.append(event)
    return out
