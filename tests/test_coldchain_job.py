"""The cold-chain job end to end on Flink: one hand-built telemetry file, one JVM, many checks.

Every compartment of the file plays one scenario (readings every minute from 08:00 +08:00,
in arrival order across compartments, the way a broker would deliver them). The job runs
twice over the same input in one module fixture (the second run reuses the JVM) and the
tests read the warehouse.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest

from lastmile.coldchain.config import ColdChainConfig
from lastmile.config import settings
from lastmile.warehouse import close_all, connect
from tests.factories import event

pytestmark = pytest.mark.slow

T0 = datetime(2026, 9, 7, 8, 0, tzinfo=timezone(timedelta(hours=8)))
MINUTES = 90
CC = ColdChainConfig(out_of_orderness_s=120, allowed_lateness_s=600, excursion_min_minutes=15, silence_after_s=900)


def at(minute: float) -> str:
    return (T0 + timedelta(minutes=minute)).isoformat()


def utc(minute: float) -> datetime:
    return (T0 + timedelta(minutes=minute)).astimezone(timezone.utc).replace(tzinfo=None)


#: compartment -> (product_class, {minute: temperature}) overriding the class's normal value.
NORMAL = {"chilled": 2.5, "frozen": -20.0, "ambient": 24.0}
SCENARIOS: dict[str, tuple[str, dict[int, float]]] = {
    "K-EXACT": ("chilled", {m: 6.5 for m in range(20, 36)}),  # out 20..35: exactly 15 min
    "K-SHORT": ("chilled", {m: 6.5 for m in range(20, 35)}),  # out 20..34: 14 min
    "K-FROZEN": ("frozen", {m: -16.0 for m in range(30, 51)}),  # -16 °C for 20 min
    "K-FROZEN-EDGE": ("frozen", {m: -18.0 for m in range(10, 60)}),  # exactly at the limit: in range
    "K-TOO-COLD": ("chilled", {m: -1.5 for m in range(10, 40)}),  # chilled below 0 °C for 29 min
    "K-CHILLED-EDGE": ("chilled", {m: 4.0 for m in range(10, 60)}),  # exactly 4.0: in range
    "K-SPIKE": ("chilled", {m: 9.0 for m in range(40, 43)}),  # door-open spike, 2 min
    "K-LATE-OK": ("chilled", {m: 7.0 for m in range(40, 56)}),  # 40..47 arrive 10 min late
    "K-TOO-LATE": ("chilled", {}),  # minute 10 arrives 60 minutes late
    "K-SILENT": ("chilled", {}),  # no readings 30 < m < 70
    "K-AMBIENT": ("ambient", {}),
}
DELAYED = {("K-LATE-OK", m): 50 for m in range(40, 48)}  # (compartment, minute) -> sent after minute
DELAYED[("K-TOO-LATE", 10)] = 70


#: (compartment, minute) -> the same instant written another way ISO 8601 allows.
SPELLINGS = {
    ("K-AMBIENT", 4): lambda t: t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.250Z"),
    ("K-AMBIENT", 6): lambda t: t.astimezone(timezone(timedelta(hours=-5, minutes=-30))).isoformat(),
}


def reading(comp: str, minute: int, **overrides: Any) -> dict[str, Any]:
    cls, temps = SCENARIOS[comp]
    fields = dict(locker_id="L-T-1", compartment_id=comp, community_id="C-T", product_class=cls,
                  temperature_c=temps.get(minute, NORMAL[cls]), door="open" if comp == "K-SPIKE" and minute in temps else "closed",
                  event_id=f"tl-{comp}-{minute:03d}")
    fields.update(overrides)
    spelled = SPELLINGS.get((comp, minute), lambda t: t.isoformat())(T0 + timedelta(minutes=minute))
    return event("locker_telemetry", occurred_at=fields.pop("occurred_at", spelled), **fields)


def telemetry_lines() -> list[bytes]:
    lines: list[bytes] = []
    held: dict[int, list[bytes]] = {}
    for minute in range(MINUTES):
        for comp in SCENARIOS:
            if comp == "K-SILENT" and 30 < minute < 70:
                continue
            line = orjson.dumps(reading(comp, minute))
            if (comp, minute) in DELAYED:
                held.setdefault(DELAYED[(comp, minute)], []).append(line)
                continue
            lines.append(line)
            if comp == "K-EXACT" and minute == 5:
                lines.append(line)  # a re-sent duplicate
        lines.extend(held.pop(minute, []))
        if minute == 3:
            lines.append(b'{"event_id": "broken')  # malformed: skipped, counted
            lines.append(orjson.dumps(reading("K-AMBIENT", 3, temperature_c=None, event_id="tl-invalid-1")))
            lines.append(orjson.dumps(reading("K-AMBIENT", 3, occurred_at="yesterday", event_id="tl-invalid-2")))
            lines.append(orjson.dumps(reading("K-AMBIENT", 3, occurred_at="2036-09-07T08:03:00+08:00", event_id="tl-future-1")))
    return lines


# Orders around K-EXACT's excursion (08:20..08:35, back in range 08:36). Goods are loaded 60 min
# before the slot starts; "pickup" None means never collected.
ORDERS: list[dict[str, Any]] = [
    dict(order_id="o-inside", comp="K-EXACT", placed=-120, slot=60, pickup=120, total=48.0),
    dict(order_id="o-claimed", comp="K-EXACT", placed=-120, slot=30, pickup=150, total=80.0, claim=Decimal("12.50")),
    dict(order_id="o-big", comp="K-EXACT", placed=-120, slot=60, pickup=100, total=880.0),
    dict(order_id="o-uncollected", comp="K-EXACT", placed=-300, slot=-120, pickup=None, total=30.0),
    dict(order_id="o-picked-before", comp="K-EXACT", placed=-180, slot=-60, pickup=10, total=25.0),
    dict(order_id="o-loaded-after", comp="K-EXACT", placed=-120, slot=100, pickup=200, total=25.0),
    dict(order_id="o-other-compartment", comp="K-SHORT", placed=-120, slot=60, pickup=120, total=25.0),
]


def order_events() -> dict[str, list[bytes]]:
    files: dict[str, list[bytes]] = {"order": [], "pickup": [], "return": []}
    for o in ORDERS:
        files["order"].append(orjson.dumps(event(
            "order", occurred_at=at(o["placed"]), order_id=o["order_id"], compartment_id=o["comp"], locker_id="L-T-1",
            delivery_slot_start=at(o["slot"]), delivery_slot_end=at(o["slot"] + 120), total_amount=o["total"],
            event_id=f"ev-ord-{o['order_id']}")))
        if o["pickup"] is not None:
            files["pickup"].append(orjson.dumps(event(
                "pickup", occurred_at=at(o["pickup"]), order_id=o["order_id"], compartment_id=o["comp"],
                locker_id="L-T-1", event_id=f"ev-pick-{o['order_id']}")))
        if "claim" in o:
            files["return"].append(orjson.dumps(event(
                "return", occurred_at=at(o["pickup"] + 30), order_id=o["order_id"], reason="temperature",
                amount=float(o["claim"]), event_id=f"ev-claim-{o['order_id']}")))
    return files


def snapshot(warehouse) -> dict[str, list[tuple]]:
    tables = {
        "coldchain_windows": "window_minutes, compartment_id, window_start",
        "coldchain_excursions": "compartment_id, started_at",
        "coldchain_silences": "compartment_id, silent_from",
        "coldchain_late_readings": "reason, event_id",
        "cold_chain_incidents": "incident_id",
        "claim_decisions": "order_id",
    }
    return {t: warehouse.rows(f"SELECT * EXCEPT _loaded_at FROM {t} FINAL ORDER BY {o}") for t, o in tables.items()}


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from pipelines import beam_ingest, flink_telemetry

    root = tmp_path_factory.mktemp("coldchain")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LASTMILE_HOME", str(root / "home"))
        mp.setenv("LASTMILE_HASH_KEY", "test-key-not-secret")
        mp.delenv("LASTMILE_CLICKHOUSE_URL", raising=False)
        close_all()
        cfg = settings()
        orders_dir = root / "orders"
        orders_dir.mkdir()
        for name, lines in order_events().items():
            (orders_dir / f"{name}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        beam_ingest.run(orders_dir, cfg=cfg)
        events_dir = root / "events"
        events_dir.mkdir()
        lines = telemetry_lines()
        (events_dir / "locker_telemetry.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        first = flink_telemetry.run(events_dir, cfg, coldchain=CC)
        warehouse = connect(cfg)
        before = snapshot(warehouse)
        second = flink_telemetry.run(events_dir, cfg, coldchain=CC)
        yield {"first": first, "second": second, "before": before, "after": snapshot(warehouse),
               "warehouse": warehouse, "lines": len(lines)}
        close_all()


def excursions(job: dict[str, Any]) -> dict[str, tuple]:
    return {r[1]: r for r in job["after"]["coldchain_excursions"]}


def test_excursion_of_exactly_the_minimum_opens_and_one_minute_less_does_not(job: dict[str, Any]) -> None:
    found = excursions(job)
    assert "K-EXACT" in found and "K-SHORT" not in found
    exact = found["K-EXACT"]
    assert (exact[2], exact[3], exact[4]) == (utc(20), utc(35), utc(36))  # started, last out, back in range
    assert exact[6] == 15 * 60


def test_frozen_and_chilled_thresholds(job: dict[str, Any]) -> None:
    found = excursions(job)
    assert "K-FROZEN" in found and found["K-FROZEN"][2] == utc(30)
    assert "K-TOO-COLD" in found and found["K-TOO-COLD"][11] == -1.5  # temperature_min
    assert "K-FROZEN-EDGE" not in found and "K-CHILLED-EDGE" not in found
    assert "K-SPIKE" not in found and "K-AMBIENT" not in found


def test_out_of_order_readings_within_lateness_change_the_result(job: dict[str, Any]) -> None:
    # Without the readings of 40..47 (sent 10 minutes late) the run would span 48..55: too short.
    found = excursions(job)
    assert "K-LATE-OK" in found and found["K-LATE-OK"][2] == utc(40)
    late_ids = {r[1] for r in job["after"]["coldchain_late_readings"]}
    assert not any(i.startswith("tl-K-LATE-OK") for i in late_ids)


def test_too_late_reading_lands_in_the_late_table_with_its_reason(job: dict[str, Any]) -> None:
    rows = {r[1]: r for r in job["after"]["coldchain_late_readings"]}
    late = rows["tl-K-TOO-LATE-010"]
    assert late[0] == "beyond_allowed_lateness"
    assert late[4] == utc(10) and late[6] >= CC.watermark_delay_s  # late_by_s
    assert "behind the event-time watermark" in late[11]
    windows = {(r[0], r[1], r[2]) for r in job["after"]["coldchain_windows"]}
    assert (1, "K-TOO-LATE", utc(10)) not in windows and (1, "K-TOO-LATE", utc(11)) in windows
    assert rows["tl-invalid-1"][0] == rows["tl-invalid-2"][0] == "invalid_reading"
    assert rows["tl-invalid-2"][3] == "yesterday" and rows["tl-invalid-2"][4] is None
    # a clock years ahead is set aside, and did not drag the watermark along (see the test above)
    assert rows["tl-future-1"][0] == "future_timestamp"


def test_windows_aggregate_and_count_duplicates_once(job: dict[str, Any]) -> None:
    w = {(r[0], r[1], r[2]): r for r in job["after"]["coldchain_windows"]}
    one = w[(1, "K-EXACT", utc(5))]
    assert (one[7], one[8]) == (1, 1)  # readings, duplicates
    five = w[(5, "K-EXACT", utc(20))]
    assert five[7] == 5 and five[9] == five[10] == 6.5 and five[16] == 5  # readings, min, max, out of range
    spike = w[(5, "K-SPIKE", utc(40))]
    assert spike[15] > 0  # door_open_s
    # the same instant in UTC with a fraction, or at -05:30, lands in the same minute
    assert all(w[(1, "K-AMBIENT", utc(m))][7] == 1 for m in range(MINUTES))
    report = job["first"]
    assert report.skipped == 1 and report.invalid == 2 and report.late == 1 and report.duplicates == 1
    assert report.future == 1
    assert report.lines == report.readings + report.duplicates + report.late + report.invalid + report.future + report.skipped


def test_silence_is_an_incident(job: dict[str, Any]) -> None:
    silences = job["after"]["coldchain_silences"]
    assert [(r[0], r[1], r[2]) for r in silences] == [("K-SILENT", utc(30), utc(70))]
    kinds = {r[0]: r[1] for r in job["after"]["cold_chain_incidents"]}
    assert kinds["SIL-K-SILENT-20260907T003000Z"] == "silence"


def test_excursion_is_linked_to_the_orders_inside_only(job: dict[str, Any]) -> None:
    incident = {r[0]: r for r in job["after"]["cold_chain_incidents"]}["EXC-K-EXACT-20260907T002000Z"]
    assert sorted(incident[12]) == ["o-big", "o-claimed", "o-inside", "o-uncollected"]
    assert {r[0] for r in job["after"]["claim_decisions"]} == {"o-big", "o-claimed", "o-inside", "o-uncollected"}


def test_claims_are_auto_approved_matched_or_sent_to_review(job: dict[str, Any]) -> None:
    claims = {r[0]: r for r in job["after"]["claim_decisions"]}
    inside = claims["o-inside"]
    assert inside[2] == "auto_approved" and inside[3] == Decimal("14.40")  # minor: 30 % of 48.00
    assert "15 minutes" in inside[8] and "Approved automatically" in inside[8]
    claimed = claims["o-claimed"]
    assert claimed[2] == "matched_customer_claim" and claimed[5] == "ev-claim-o-claimed"
    assert claimed[3] == Decimal("12.50")
    assert claims["o-big"][2] == "needs_review"
    report = job["first"]
    assert (report.claims_auto_approved, report.claims_matched, report.claims_review) == (2, 1, 1)


def test_rerun_leaves_the_same_rows(job: dict[str, Any]) -> None:
    assert job["before"] == job["after"]
    warehouse = job["warehouse"]
    assert warehouse.count("claim_decisions") == 4
    assert warehouse.scalar("SELECT count() FROM coldchain_runs") == 2
    assert job["first"].windows_1m == job["second"].windows_1m > 0
