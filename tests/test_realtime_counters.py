"""Today's counters per customer (the pushed ``customer_realtime`` features): replays,
business days, OneID arriving late and merging people."""

from __future__ import annotations

from datetime import datetime, timezone

from lastmile.features.realtime import OrderFact, TodayCounters, business_day, order_fact


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def _order(event_id: str, at: str, spend: float, *tokens: str, impulse: float = 0.0, partition: int = 0) -> OrderFact:
    return OrderFact(event_id, tokens, _ms(at), spend, impulse, produced_ms=_ms(at), source=f"kafka:lastmile.order/{partition}")


def _row(counters: TodayCounters, oneid: str) -> dict:
    frame = counters.frame([oneid])
    assert len(frame) == 1
    return frame.iloc[0].to_dict()


def test_business_day_is_shanghai_time() -> None:
    assert str(business_day(_ms("2026-10-05T23:30:00+08:00"))) == "2026-10-05"
    assert str(business_day(_ms("2026-10-05T16:30:00+00:00"))) == "2026-10-06", "00:30 in Shanghai is the next day"


def test_replays_count_once_and_a_new_day_starts_from_zero() -> None:
    counters = TodayCounters(identities={"tok-a": ("P1", False)})
    first = _order("e1", "2026-10-05T09:00:00+08:00", 30.0, "tok-a", impulse=12.0)
    assert counters.add([first, _order("e2", "2026-10-05T18:00:00+08:00", 20.5, "tok-a")]) == {"P1"}
    assert counters.add([first]) == set(), "a replayed order changes nothing"
    row = _row(counters, "P1")
    assert (row["rt_orders_today"], row["rt_spend_today_cny"], row["rt_impulse_spend_today_cny"]) == (2, 50.5, 12.0)
    assert row["rt_last_order_ts"] == _ms("2026-10-05T18:00:00+08:00") // 1000

    counters.add([_order("e3", "2026-10-06T08:00:00+08:00", 9.9, "tok-a")])
    row = _row(counters, "P1")
    assert (row["rt_orders_today"], row["rt_spend_today_cny"]) == (1, 9.9)
    assert row["event_timestamp"].value // 10**6 == _ms("2026-10-06T08:00:00+08:00"), "stamped at the latest order"
    counters.add([_order("e4", "2026-10-05T20:00:00+08:00", 5.0, "tok-a")])
    assert _row(counters, "P1")["rt_orders_today"] == 1, "a late order of yesterday does not change today"


def test_the_kept_window_follows_the_slowest_partition() -> None:
    counters = TodayCounters(identities={"tok-a": ("P1", False), "tok-b": ("P2", False)})
    counters.add([_order("a1", "2026-10-01T09:00:00+08:00", 10.0, "tok-a", partition=0),
                  _order("b1", "2026-10-01T10:00:00+08:00", 10.0, "tok-b", partition=1)])
    # Partition 0 races a week ahead during a replay; partition 1 still delivers 1 October.
    counters.add([_order("a2", "2026-10-08T09:00:00+08:00", 20.0, "tok-a", partition=0)])
    counters.add([_order("b2", "2026-10-01T18:00:00+08:00", 5.0, "tok-b", partition=1)])
    assert _row(counters, "P2")["rt_orders_today"] == 2, "nothing of the slow partition's day was let go"
    counters.add([_order("b3", "2026-10-08T11:00:00+08:00", 7.0, "tok-b", partition=1)])
    assert set(counters.orders) == {"a2", "b3"}, "both partitions reached 8 October: 1 October is let go"
    counters.add([_order("b0", "2026-10-02T08:00:00+08:00", 1.0, "tok-b", partition=1)])
    assert "b0" not in counters.orders and _row(counters, "P2")["rt_orders_today"] == 1, "too late for anyone's today"


def test_orders_wait_for_their_oneid_and_merged_people_are_pushed_together() -> None:
    counters = TodayCounters(identities={"tok-a": ("P1", False)})
    assert counters.add([_order("e1", "2026-10-05T09:00:00+08:00", 10.0, "tok-a"),
                         _order("e2", "2026-10-05T10:00:00+08:00", 7.0, "tok-new")]) == {"P1"}
    assert counters.unresolved == 1 and [f.event_id for f in counters.counted] == ["e1"]

    # The next resolution names the new token's person - and links them to P1.
    changed = counters.set_identities({"tok-a": ("P1", False), "tok-new": ("P1", False)})
    assert changed == {"P1"} and counters.unresolved == 0
    assert [f.event_id for f in counters.counted] == ["e2"], "only the waiting order becomes newly counted"
    assert _row(counters, "P1")["rt_orders_today"] == 2


def test_a_shared_identifier_loses_to_the_buyers_own() -> None:
    # The 团长 types a neighbour's order on their own (shared) phone; the neighbour's openid rides along.
    counters = TodayCounters(identities={"leader-phone": ("LEADER", True), "openid-n": ("NEIGHBOUR", False)})
    counters.add([_order("e1", "2026-10-05T09:00:00+08:00", 10.0, "leader-phone", "openid-n")])
    assert counters.frame(["LEADER"]).empty and _row(counters, "NEIGHBOUR")["rt_orders_today"] == 1


def test_order_fact_reads_a_written_row() -> None:
    row = {"event_id": "ev-1", "occurred_at": "2026-10-05T09:00:00+08:00", "total_amount": 40.5,
           "buyer_unionid": "u-tok", "buyer_phone": None, "buyer_openid": "o-tok",
           "items": [{"sku": "SK0050", "qty": 3, "unit_price": 4.25}, {"sku": "SK0001", "qty": 1, "unit_price": 27.75}]}
    fact = order_fact(row, ("buyer_unionid", "buyer_openid", "buyer_phone"), frozenset({"SK0050"}), produced_ms=5)
    assert fact.tokens == ("u-tok", "o-tok") and fact.spend == 40.5 and fact.impulse_spend == 12.75
    assert fact.occurred_at_ms == _ms("2026-10-05T09:00:00+08:00") and fact.produced_ms == 5


def test_an_order_never_resolved_is_given_up_after_two_resolutions() -> None:
    counters = TodayCounters()
    counters.add([_order("e1", "2026-10-05T09:00:00+08:00", 10.0, "blocked-token")])
    assert counters.set_identities({}) == set() and counters.unresolved == 1
    counters.set_identities({})
    assert counters.unresolved == 0 and "e1" not in counters.orders
