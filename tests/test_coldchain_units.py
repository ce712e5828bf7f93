"""Cold-chain logic that needs no JVM: configuration, SQL text, linkage, claim policy, loading."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from lastmile.coldchain import linkage, load, policy, sql
from lastmile.coldchain.config import ColdChainConfig

CC = ColdChainConfig()
T = datetime(2026, 9, 7, 0, 0, tzinfo=timezone.utc)


def minutes(m: float) -> datetime:
    return T + timedelta(minutes=m)


# -- configuration and SQL ------------------------------------------------------------------


def test_config_rejects_unknown_options_and_empty_ranges() -> None:
    with pytest.raises(TypeError, match="excursion_minutes"):
        CC.with_options(excursion_minutes=10)
    with pytest.raises(ValueError, match="empty"):
        ColdChainConfig(ranges={"chilled": (5.0, 1.0)})
    assert CC.with_options(excursion_min_minutes=10).excursion_min_minutes == 10
    assert CC.watermark_delay_s == CC.out_of_orderness_s + CC.allowed_lateness_s


def test_out_of_range_expression_follows_the_ranges() -> None:
    expr = sql.out_of_range_sql(CC)
    assert "WHEN 'chilled' THEN temperature_c < 0.0 OR temperature_c > 4.0" in expr
    assert "WHEN 'frozen' THEN temperature_c > -18.0" in expr
    assert "WHEN 'ambient' THEN temperature_c > 30.0" in expr


def test_watermark_and_minimum_duration_reach_the_sql() -> None:
    cc = CC.with_options(out_of_orderness_s=60, allowed_lateness_s=3600, excursion_min_minutes=20)
    assert "INTERVAL '1:01:00' HOUR TO SECOND" in sql.source_ddl(cc, sql.Source(path="/x.jsonl"))
    assert "last_out_s - start_s >= 1200" in sql.excursion_query(cc)


def test_kafka_source_reads_the_telemetry_topic() -> None:
    ddl = sql.source_ddl(CC, sql.Source(bootstrap="kafka-1:9092"))
    assert "'connector' = 'kafka'" in ddl and "'topic' = 'lastmile.locker_telemetry'" in ddl
    assert "'json.ignore-parse-errors' = 'true'" in ddl


def test_stage_columns_follow_the_sink_columns() -> None:
    names = [n for n, _ in load.stage_columns("excursions")]
    assert names[:2] == ["compartment_id", "locker_id"] and "last_out_s" in names
    assert dict(load.stage_columns("windows"))["window_minutes"] == "Nullable(Int32)"


# -- linkage --------------------------------------------------------------------------------


def stay(order_id: str, slot: float, pickup: float | None, comp: str = "K1", placed: float = -600) -> linkage.OrderStay:
    return linkage.OrderStay(order_id, comp, placed_at=minutes(placed), slot_start=minutes(slot),
                             slot_end=minutes(slot + 120), total_cny=50.0,
                             picked_up_at=None if pickup is None else minutes(pickup))


SPAN = linkage.Span("EXC-1", "K1", started_at=minutes(100), ended_at=minutes(130))


def test_orders_inside_during_the_excursion_are_affected() -> None:
    stays = [
        stay("inside", slot=90, pickup=200),  # loaded at 30 (60 min lead), collected after
        stay("loaded-during", slot=180, pickup=300),  # loaded at 120, during the excursion
        stay("uncollected", slot=-200, pickup=None),  # never collected: cleared 48 h after its slot
    ]
    assert [s.order_id for s in linkage.affected(SPAN, stays, CC)] == ["inside", "loaded-during", "uncollected"]


def test_orders_out_of_the_compartment_are_not_affected() -> None:
    stays = [
        stay("picked-before", slot=0, pickup=100),  # collected the minute it started
        stay("loaded-after", slot=190, pickup=300),  # loaded at 130, when it was over
        stay("other-compartment", slot=90, pickup=200, comp="K2"),
        stay("placed-after", slot=0, pickup=300, placed=131),  # goods cannot be loaded before the order
        stay("cleared-before", slot=-3000, pickup=None),  # cleared 48 h after its slot, long before
    ]
    assert linkage.affected(SPAN, stays, CC) == []


def test_open_incident_affects_everything_still_inside() -> None:
    open_span = linkage.Span("SIL-1", "K1", started_at=minutes(100), ended_at=None)
    assert [s.order_id for s in linkage.affected(open_span, [stay("late-load", slot=5000, pickup=None)], CC)] == ["late-load"]


def test_link_indexes_by_compartment() -> None:
    spans = [SPAN, linkage.Span("EXC-2", "K2", minutes(100), minutes(130))]
    found = linkage.link(spans, [stay("a", 90, 200), stay("b", 90, 200, comp="K2")], CC)
    assert {k: [s.order_id for s in v] for k, v in found.items()} == {"EXC-1": ["a"], "EXC-2": ["b"]}


# -- policy ---------------------------------------------------------------------------------


def exc(minutes_out: int, t_max: float = 6.0, t_min: float = 5.0, cls: str = "chilled") -> policy.Excursion:
    return policy.Excursion("EXC-K1-20260907T000000Z", cls, minutes_out * 60, t_min, t_max)


def test_severity_by_duration_and_deviation() -> None:
    assert policy.severity(exc(15), CC) == "minor"
    assert policy.severity(exc(60), CC) == "major"
    assert policy.severity(exc(240), CC) == "severe"
    assert policy.severity(exc(15, t_max=8.5), CC) == "major"  # 4.5 °C above 4 °C
    assert policy.severity(exc(15, t_max=-2.0, t_min=-9.0), CC) == "major"  # 9 °C below 0 °C
    assert policy.severity(exc(15, t_max=-2.0, t_min=-3.0, cls="frozen"), CC) == "severe"  # 16 °C above -18


def test_compensation_is_a_share_with_a_floor() -> None:
    p = CC.compensation
    assert policy.compensation(Decimal("48.00"), "minor", p) == Decimal("14.40")
    assert policy.compensation(Decimal("10.00"), "minor", p) == Decimal("5.00")  # floor
    assert policy.compensation(Decimal("3.00"), "minor", p) == Decimal("3.00")  # never more than the order
    assert policy.compensation(Decimal("99.99"), "severe", p) == Decimal("99.99")


def test_standard_claim_is_auto_approved_with_a_readable_reason() -> None:
    d = policy.decide("o1", Decimal("48.00"), exc(20), CC)
    assert d.decision == policy.AUTO_APPROVED and d.compensation_cny == Decimal("14.40")
    assert "0 to 4 °C" in d.reason and "20 minutes" in d.reason and "6 °C" in d.reason


def test_big_order_goes_to_review() -> None:
    assert policy.decide("o1", Decimal("800.00"), exc(20), CC).decision == policy.NEEDS_REVIEW


def test_customer_claim_is_matched_not_duplicated() -> None:
    claim = policy.CustomerClaim("ev-claim-1", "o1", Decimal("10.00"))
    d = policy.decide("o1", Decimal("48.00"), exc(20), CC, claim)
    assert (d.decision, d.compensation_cny, d.customer_claim_event_id) == (policy.MATCHED, Decimal("10.00"), "ev-claim-1")
    greedy = policy.decide("o1", Decimal("48.00"), exc(20), CC, policy.CustomerClaim("ev-claim-2", "o1", Decimal("40.00")))
    assert greedy.compensation_cny == Decimal("14.40") and "left to a person" in greedy.reason


def test_worst_decision_wins_per_order() -> None:
    small = policy.decide("o1", Decimal("48.00"), exc(20), CC)
    big = policy.decide("o1", Decimal("48.00"), exc(300), CC)
    assert policy.worst([small, big]) is big


def test_future_readings_are_judged_against_a_fixed_bound_for_files() -> None:
    files = sql.source_ddl(CC, sql.Source(path="/x.jsonl", latest_event_s=1_800_000_000))
    assert "> 1800000000 THEN 1" in files
    stream = sql.source_ddl(CC, sql.Source(bootstrap="k:9092", max_clock_skew_s=300))
    assert "UNIX_TIMESTAMP() + 300" in stream
    assert "'future_timestamp'" in sql.views(CC)[0]
