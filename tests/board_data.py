"""A small warehouse for the board's tests: one business day of two communities, written
through the stream worker's own write path (contracts, quarantine), plus the cold-chain
results and the service-temperature mart as the jobs that own them would leave them.

The day is 2026-11-20 in Asia/Shanghai; its newest order is at 10:05 and its newest reading
at 12:00, so the board's "now" for that day is 12:00 (the data's own clock).

=========  =========  ============  ============  =====================================
order      community  locker        slot (local)  what happens
=========  =========  ============  ============  =====================================
ord-b1     C01        L-C01-1       08:00-10:00   collected 08:30 (sent twice: counts once)
ord-b2     C01        L-C01-1       08:00-10:00   never collected: overdue
ord-b3     C01        L-C01-2       10:00-12:00   collected 11:30
ord-b4     C02        L-C02-1       08:00-10:00   collected 09:00
ord-b5     C02        L-C02-1       20:00-22:00   not ready yet at 12:00
ord-b6..8  C01/C02/C01             next day      placed today 09:15, 09:40, 10:05 (sales)
=========  =========  ============  ============  =====================================
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

import orjson

from lastmile.config import Settings
from lastmile.ingest import Ingestor
from lastmile.privacy import Identifiers
from lastmile.streaming.sink import Record, StreamSink
from lastmile.streaming.topics import topic_for
from lastmile.warehouse import connect, migrate
from tests.factories import event

DAY = date(2026, 11, 20)
NOW_LOCAL = "2026-11-20T12:00:00+08:00"


def _order(order_id: str, community: str, locker: str, placed: str, slot: tuple[str, str], items: list[dict[str, Any]],
           total: float) -> dict[str, Any]:
    return event("order", occurred_at=placed, order_id=order_id, community_id=community, building_id=f"{community}-B01",
                 leader_id=f"LD-{community}-B01", locker_id=locker, compartment_id=f"{locker}-K01", items=items,
                 total_amount=total, delivery_slot_start=slot[0], delivery_slot_end=slot[1],
                 buyer={"openid": f"o-{order_id}"})


def _item(sku: str, qty: int, price: float, category: str = "vegetables") -> dict[str, Any]:
    return {"sku": sku, "category": category, "qty": qty, "unit_price": price, "origin": "Chongming, Shanghai",
            "batch_id": "B2026-11-18-04"}


def _reading(compartment: str, community: str, at: str, temperature: float, product_class: str = "chilled",
             door: str = "closed", power: str = "mains") -> dict[str, Any]:
    return event("locker_telemetry", occurred_at=at, locker_id=compartment.rsplit("-", 1)[0], compartment_id=compartment,
                 community_id=community, product_class=product_class, temperature_c=temperature, door=door, power=power)


def events() -> list[dict[str, Any]]:
    slot_am = ("2026-11-20T08:00:00+08:00", "2026-11-20T10:00:00+08:00")
    slot_late_am = ("2026-11-20T10:00:00+08:00", "2026-11-20T12:00:00+08:00")
    slot_pm = ("2026-11-20T20:00:00+08:00", "2026-11-20T22:00:00+08:00")
    tomorrow = ("2026-11-21T08:00:00+08:00", "2026-11-21T10:00:00+08:00")
    yesterday = "2026-11-19T20:00:00+08:00"
    b1 = _order("ord-b1", "C01", "L-C01-1", yesterday, slot_am, [_item("SKU-0012", 2, 6.5)], 13.0)
    out = [
        b1, dict(b1),  # the same event twice (a replay): counted once
        _order("ord-b2", "C01", "L-C01-1", yesterday, slot_am, [_item("SKU-0012", 1, 6.5)], 6.5),
        _order("ord-b3", "C01", "L-C01-2", yesterday, slot_late_am, [_item("SKU-0203", 1, 38.0, "tea")], 38.0),
        _order("ord-b4", "C02", "L-C02-1", yesterday, slot_am, [_item("SKU-0012", 3, 6.5)], 19.5),
        _order("ord-b5", "C02", "L-C02-1", yesterday, slot_pm, [_item("SKU-0300", 1, 12.0, "fruit")], 12.0),
        _order("ord-b6", "C01", "L-C01-1", "2026-11-20T09:15:00+08:00", tomorrow,
               [_item("SKU-0012", 4, 6.5), _item("SKU-0203", 1, 38.0, "tea")], 64.0),
        _order("ord-b7", "C02", "L-C02-1", "2026-11-20T09:40:00+08:00", tomorrow, [_item("SKU-0300", 2, 12.0, "fruit")], 24.0),
        _order("ord-b8", "C01", "L-C01-2", "2026-11-20T10:05:00+08:00", tomorrow, [_item("SKU-0012", 1, 6.5)], 6.5),
    ]
    for order_id, locker, at in (("ord-b1", "L-C01-1", "2026-11-20T08:30:00+08:00"),
                                 ("ord-b3", "L-C01-2", "2026-11-20T11:30:00+08:00"),
                                 ("ord-b4", "L-C02-1", "2026-11-20T09:00:00+08:00")):
        out.append(event("pickup", occurred_at=at, order_id=order_id, locker_id=locker, compartment_id=f"{locker}-K01"))
    for order_id, stars, at in (("ord-b1", 5, "2026-11-20T09:00:00+08:00"), ("ord-b4", 3, "2026-11-20T09:30:00+08:00"),
                                ("ord-b3", 4, "2026-11-17T12:00:00+08:00"), ("ord-b2", 2, "2026-11-10T12:00:00+08:00")):
        out.append(event("review", occurred_at=at, order_id=order_id, stars=stars, reviewer={"openid": f"o-{order_id}"}))
    for at, temperature in (("11:00", 3.0), ("11:30", 6.0), ("11:40", 7.0), ("12:00", 8.0)):
        out.append(_reading("L-C01-1-K01", "C01", f"2026-11-20T{at}:00+08:00", temperature))
    out.append(_reading("L-C01-1-K02", "C01", "2026-11-20T12:00:00+08:00", -20.5, "frozen", door="open"))
    out.append(_reading("L-C01-2-K01", "C01", "2026-11-20T11:58:00+08:00", 2.5))
    out.append(_reading("L-C02-1-K01", "C02", "2026-11-20T10:00:00+08:00", 3.5))
    return out


STI_DDL = """
CREATE TABLE IF NOT EXISTS service_temperature_index (
    grain String, grain_id String, week_start Date, community_id String, orders UInt64, reviews UInt64, claims UInt64,
    cold_in_range_share Nullable(Float64), traceability_score Nullable(Float64), cold_chain_score Nullable(Float64),
    punctuality_score Nullable(Float64), communication_score Nullable(Float64), after_sales_score Nullable(Float64),
    packaging_score Nullable(Float64), service_temperature Nullable(Float64)
) ENGINE = MergeTree ORDER BY (grain, grain_id, week_start)
"""


@dataclass
class BoardScenario:
    cfg: Settings
    written_at: datetime


def write_events(cfg: Settings, lines: list[bytes], topic_of: list[str]) -> None:
    """Events through the stream worker's write path (contracts, hashing, quarantine)."""
    warehouse = connect(cfg)
    migrate(warehouse)
    sink = StreamSink(warehouse, Ingestor(Identifiers(cfg)))
    records = [Record(topic, 0, offset, line) for offset, (topic, line) in enumerate(zip(topic_of, lines))]
    try:
        asyncio.run(sink.handle(records))
    finally:
        sink.close()


