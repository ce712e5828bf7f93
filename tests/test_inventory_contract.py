"""The ``inventory`` contract: stock movements of a front warehouse, judged like every event.

A receipt needs its batch and best-before, a write-off its batch and reason; quantities are
whole units, never negative. Bad movements land in quarantine with a sentence that names the
field, through the batch ingest and the stream alike, and re-sending never double-counts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from lastmile.config import Settings
from lastmile.contracts import ContractError, EventParser
from lastmile.ingest import Ingestor
from lastmile.privacy import Identifiers
from lastmile.streaming.sink import Record, StreamSink, source_name
from lastmile.streaming.topics import event_topics, message_key, topic_for
from lastmile.warehouse import Warehouse
from pipelines import beam_ingest
from tests.factories import event, inventory_movement
from tests.warehouses import empty_embedded_warehouse

FIXED_NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def parser() -> EventParser:
    return EventParser(now=lambda: FIXED_NOW)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Warehouse]]:
    with empty_embedded_warehouse(tmp_path_factory.mktemp("inventory") / "home") as opened:
        yield opened


def rejected(parser: EventParser, bad: dict) -> ContractError:
    with pytest.raises(ContractError) as caught:
        parser.parse(orjson.dumps(bad))
    return caught.value


@pytest.mark.parametrize("movement", ["receipt", "write_off", "stock_count"])
def test_each_movement_is_accepted_with_the_fields_it_carries(parser: EventParser, movement: str) -> None:
    good = inventory_movement(movement)
    assert parser.parse(orjson.dumps(good)) == good


def test_a_receipt_without_its_batch_or_best_before_is_refused_saying_why(parser: EventParser) -> None:
    error = rejected(parser, inventory_movement("receipt", batch_id=None))
    assert error.reason == "missing_field" and error.event_type == "inventory"
    assert str(error) == "inventory: missing required field batch_id (required when movement is receipt)"
    error = rejected(parser, inventory_movement("receipt", best_before=None))
    assert error.reason == "missing_field" and "best_before (required when movement is receipt)" in str(error)
    # a stock count carries neither, and needs neither
    assert parser.parse(orjson.dumps(inventory_movement("stock_count", qty=12)))["qty"] == 12


def test_a_write_off_without_a_reason_is_refused_and_only_known_reasons_pass(parser: EventParser) -> None:
    error = rejected(parser, inventory_movement("write_off", reason=None))
    assert error.reason == "missing_field"
    assert str(error) == "inventory: missing required field reason (required when movement is write_off)"
    error = rejected(parser, inventory_movement("write_off", reason="stolen"))
    assert error.reason == "invalid_value" and "field reason" in str(error) and '"temperature"' in str(error)


@pytest.mark.parametrize(
    ("overrides", "reason", "says"),
    [
        ({"qty": -3}, "invalid_value", "field qty: -3 is less than the minimum of 0"),
        ({"qty": 2.5}, "wrong_type", "field qty must be integer, got 2.5"),
        ({"movement": "transfer"}, "invalid_value", 'field movement: "transfer" is not one of'),
        ({"unit_cost": -1.0}, "invalid_value", "field unit_cost"),
        ({"best_before": "2026-11-22"}, "invalid_value", "field best_before"),
        ({"warehouse_id": None}, "missing_field", "missing required field warehouse_id"),
        ({"shelf": "A3"}, "unexpected_field", "unexpected field shelf"),
    ],
)
def test_bad_movements_are_refused_with_a_reason_naming_the_field(parser: EventParser, overrides: dict, reason: str,
                                                                 says: str) -> None:
    error = rejected(parser, event("inventory", **overrides))  # a receipt, spoiled
    assert error.reason == reason and says in str(error)


def test_integral_float_quantities_are_stored_as_integers(parser: EventParser) -> None:
    assert parser.parse(orjson.dumps(inventory_movement("stock_count", qty=7.0)))["qty"] == 7


def _lines(*events: dict) -> bytes:
    return b"\n".join(orjson.dumps(e) for e in events) + b"\n"


def test_batch_ingest_writes_movements_and_quarantines_bad_ones_once(warehouse: tuple[Settings, Warehouse],
                                                                      tmp_path: Path) -> None:
    _, store = warehouse
    receipt = inventory_movement("receipt", warehouse_id="fw-B01", occurred_at="2026-11-20T05:00:00+08:00")
    write_off = inventory_movement("write_off", warehouse_id="fw-B01", batch_id=receipt["batch_id"], reason="damaged", qty=2)
    sold_out = inventory_movement("stock_count", warehouse_id="fw-B01", occurred_at="2026-11-20T18:40:00+08:00")
    no_batch = inventory_movement("receipt", warehouse_id="fw-B01", batch_id=None)
    no_reason = inventory_movement("write_off", warehouse_id="fw-B01", reason=None)
    negative = inventory_movement("stock_count", warehouse_id="fw-B01", qty=-1)
    unknown = event("inventory", warehouse_id="fw-B01", movement="transfer")
    events = tmp_path / "events"
    events.mkdir()
    (events / "inventory.jsonl").write_bytes(_lines(receipt, write_off, sold_out, no_batch, no_reason, negative, unknown))

    first = beam_ingest.run(events)
    second = beam_ingest.run(events)  # the same file again: nothing is counted twice
    assert (first.read, first.valid, first.quarantined) == (second.read, second.valid, second.quarantined) == (7, 3, 4)

    stored = store.rows("SELECT movement, qty, batch_id, reason, toString(best_before), unit_cost "
                        "FROM raw_inventory FINAL WHERE warehouse_id = 'fw-B01' ORDER BY occurred_at, movement")
    assert stored == [
        ("receipt", 40, receipt["batch_id"], None, "2026-11-21 21:00:00.000", Decimal("3.2")),
        ("write_off", 2, receipt["batch_id"], "damaged", None, None),
        ("stock_count", 0, None, None, None, None),
    ]
    quarantined = store.rows("SELECT position, reason, error FROM quarantine FINAL WHERE event_type = 'inventory' "
                             "AND source LIKE '%inventory.jsonl' ORDER BY position")
    assert quarantined == [
        (4, "missing_field", "inventory: missing required field batch_id (required when movement is receipt)"),
        (5, "missing_field", "inventory: missing required field reason (required when movement is write_off)"),
        (6, "invalid_value", "inventory: field qty: -1 is less than the minimum of 0"),
        (7, "invalid_value", 'inventory: field movement: "transfer" is not one of "receipt", "write_off" or "stock_count"'),
    ]


def test_the_stream_takes_movements_from_their_topic_keyed_by_front_warehouse(
        warehouse: tuple[Settings, Warehouse]) -> None:
    cfg, store = warehouse
    topic = topic_for("inventory")
    assert topic == "lastmile.inventory" and topic in event_topics()
    receipt = inventory_movement("receipt", warehouse_id="fw-S01", sku="SKU-0099")
    count = inventory_movement("stock_count", warehouse_id="fw-S01", sku="SKU-0042", qty=5)
    # one front warehouse's movements share a partition, whatever the SKU
    assert message_key("inventory", receipt) == message_key("inventory", count) == b"fw-S01"
    bad = inventory_movement("write_off", warehouse_id="fw-S01", reason=None)

    sink = StreamSink(store, Ingestor(Identifiers(cfg)))
    try:
        records = [Record(topic, 3, offset, orjson.dumps(e)) for offset, e in enumerate([receipt, count, bad], 1)]
        written = asyncio.run(sink.handle(records))
        again = asyncio.run(sink.handle(records))  # a replay after a restart
    finally:
        sink.close()
    assert (written.batch.read, written.batch.valid, written.batch.quarantine_count) == (3, 2, 1)
    assert again.batch.valid == 2
    assert store.rows("SELECT sku, movement, qty FROM raw_inventory FINAL WHERE warehouse_id = 'fw-S01' ORDER BY sku") == [
        ("SKU-0042", "stock_count", 5), ("SKU-0099", "receipt", 40)]
    assert store.rows("SELECT reason, error FROM quarantine FINAL WHERE source = {s:String}",
                      {"s": source_name(topic, 3)}) == [
        ("missing_field", "inventory: missing required field reason (required when movement is write_off)")]
