"""Predictive commerce: a neighbour who buys eggs every Monday is nudged on the Monday they have not yet bought."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from lastmile.config import Settings
from lastmile.features.replenishment import Rhythm, due_replenishments
from lastmile.warehouse import connect
from tests.factories import event
from tests.test_identity_warehouse import ingest

EGGS = {"sku": "SKU-EGG-30", "category": "eggs", "qty": 1, "unit_price": 32.0, "origin": "Pinggu, Beijing", "batch_id": "B1"}
TEA = {"sku": "SKU-0203", "category": "tea", "qty": 1, "unit_price": 38.0, "origin": "Anxi, Fujian", "batch_id": "B2"}
MONDAYS = [date(2026, 10, 5) + timedelta(weeks=w) for w in range(4)]  # 5, 12, 19, 26 October


def _order(day: date, hour: int, items: list[dict], **buyer: str) -> dict:
    return event("order", occurred_at=f"{day.isoformat()}T{hour:02d}:10:00+08:00", order_id=f"ord-{day}-{hour}-{len(buyer)}",
                 buyer=buyer, items=items, total_amount=sum(i["qty"] * i["unit_price"] for i in items))


def _at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=timezone.utc) - timedelta(hours=8)


@pytest.fixture
def history(home: Settings) -> Settings:
    orders = [_order(d, 8, [EGGS], openid="o-eggs", phone="13900001111") for d in MONDAYS]
    # Tea now and then: three purchases, but 2, 11 and 3 days apart - no rhythm.
    orders += [_order(d, 20, [TEA], unionid="u-tea") for d in (date(2026, 10, 1), date(2026, 10, 3), date(2026, 10, 14),
                                                                date(2026, 10, 17))]
    ingest(home, "history", orders)
    return home


def test_the_staple_is_due_on_its_day_only(history: Settings) -> None:
    due = due_replenishments(connect(), _at(date(2026, 11, 2), 9))
    assert [(d.sku, d.purchases, d.last_purchase, d.mean_interval_days) for d in due] == [("SKU-EGG-30", 4, MONDAYS[-1], 7.0)]
    assert due[0].action_id.endswith(":SKU-EGG-30:2026-11-02") and due[0].oneid.startswith("oid_")
    assert due_replenishments(connect(), _at(date(2026, 11, 1), 9)) == [], "not due the day before"
    assert len(due_replenishments(connect(), _at(date(2026, 11, 3), 9))) == 1, "the day after is within the grace"
    assert due_replenishments(connect(), _at(date(2026, 11, 4), 9)) == [], "two days after is not"
    assert due_replenishments(connect(), _at(date(2026, 10, 22), 21)) == [], "tea's 'due' day: its gaps are too irregular"
    assert [d.sku for d in due_replenishments(connect(), _at(date(2026, 10, 22), 21), Rhythm(max_cv=1.0))] == ["SKU-0203"]


def test_a_purchase_on_the_due_day_moves_the_next_due_day(history: Settings) -> None:
    ingest(history, "monday", [_order(date(2026, 11, 2), 7, [EGGS], openid="o-eggs")])
    assert due_replenishments(connect(), _at(date(2026, 11, 2), 9)) == [], "bought this morning: nothing to nudge"
    assert [d.due for d in due_replenishments(connect(), _at(date(2026, 11, 9), 9))] == [date(2026, 11, 9)]


def test_stricter_rhythm_needs_more_history(history: Settings) -> None:
    assert due_replenishments(connect(), _at(date(2026, 11, 2), 9), Rhythm(min_purchases=5)) == []
