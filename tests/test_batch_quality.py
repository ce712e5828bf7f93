"""Batch-quality alerts: the rule on hand-made cases, the warehouse replay of `lastmile run`
(recorded once, scored against a truth file) and the stream worker's handler on a scripted batch."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from lastmile.batches.alerts import TABLE
from lastmile.batches.evaluate import alert_and_score, score
from lastmile.batches.monitor import ACTION, BatchMonitor
from lastmile.batches.rules import BatchRules, BatchRulesError, judge, load_rules
from tests.warehouses import empty_embedded_warehouse

RULES = BatchRules()
T0 = datetime(2026, 9, 7, 8, 0, tzinfo=timezone.utc)
ROOT = Path(__file__).resolve().parent.parent


def at(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat()


def order(n: int, hours: float, *batches: str, category: str = "fruit") -> dict[str, Any]:
    return {"event_id": f"ev-ord-{n:06d}", "event_type": "order", "schema_version": 1, "occurred_at": at(hours),
            "source": "mini_program", "order_id": f"ord-{n:06d}", "buyer": {"phone": "13800138000"},
            "community_id": "C01", "building_id": "C01-B01", "leader_id": "LDR-C01-B01", "merchant_id": "M001",
            "items": [{"sku": b.split("-")[0], "category": category, "qty": 1, "unit_price": 9.9, "origin": "云南",
                       "batch_id": b} for b in batches],
            "total_amount": 9.9 * len(batches), "delivery_slot_start": at(hours + 20), "delivery_slot_end": at(hours + 22),
            "locker_id": "L-C01-1", "compartment_id": "L-C01-1-K01", "channel": "mini_program"}


def review(n: int, hours: float, stars: int, *tags: str, text: str | None = None) -> dict[str, Any]:
    event = {"event_id": f"ev-rev-{n:06d}", "event_type": "review", "schema_version": 1, "occurred_at": at(hours),
             "source": "mini_program", "order_id": f"ord-{n:06d}", "reviewer": {"phone": "13800138000"}, "stars": stars}
    if tags:
        event["tags"] = list(tags)
    if text:
        event["text"] = text
    return event


def claim(n: int, hours: float, reason: str) -> dict[str, Any]:
    return {"event_id": f"ev-ret-{n:06d}", "event_type": "return", "schema_version": 1, "occurred_at": at(hours),
            "source": "mini_program", "kind": "claim", "claimant": {"phone": "13800138000"}, "order_id": f"ord-{n:06d}",
            "reason": reason, "amount": 5.0}


def history(sku: str = "SK0009", batches: int = 10, per_batch: int = 10) -> list[tuple[str, dict[str, Any]]]:
    """Ordinary batches of a SKU: a fifth of the orders reviewed, one bad review in ~30."""
    events: list[tuple[str, dict[str, Any]]] = []
    n = 0
    for b in range(batches):
        for k in range(per_batch):
            n += 1
            events.append(("raw_order", order(n, b * 24 + k * 0.1, f"{sku}-H{b:02d}")))
            if n % 2 == 0:
                events.append(("raw_review", review(n, b * 24 + 30 + k * 0.1, 2 if n % 30 == 0 else 5)))
    return events


def feed(monitor: BatchMonitor, events: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    return [alert for table, row in events for alert in monitor.feed(table, row)]


def bad_batch(first: int, orders: int, batch: str = "SK0009-BAD", hours: float = 400) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    for k in range(orders):
        events.append(("raw_order", order(first + k, hours + k * 0.1, batch)))
    for k in range(orders):
        events.append(("raw_review", review(first + k, hours + 24 + k, 1, "overripe", text=f"葡萄烂了 {k}")))
    return events


def test_two_bad_reviews_of_a_tiny_batch_do_not_alert() -> None:
    monitor = BatchMonitor(RULES)
    assert feed(monitor, history()) == []
    tiny = [("raw_order", order(900, 400, "SK0009-TINY")), ("raw_order", order(901, 400.5, "SK0009-TINY")),
            ("raw_review", review(900, 420, 1, "overripe")), ("raw_review", review(901, 421, 2, "not_fresh"))]
    assert feed(monitor, tiny) == []
    # Two of two is a 100 % bad share, but far from improbable: the minimum count and the test both hold it.
    assert not judge(2, 2, 0.08, RULES).fired


def test_a_real_bad_batch_alerts_once_at_the_review_that_tips_it() -> None:
    monitor = BatchMonitor(RULES)
    feed(monitor, history())
    alerts = feed(monitor, bad_batch(1000, 12))
    assert [a.batch_id for a in alerts] == ["SK0009-BAD"]
    alert = alerts[0]
    assert alert.alert_id == "batch_quality:SK0009-BAD" and alert.sku == "SK0009" and alert.origin == "云南"
    assert RULES.min_bad <= alert.bad <= 6 and alert.p_value <= RULES.alpha
    assert alert.bad_rate > alert.baseline_rate and alert.reasons.get("overripe") == alert.bad
    assert alert.sample_texts[:1] == ["葡萄烂了 0"] and alert.merchants == ["M001"]
    assert alert.event_type == "review" and alert.event_id == f"ev-rev-{1000 + alert.bad - 1:06d}"
    action = orjson.loads(alert.action().to_json())
    assert action["action"] == ACTION and action["action_id"] == alert.alert_id and action["details"]["batch_id"] == "SK0009-BAD"
    # Replaying the same events (a restarted consumer) neither counts them again nor re-alerts.
    assert feed(monitor, bad_batch(1000, 12)) == []
    assert monitor.batches["SK0009-BAD"].bad == 12


def test_a_good_batch_sold_beside_a_bad_one_is_not_alerted() -> None:
    monitor = BatchMonitor(RULES)
    feed(monitor, history("SK0009") + history("SK0004"))
    events: list[tuple[str, dict[str, Any]]] = []
    for k in range(14):  # the good SK0004 batch rides along in half of the bad batch's orders
        batches = ("SK0009-BAD", "SK0004-GOOD") if k % 2 else ("SK0009-BAD",)
        events.append(("raw_order", order(2000 + k, 400 + k * 0.1, *batches)))
    for k in range(14):
        events.append(("raw_order", order(3000 + k, 400 + k * 0.1, "SK0004-GOOD")))
        events.append(("raw_review", review(3000 + k, 430 + k, 5)))
    for k in range(14):  # generic complaints: they do not say which line was bad
        events.append(("raw_review", review(2000 + k, 424 + k, 1, "not_fresh")))
    alerts = feed(monitor, events)
    assert [a.batch_id for a in alerts] == ["SK0009-BAD"]


def test_service_complaints_and_other_claims_are_not_batch_signals() -> None:
    monitor = BatchMonitor(RULES)
    feed(monitor, history())
    events = [("raw_order", order(4000 + k, 400 + k * 0.1, "SK0009-LATE")) for k in range(12)]
    events += [("raw_review", review(4000 + k, 430, 1, "late", "not_cold")) for k in range(12)]
    events += [("raw_return", claim(4000 + k, 431, "temperature")) for k in range(12)]
    assert feed(monitor, events) == []
    assert monitor.batches["SK0009-LATE"].bad == 0 and monitor.batches["SK0009-LATE"].feedback == 12


def test_the_stream_memory_drops_old_orders_but_keeps_the_baselines() -> None:
    monitor = BatchMonitor(RULES)
    feed(monitor, history())
    baseline = monitor.baseline(monitor.batches["SK0009-H09"])
    assert monitor.forget_before(T0.timestamp() + 9 * 24 * 3600) == 90  # nine days of ten orders
    assert set(monitor.batches) == {"SK0009-H08", "SK0009-H09"} and len(monitor.orders) == 10  # H08: reviews after
    assert monitor.baseline(monitor.batches["SK0009-H09"]) == baseline
    # Feedback about a forgotten order waits for it (and is dropped by the next forget), nothing fails.
    assert feed(monitor, [("raw_review", review(1, 400, 1, "overripe"))]) == []


def test_rules_file(tmp_path: Path) -> None:
    assert load_rules() == BatchRules()  # the shipped file documents the defaults
    path = tmp_path / "batch_quality.yml"
    path.write_text("test:\n  min_bads: 3\n")
    with pytest.raises(BatchRulesError, match="test takes only"):
        load_rules(path)
    path.write_text("test:\n  alpha: 2\n")
    with pytest.raises(BatchRulesError, match="test.alpha must be between"):
        load_rules(path)
    # dbt's default var (plain `dbt`) is the file's signal definition (`lastmile transform` passes the file's).
    project = yaml.safe_load((ROOT / "dbt" / "dbt_project.yml").read_text())
    assert project["vars"]["batch_quality"] == load_rules().as_dbt_vars()


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with empty_embedded_warehouse(tmp_path_factory.mktemp("batches")) as (cfg, store):
        yield cfg, store


def events_by_type(events: list[tuple[str, dict[str, Any]]]) -> dict[str, list[bytes]]:
    files: dict[str, list[bytes]] = {}
    for _, event in events:
        files.setdefault(event["event_type"], []).append(orjson.dumps(event))
    return files


def ingest(cfg: Any, store: Any, events: list[tuple[str, dict[str, Any]]]) -> None:
    from lastmile.ingest import Ingestor, write
    from lastmile.privacy import Identifiers

    ingestor = Ingestor(Identifiers(cfg))
    for event_type, lines in events_by_type(events).items():
        batch = ingestor.process(f"test:{event_type}", list(enumerate(lines)))
        assert not batch.quarantined, batch.quarantined[:1]
        write(store, batch)


def test_lastmile_run_replay_records_each_alert_once_and_scores_it(warehouse: Any, tmp_path: Path) -> None:
    cfg, store = warehouse
    ingest(cfg, store, history() + bad_batch(5000, 12))
    truth = tmp_path / "bad_batches.jsonl"
    truth.write_bytes(orjson.dumps({"batch_id": "SK0009-BAD", "sku": "SK0009", "orders": 12,
                                    "first_bad_signal_at": at(424)}) + b"\n")
    for _ in range(2):  # re-running never doubles the row
        alerts, detection = alert_and_score(store, RULES, truth)
        assert [a.batch_id for a in alerts] == ["SK0009-BAD"]
        assert store.rows(f"SELECT batch_id, raised_by, bad FROM {TABLE} FINAL") == [("SK0009-BAD", "replay", alerts[0].bad)]
    assert detection is not None and detection.recall == 1.0 and detection.false_rate == 0.0
    assert detection.good_batches == 10 and detection.median_delay_hours == pytest.approx(alerts[0].bad - 1, abs=0.01)
    missed = score([], [{"batch_id": "X", "first_bad_signal_at": at(1)}], batches=5)
    assert missed.recall == 0.0 and missed.median_delay_hours is None


def test_stream_handler_publishes_the_alert_then_records_it(warehouse: Any) -> None:
    from lastmile.batches.stream import BatchQualityWatch
    from lastmile.ingest import Ingestor
    from lastmile.privacy import Identifiers
    from lastmile.streaming.sink import Record, StreamSink
    from lastmile.streaming.topics import ACTIONS_TOPIC

    cfg, store = warehouse
    store.command(f"TRUNCATE TABLE {TABLE}")
    watch = BatchQualityWatch(store, RULES)
    watch.load()  # the history and the first bad batch, already in the warehouse: nothing pending (recorded)
    assert watch.pending == [] or [a.batch_id for a in watch.pending] == ["SK0009-BAD"]
    watch.pending = []
    published: list[tuple[str, list[tuple[bytes | None, bytes]]]] = []

    async def publish(topic: str, messages: Any) -> None:
        published.append((topic, list(messages)))

    sink = StreamSink(store, Ingestor(Identifiers(cfg)))
    sink.handlers.append(watch.handler(sink, publish))
    scripted = bad_batch(7000, 10, batch="SK0009-STREAM", hours=500)
    records = [Record(f"lastmile.{e['event_type']}", 0, k, orjson.dumps(e)) for k, (_, e) in enumerate(scripted)]
    try:
        asyncio.run(sink.handle(records))
    finally:
        sink.close()
    assert [(topic, [orjson.loads(v)["action_id"] for _, v in messages]) for topic, messages in published] == [
        (ACTIONS_TOPIC, ["batch_quality:SK0009-STREAM"])]
    assert store.rows(f"SELECT batch_id, raised_by FROM {TABLE} FINAL WHERE batch_id = 'SK0009-STREAM'") == [
        ("SK0009-STREAM", "stream")]


@pytest.mark.slow
def test_dbt_marts_on_a_small_simulation(tmp_path: Path) -> None:
    """fct_batch_quality and supplier_scorecard over a small simulated community, with the alerts
    the replay recorded: one row per batch, the alert flag where the table has one."""
    from lastmile import transform
    from lastmile.identity.rules import Rules
    from lastmile.identity.store import resolve_pending
    from lastmile.ingest import Ingestor, write
    from lastmile.privacy import Identifiers
    from lastmile.simulator import SimulationConfig, simulate

    home = tmp_path / "home"
    simulate(SimulationConfig(orders=1000, weeks=1, bad_batch_share=0.3, supply=False), home)
    with empty_embedded_warehouse(home) as (cfg, store):
        ingestor = Ingestor(Identifiers(cfg))
        for name in ("order", "review", "return"):
            lines = (home / "events" / f"{name}.jsonl").read_bytes().splitlines()
            write(store, ingestor.process(f"events/{name}.jsonl", list(enumerate(lines, 1))))
        rules = Rules.load()
        resolve_pending(store, rules, rules.blocked_tokens(ingestor.identifiers.hasher))  # the OneIDs dbt joins
        alerts, detection = alert_and_score(store, RULES, home / "truth" / "bad_batches.jsonl")
        assert alerts and detection is not None and detection.recall > 0.5
        transform.load_reference(cfg)
        # `dbt run` of the marts and what they read (their data tests run in test_dbt_marts' full build)
        built, _ = transform.invoke(cfg, ["run", "--select", "+fct_batch_quality", "+supplier_scorecard"], quiet=True)
        assert built.success, built.failures
        rows = dict(store.rows("SELECT batch_id, is_alerted FROM fct_batch_quality"))
        assert len(rows) == store.scalar("SELECT uniqExact(batch_id) FROM int_order_lines_enriched WHERE batch_id != ''")
        assert {b for b, alerted in rows.items() if alerted} == {a.batch_id for a in alerts}
        flagged = store.rows("SELECT bad_rate FROM fct_batch_quality WHERE is_alerted")
        assert min(r for (r,) in flagged) > store.scalar("SELECT avg(bad_rate) FROM fct_batch_quality")
        merchants = store.scalar("SELECT uniqExact(merchant_id) FROM supplier_scorecard")
        assert merchants == store.scalar("SELECT uniqExact(merchant_id) FROM raw_order FINAL")
        assert store.scalar("SELECT sum(alerted_batches) FROM supplier_scorecard") >= len(alerts)