def build_board_warehouse(cfg: Settings) -> BoardScenario:
    import lastmile.coldchain.tables  # noqa: F401 - registers the cold-chain tables' migrations

    found = events()
    lines = [orjson.dumps(e) for e in found] + [b'{"event_type": "order", "event_id": "ev-broken"']
    topics = [topic_for(e["event_type"]) for e in found] + [topic_for("order")]
    write_events(cfg, lines, topics)
    warehouse = connect(cfg)
    migrate(warehouse)
    warehouse.command(
        "INSERT INTO cold_chain_incidents (incident_id, kind, compartment_id, locker_id, community_id, product_class, started_at, "
        "ended_at, duration_s, severity, temperature_peak, deviation_c, affected_orders, summary) VALUES "
        "('EXC-L-C01-1-K01-20261120T033000', 'excursion', 'L-C01-1-K01', 'L-C01-1', 'C01', 'chilled', '2026-11-20 03:30:00', "
        "NULL, 1800, 'major', 8.0, 4.0, ['ord-b1', 'ord-b2'], 'chilled compartment above 4 °C'), "
        "('EXC-L-C02-1-K01-20261118T010000', 'excursion', 'L-C02-1-K01', 'L-C02-1', 'C02', 'chilled', '2026-11-18 01:00:00', "
        "'2026-11-18 02:00:00', 3600, 'major', 9.0, 5.0, ['ord-old'], 'an older day')")
    warehouse.command(
        "INSERT INTO claim_decisions (order_id, incident_id, decision, compensation_cny, order_total_cny, customer_claim_event_id, "
        "customer_claimed_cny, severity, reason) VALUES "
        "('ord-b1', 'EXC-L-C01-1-K01-20261120T033000', 'auto_approved', 12.50, 13.00, '', NULL, 'major', 'standard claim'), "
        "('ord-b2', 'EXC-L-C01-1-K01-20261120T033000', 'needs_review', 6.50, 6.50, '', NULL, 'major', 'customer disputes'), "
        "('ord-old', 'EXC-L-C02-1-K01-20261118T010000', 'auto_approved', 30.00, 60.00, '', NULL, 'major', 'an older day')")
    warehouse.command(STI_DDL)
    warehouse.command(
        "INSERT INTO service_temperature_index VALUES "
        "('community', 'C01', '2026-11-16', 'C01', 10, 2, 0, 0.99, 100, 90, 70, 80, 60, 50, 80), "
        "('community', 'C02', '2026-11-16', 'C02', 30, 1, 1, 0.97, 90, 50, 60, NULL, 70, 40, 60), "
        "('community', 'C01', '2026-11-09', 'C01', 12, 2, 0, 0.99, 10, 10, 10, 10, 10, 10, 10), "
        "('locker', 'L-C01-1', '2026-11-16', 'C01', 5, 1, 0, 0.99, 1, 1, 1, 1, 1, 1, 1)")
    # Installed compartments (reference data): L-C02-1-K02 has never reported.
    warehouse.command("CREATE TABLE IF NOT EXISTS ref_lockers (locker_id String, community_id String, has_battery Bool, "
                      "compartments Array(Tuple(compartment_id String, product_class String))) ENGINE = MergeTree ORDER BY locker_id")
    warehouse.command(
        "INSERT INTO ref_lockers VALUES "
        "('L-C01-1', 'C01', true, [('L-C01-1-K01', 'chilled'), ('L-C01-1-K02', 'frozen')]), "
        "('L-C01-2', 'C01', true, [('L-C01-2-K01', 'chilled')]), "
        "('L-C02-1', 'C02', false, [('L-C02-1-K01', 'chilled'), ('L-C02-1-K02', 'ambient')])")
    return BoardScenario(cfg, datetime.now(timezone.utc))
