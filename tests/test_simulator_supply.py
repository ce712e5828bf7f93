"""The simulator's supply side: the default stocking policy, censored sales, the calendar's
effects on demand, the catalogue, and the calibration of stock-outs and write-offs.

One small simulation over Mid-Autumn and the National Day week (module fixture) is read
back from its files, the way the forecast and the stocking replay will read it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from lastmile.contracts import EventParser
from lastmile.simulator import SimulationConfig, SimulationResult, simulate
from lastmile.simulator.catalog import FRESH_MAX_SHELF_LIFE_DAYS, SKUS
from lastmile.stocking.ledger import ShelfStock
from lastmile.stocking.policies import last_week_plus_margin, sellable_on_hand
from lastmile.transform import REFERENCE_TABLES

FIXED_NOW = datetime.fromisoformat("2026-11-23T12:00:00+00:00")
# Seed 4 puts the typhoon on Tuesday 22 September, clear of the holidays.
CFG = SimulationConfig(seed=4, orders=6_000, weeks=4, start=date(2026, 9, 14), telemetry_every_s=3600)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SimulationResult:
    return simulate(CFG, tmp_path_factory.mktemp("supply"))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def files(run: SimulationResult) -> dict[str, list[dict[str, Any]]]:
    out = run.out_dir
    return {
        "demand": _jsonl(out / "truth" / "demand_hourly.jsonl"),
        "stock": _jsonl(out / "truth" / "stock_daily.jsonl"),
        "skus": _jsonl(out / "reference" / "skus.jsonl"),
        "calendar": _jsonl(out / "reference" / "calendar.jsonl"),
        "promotions": _jsonl(out / "reference" / "promotions.jsonl"),
    }


@pytest.fixture(scope="module")
def events(run: SimulationResult) -> dict[str, list[dict[str, Any]]]:
    """Valid events of the order and inventory files, each once (malformed lines and re-sends dropped)."""
    parser = EventParser(now=lambda: FIXED_NOW)
    out: dict[str, list[dict[str, Any]]] = {}
    for event_type in ("order", "inventory"):
        seen: set[str] = set()
        good = []
        for line in (run.out_dir / "events" / f"{event_type}.jsonl").read_bytes().splitlines():
            try:
                event = parser.parse(line)
            except Exception:
                continue
            if event["event_id"] not in seen:
                seen.add(event["event_id"])
                good.append(event)
        out[event_type] = good
    return out


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _units_by_date(demand: list[dict[str, Any]]) -> Counter[date]:
    days: Counter[date] = Counter()
    for r in demand:
        days[_at(r["hour"]).date()] += r["demanded"]
    return days


# -- the default policy ------------------------------------------------------------------------


def test_policy_orders_last_weeks_same_day_sales_plus_margin_minus_the_shelf() -> None:
    sales = [10, 4, 0, 7, 20, 12, 9, 3]
    # Day 7: last week's same day (day 0) sold 10 -> ceil(10 * 1.5) = 15, 6 usable on the shelf.
    assert last_week_plus_margin(sales, 7, 6, opening=99, margin=0.5) == 9
    # The shelf already holds more than the target: order nothing.
    assert last_week_plus_margin(sales, 7, 40, opening=99, margin=0.5) == 0
    # Last week's same day sold nothing: the facing is still kept.
    assert last_week_plus_margin(sales, 9 - 7 + 7, 0, opening=99, margin=0.5, min_facing=2) == 2
    # What the operator counts: lots still good at the delivery day's close (hour 46), not
    # the 4 units that expire during that day.
    shelf = ShelfStock()
    shelf.receive(4, best_before=40, batch_id="a")
    shelf.receive(6, best_before=53, batch_id="b")
    assert sellable_on_hand(shelf, close=46) == 6


def test_policy_bootstraps_from_the_days_seen_and_the_opening_quantity() -> None:
    sales = [0, 0, 0, 6, 2, 0, 0, 0]
    # A SKU launched on day 3, ordering for day 5: the mean of days 3-4 (4) plus 25 %.
    assert last_week_plus_margin(sales, 5, 0, opening=50, first_day=3, margin=0.25) == 5
    # Its launch day: the supplier's opening quantity.
    assert last_week_plus_margin(sales, 3, 0, opening=8, first_day=3, margin=0.25) == 10
    with pytest.raises(ValueError):
        last_week_plus_margin(sales, 5, -1, opening=1)


# -- censoring ---------------------------------------------------------------------------------


def test_a_sold_out_skus_later_lines_are_lost_in_events_but_kept_in_truth(
        files: dict[str, list[dict[str, Any]]], events: dict[str, list[dict[str, Any]]]) -> None:
    receipts: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    for e in events["inventory"]:
        if e["movement"] == "receipt":
            receipts[(e["community_id"], e["sku"])].append(_at(e["occurred_at"]))
    sold_out = [e for e in events["inventory"] if e["movement"] == "stock_count" and e["qty"] == 0
                and e["source"] == "mini_program"]
    assert sold_out, "the default policy never ran out of anything"
    sold: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    for order in events["order"]:
        for item in order["items"]:
            sold[(order["community_id"], item["sku"])].append(_at(order["occurred_at"]))
    demand: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in files["demand"]:
        demand[(r["community_id"], r["sku"])].append(r)
    lost_hours = 0
    for signal in sold_out:
        key = (signal["community_id"], signal["sku"])
        out_at = _at(signal["occurred_at"])
        back_at = min((t for t in receipts[key] if t > out_at), default=out_at + timedelta(days=60))
        # No order line of the SKU in that community while it is sold out ...
        assert not [t for t in sold[key] if out_at < t < back_at], (key, out_at)
        # ... yet shoppers wanted it: whole hours in between with demand and nothing served.
        first_full_hour = out_at.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        wanted = [r for r in demand[key]
                  if first_full_hour <= _at(r["hour"]) and _at(r["hour"]) + timedelta(hours=1) <= back_at]
        assert all(r["served"] == 0 for r in wanted)
        lost_hours += len(wanted)
    assert lost_hours > 50


def test_events_and_truth_tell_the_same_stock_story(files: dict[str, list[dict[str, Any]]],
                                                     events: dict[str, list[dict[str, Any]]]) -> None:
    """Units sold in order events = served in truth; receipts - write-offs - sales = the last count."""
    sold: Counter[tuple[str, str]] = Counter()
    for order in events["order"]:
        for item in order["items"]:
            sold[(order["community_id"], item["sku"])] += item["qty"]
    served: Counter[tuple[str, str]] = Counter()
    for r in files["stock"]:
        served[(r["community_id"], r["sku"])] += r["served"]
    assert +sold == +served
    last_count: dict[tuple[str, str], tuple[datetime, int]] = {}
    for e in events["inventory"]:
        key, at = (e["community_id"], e["sku"]), _at(e["occurred_at"])
        if e["movement"] == "stock_count" and e["source"] == "front_warehouse" and at >= last_count.get(key, (at, 0))[0]:
            last_count[key] = (at, e["qty"])
    flow: Counter[tuple[str, str]] = Counter()  # received - written off - sold, up to the last count
    for e in events["inventory"]:
        key, at = (e["community_id"], e["sku"]), _at(e["occurred_at"])
        if key in last_count and at <= last_count[key][0]:
            if e["movement"] == "receipt":
                flow[key] += e["qty"]
                assert _at(e["best_before"]) > at and e["batch_id"] and e["unit_cost"] > 0
            elif e["movement"] == "write_off":
                flow[key] -= e["qty"]
    for order in events["order"]:
        at = _at(order["occurred_at"])
        for item in order["items"]:
            key = (order["community_id"], item["sku"])
            if key in last_count and at <= last_count[key][0]:
                flow[key] -= item["qty"]
    assert {k: flow[k] for k in last_count} == {k: v for k, (_, v) in last_count.items()}
    units_by_reason: Counter[str] = Counter()
    for e in events["inventory"]:
        if e["movement"] == "write_off":
            units_by_reason[e["reason"]] += e["qty"]
    assert units_by_reason["expired"] > 3 * units_by_reason["damaged"] > 0


def test_orders_are_fewer_than_demanded_and_no_placed_order_is_empty(run: SimulationResult,
                                                                     events: dict[str, list[dict[str, Any]]]) -> None:
    manifest = orjson.loads((run.out_dir / "manifest.json").read_bytes())
    placed = manifest["placed_orders"]
    assert manifest["demanded_orders"] == CFG.orders
    assert 0.8 * CFG.orders < placed < CFG.orders
    assert len(events["order"]) == placed
    assert all(order["items"] and all(i["qty"] >= 1 for i in order["items"]) for order in events["order"])


# -- calibration -------------------------------------------------------------------------------


def test_default_policy_fills_three_in_four_fresh_units_and_writes_off_a_sixth(
        files: dict[str, list[dict[str, Any]]]) -> None:
    fresh = {s["sku"] for s in files["skus"] if s["shelf_life_days"] <= FRESH_MAX_SHELF_LIFE_DAYS}
    rows = [r for r in files["stock"] if r["sku"] in fresh]
    fill_rate = sum(r["served"] for r in rows) / sum(r["demanded"] for r in rows)
    write_off_share = sum(r["written_off"] for r in rows) / sum(r["received"] for r in rows)
    assert 0.70 <= fill_rate <= 0.80
    assert 0.15 <= write_off_share <= 0.20
    assert all(r["lost"] == r["demanded"] - r["served"] >= 0 for r in rows)
    assert sum(r["written_off_cny"] for r in rows) > 0


# -- the calendar's effects --------------------------------------------------------------------


def test_calendar_marks_the_holidays_and_the_adjusted_workdays(files: dict[str, list[dict[str, Any]]]) -> None:
    days = {date.fromisoformat(r["date"]): r for r in files["calendar"]}
    assert len(days) == CFG.weeks * 7
    assert days[date(2026, 9, 25)]["holiday"] == "中秋节"
    assert all(days[date(2026, 10, d)]["is_holiday"] and not days[date(2026, 10, d)]["is_workday"] for d in range(1, 8))
    assert days[date(2026, 9, 20)]["is_workday"] and days[date(2026, 10, 10)]["is_workday"]  # 调休: Sunday, Saturday
    assert [d for d, r in days.items() if r["weather"] == "typhoon"] == [date(2026, 9, 22)]


def test_holidays_and_weather_show_in_demand(files: dict[str, list[dict[str, Any]]],
                                             events: dict[str, list[dict[str, Any]]]) -> None:
    units = _units_by_date(files["demand"])

    def usual(day: date) -> float:
        """Mean demand on the same weekday of the other weeks."""
        others = [units[d] for d in units if d.weekday() == day.weekday() and abs((d - day).days) >= 7
                  and not (date(2026, 9, 30) <= d <= date(2026, 10, 10)) and d != date(2026, 9, 22)]
        return sum(others) / len(others)

    assert units[date(2026, 9, 24)] > 1.15 * usual(date(2026, 9, 24))  # the eve of Mid-Autumn
    away = [units[date(2026, 10, d)] for d in range(1, 5)]
    assert sum(away) < 0.9 * sum(usual(date(2026, 10, d)) for d in range(1, 5))  # residents travel
    assert units[date(2026, 9, 22)] < 0.7 * usual(date(2026, 9, 22))  # the typhoon
    assert units[date(2026, 9, 21)] > 1.1 * usual(date(2026, 9, 21))  # stocking up before it
    typhoon_receipts = [e for e in events["inventory"] if e["movement"] == "receipt"
                        and _at(e["occurred_at"]).date() == date(2026, 9, 22)]
    assert typhoon_receipts == []


def test_promotions_show_in_demand(files: dict[str, list[dict[str, Any]]]) -> None:
    promotions = files["promotions"]
    boxes = [(_at(p["starts_at"]), _at(p["ends_at"])) for p in promotions if p["kind"] == "blind_box"]
    assert boxes and all(a.weekday() == 2 and (a.hour, b.hour) == (14, 17) for a, b in boxes)
    hours: Counter[tuple[date, int]] = Counter()
    for r in files["demand"]:
        t = _at(r["hour"])
        hours[(t.date(), t.hour)] += r["demanded"]
    wednesdays = {d for d, _ in hours if d.weekday() == 2}
    box_days = {a.date() for a, _ in boxes}
    slot = lambda days: sum(hours[(d, h)] for d in days for h in (14, 15, 16)) / len(days)  # noqa: E731
    assert slot(box_days) > 2.0 * slot(wednesdays - box_days)

    cuts = [p for p in promotions if p["kind"] == "price_cut"]
    assert cuts and all(0 < p["discount"] < 1 and p["sku"] for p in cuts)
    weekly: Counter[tuple[str, date]] = Counter()
    for r in files["demand"]:
        day = _at(r["hour"]).date()
        weekly[(r["sku"], day - timedelta(days=day.weekday()))] += r["demanded"]
    cut_weeks = {(p["sku"], _at(p["starts_at"]).date()) for p in cuts}
    lifts = []
    for sku, week in cut_weeks:
        others = [n for (s, w), n in weekly.items() if s == sku and (s, w) not in cut_weeks]
        if others and sum(others) >= 20:
            lifts.append(weekly[(sku, week)] / (sum(others) / len(others)))
    assert len(lifts) >= 10 and sorted(lifts)[len(lifts) // 2] > 1.3  # the median cut SKU sells much more


# -- the catalogue -----------------------------------------------------------------------------


def test_catalogue_keeps_the_base_items_and_adds_seasons_launches_and_a_long_tail(
        files: dict[str, list[dict[str, Any]]]) -> None:
    skus = {s["sku"]: s for s in files["skus"]}
    assert len(skus) >= 200
    for base in SKUS:
        row = skus[base.sku]
        assert (row["name"], row["category"], row["unit_price"], row["product_class"], row["is_impulse"]) == \
               (base.name, base.category, base.unit_price, base.product_class, base.is_impulse)
    by_name = {s["name"]: s for s in files["skus"]}
    assert by_name["上海青"]["shelf_life_days"] <= 2 and by_name["猪里脊"]["shelf_life_days"] == 3
    assert by_name["三鲜水饺"]["shelf_life_days"] >= 90 and 3 <= by_name["草莓"]["shelf_life_days"] <= 5
    for s in skus.values():
        assert 0.6 * s["unit_price"] - 0.01 <= s["unit_cost"] <= 0.7 * s["unit_price"] + 0.01

    demand_days: dict[str, set[date]] = defaultdict(set)
    units: Counter[str] = Counter()
    for r in files["demand"]:
        demand_days[r["sku"]].add(_at(r["hour"]).date())
        units[r["sku"]] += r["demanded"]
    for s in skus.values():
        first = max(filter(None, (s["available_from"], s["launched_on"])), default=None)
        if first:
            assert min(demand_days[s["sku"]], default=date.max) >= date.fromisoformat(first), s["name"]
        if s["available_until"]:
            assert max(demand_days[s["sku"]], default=date.min) <= date.fromisoformat(s["available_until"]), s["name"]
    assert demand_days[by_name["阳澄湖大闸蟹"]["sku"]] and demand_days[by_name["鲜肉月饼"]["sku"]]
    assert any(s["launched_on"] and demand_days[k] for k, s in skus.items())
    ranked = sorted(units.values(), reverse=True)
    assert sum(ranked[: len(ranked) // 10]) > 0.35 * sum(ranked)  # a few staples sell a lot
    assert ranked[len(ranked) // 2] < 0.2 * ranked[0]  # the median SKU sells little


def test_every_reference_file_has_a_warehouse_table(run: SimulationResult) -> None:
    written = {p.stem for p in (run.out_dir / "reference").glob("*.jsonl")}
    assert written == set(REFERENCE_TABLES)
    distances = _jsonl(run.out_dir / "reference" / "community_distances.jsonl")
    warehouses = _jsonl(run.out_dir / "reference" / "front_warehouses.jsonl")
    assert [w["warehouse_id"] for w in warehouses] == [f"fw-{w['community_id']}" for w in warehouses]
    assert len(distances) == len(warehouses) * (len(warehouses) - 1)


# -- switches ----------------------------------------------------------------------------------


def test_without_supply_every_demanded_unit_is_sold_and_no_inventory_is_written(tmp_path: Path) -> None:
    cfg = SimulationConfig(seed=2, orders=600, weeks=1, telemetry_every_s=3600, supply=False)
    result = simulate(cfg, tmp_path)
    assert result.counts["inventory"] == 0
    demand = _jsonl(tmp_path / "truth" / "demand_hourly.jsonl")
    assert demand and all(r["served"] == r["demanded"] for r in demand)
    manifest = orjson.loads((tmp_path / "manifest.json").read_bytes())
    assert manifest["placed_orders"] == cfg.orders
