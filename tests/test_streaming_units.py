"""The real-time path's pure parts: topic keys, batch merging, the new-neighbour signal, write-before-handlers."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import orjson

from lastmile.config import settings
from lastmile.journeys.signals import NEW_NEIGHBOUR, NewNeighbours
from lastmile.ingest import Batch, Ingestor
from lastmile.privacy import Identifiers
from lastmile.streaming.sink import Record, StreamSink, WrittenBatch, ingest_records, merge_into
from lastmile.streaming.topics import event_topics, message_key, topic_for

ENVELOPE = {"schema_version": 1, "occurred_at": "2026-10-05T08:00:00+08:00", "source": "mini_program"}


def _ingestor(tmp_path) -> Ingestor:
    return Ingestor(Identifiers(replace(settings(), home=tmp_path, hash_key="unit")))


def _return(event_id: str, order_id: str, reason: str, phone: str = "13800138000") -> bytes:
    return orjson.dumps({**ENVELOPE, "event_id": event_id, "event_type": "return", "kind": "claim", "order_id": order_id,
                         "reason": reason, "amount": 12.5, "claimant": {"phone": phone}})


def _identify(event_id: str, at: str, **identifiers: str) -> bytes:
    return orjson.dumps({**ENVELOPE, "occurred_at": at, "event_id": event_id, "event_type": "identify",
                         "identifiers": identifiers, "reason": "register"})


def test_topics_and_keys_follow_what_order_matters_for() -> None:
    assert topic_for("order") == "lastmile.order" and "lastmile.locker_telemetry" in event_topics()
    assert message_key("pickup", {"order_id": "o-1"}) == b"o-1"
    assert message_key("locker_telemetry", {"compartment_id": "c-9"}) == b"c-9"
    key = message_key("identify", {"identifiers": {"device_id": "d", "unionid": "u"}})
    assert key == message_key("identify", {"identifiers": {"unionid": "u"}}), "keyed by the strongest identifier"
    assert b"u" != key and len(key) == 32, "a digest, never the identifier itself"
    assert message_key("return", {"claimant": {"phone": "138"}}) is not None  # packaging returns: by claimant
    assert message_key("order", {}) is None


def test_batches_are_judged_per_partition_and_merged_whole(tmp_path) -> None:
    ingestor = _ingestor(tmp_path)
    records = [Record("lastmile.return", 0, 7, _return("ret-00001", "o-1", "temperature")),
               Record("lastmile.return", 1, 7, b"{not json"),
               Record("lastmile.identify", 2, 3, _identify("idf-00001", ENVELOPE["occurred_at"], phone="13900139000", unionid="u1"))]
    batch = ingest_records(ingestor, records)
    assert (batch.read, batch.valid, batch.quarantine_count) == (3, 2, 1)
    quarantined = orjson.loads(batch.quarantined[0])
    assert (quarantined["source"], quarantined["position"], quarantined["reason"]) == ("kafka:lastmile.return/1", 7, "not_json")
    assert batch.links, "identity evidence survives the merge"
    total = Batch()
    merge_into(total, batch)
    merge_into(total, batch)
    assert (total.read, len(total.links), total.reasons["not_json"]) == (6, 2 * len(batch.links), 2)


def test_a_new_neighbour_only_when_every_identifier_is_new(tmp_path) -> None:
    ingestor = _ingestor(tmp_path)
    first = ingestor.process("t", [(1, _identify("idf-00002", "2026-10-05T09:00:00+08:00", phone="13900139000", device_id="d1")),
                                   (2, _identify("idf-00001", "2026-10-05T08:00:00+08:00", phone="13900139000", unionid="u1"))])
    neighbours = NewNeighbours(set())
    signals, new_rows = neighbours.decide(WrittenBatch(first, 2))
    assert [(e.event_type, e.event_id) for e in signals] == [(NEW_NEIGHBOUR, "idf-00001")], "earliest event wins, one signal"
    assert signals[0].fields["id_type"] == "unionid" and signals[0].oneid == "", "the strongest identifier; OneID resolves the event"
    assert signals[0].at.isoformat() == "2026-10-05T00:00:00+00:00"
    assert len(new_rows) == 3 and not any("139" in token for token, *_ in new_rows), "keyed hashes, never raw identifiers"
    again, _ = neighbours.decide(WrittenBatch(first, 2))
    assert again == [], "replaying a batch signals nobody twice"
    stranger = ingestor.process("t", [(3, _identify("idf-00003", "2026-10-06T08:00:00+08:00", phone="13700137000", unionid="u9"))])
    assert len(neighbours.decide(WrittenBatch(stranger, 1))[0]) == 1
    known_phone_new_device = ingestor.process("t", [(4, _identify("idf-00004", "2026-10-07T08:00:00+08:00",
                                                                   phone="13900139000", device_id="d7"))])
    signals, new_rows = neighbours.decide(WrittenBatch(known_phone_new_device, 1))
    assert signals == [] and [(id_type, event) for _, id_type, event, _ in new_rows] == [("device_id", "idf-00004")], \
        "a known person's new device is remembered, not signalled"


def test_worker_keeps_the_log_level_it_was_given() -> None:
    """faust's spinner would set the root logger to DEBUG (every library's debug call then
    builds a record); the worker's own Worker class keeps the level asked for."""
    import asyncio
    import logging

    import faust

    from lastmile.streaming.faust_compat import QuietWorker

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    loop = asyncio.new_event_loop()
    try:
        app = faust.App("log-level-check", broker="kafka://127.0.0.1:1", web_enabled=False)
        QuietWorker(app, loglevel="WARNING", quiet=True, override_logging=True, loop=loop)._setup_logging()
        assert root.getEffectiveLevel() == logging.WARNING
        assert not logging.getLogger("aiokafka.producer.producer").isEnabledFor(logging.DEBUG)
    finally:
        loop.close()
        root.setLevel(level)
        root.handlers[:] = handlers


class _Recorder:
    """A warehouse stand-in that records what was inserted, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def insert_json_block(self, table: str, block: bytes, rows: int) -> int:
        if rows:
            self.calls.append(f"insert {table}")
        return rows


def test_handlers_run_only_after_the_write(tmp_path) -> None:
    warehouse = _Recorder()
    sink = StreamSink(warehouse, _ingestor(tmp_path))  # type: ignore[arg-type]

    async def handler(batch: WrittenBatch) -> None:
        warehouse.calls.append(f"handler saw {batch.records}")

    sink.handlers.append(handler)
    asyncio.run(sink.handle([Record("lastmile.return", 0, 1, _return("ret-00001", "o-1", "quality"))]))
    sink.close()
    assert warehouse.calls[0] == "insert raw_return" and warehouse.calls[-1] == "handler saw 1"


def test_commit_offsets_are_the_next_offset_per_partition() -> None:
    from aiokafka import TopicPartition

    from lastmile.streaming.consumer import commit_offsets

    records = [Record("lastmile.order", 0, 5, b""), Record("lastmile.order", 0, 9, b""), Record("lastmile.order", 1, 2, b"")]
    assert commit_offsets(records) == {TopicPartition("lastmile.order", 0): 10, TopicPartition("lastmile.order", 1): 3}


def test_process_judges_judge_as_the_worker_would(tmp_path) -> None:
    from lastmile.streaming.judges import ProcessJudges, split_by_partition

    records = [Record("lastmile.return", p % 3, n, _return(f"ret-{n:05d}", f"o-{n}", "temperature")) for n, p in enumerate(range(30))]
    records.append(Record("lastmile.return", 1, 99, b"{not json"))
    chunks = split_by_partition(records, 2)
    assert len(chunks) == 2
    assert sorted((p, o) for c in chunks for _, p, offsets, _ in c for o in offsets) == sorted((r.partition, r.offset) for r in records)
    assert not {p for _, p, _, _ in chunks[0]} & {p for _, p, _, _ in chunks[1]}, "a partition never straddles chunks"
    by_offset = {(r.partition, r.offset): r.value for r in records}
    assert all(by_offset[(p, o)] == v for c in chunks for _, p, offsets, values in c for o, v in zip(offsets, values))

    cfg = replace(settings(), home=tmp_path, hash_key="unit")
    judges = ProcessJudges(cfg, frozenset(), 2)
    try:
        batch = asyncio.run(judges.judge(records))
    finally:
        judges.close()
    alone = ingest_records(_ingestor(tmp_path), records)
    assert (batch.read, batch.valid, batch.reasons) == (alone.read, alone.valid, alone.reasons)
    assert sorted(batch.rows["raw_return"]) == sorted(alone.rows["raw_return"]) and sorted(batch.links) == sorted(alone.links)


def _refresher(tmp_path, monkeypatch, resolve=None):
    """An IdentityRefresher over stubbed resolution and profiles (they append to ``calls``), a
    settable clock ``now`` and a batch that carries identity evidence."""
    import threading

    from lastmile.identity.store import ResolveOutcome
    from lastmile.streaming import identity

    calls: list[str] = []

    def resolved(*_, **__):
        calls.append("resolve")
        return ResolveOutcome(len(calls), 0, _Report())

    monkeypatch.setattr(identity, "resolve_pending", resolve or resolved)
    monkeypatch.setattr(identity, "build_profiles", lambda *_: calls.append("profiles") or 7)
    now = [0.0]
    ingestor = _ingestor(tmp_path)
    refresher = identity.IdentityRefresher(_Recorder(), threading.Lock(), ingestor.identifiers,  # type: ignore[arg-type]
                                           resolve_every_s=5, profiles_every_s=30, clock=lambda: now[0])
    with_links = WrittenBatch(ingestor.process("t", [(1, _return("ret-00001", "o-1", "quality"))]), 1)
    assert with_links.batch.links
    return refresher, calls, now, with_links


def test_identity_refresher_is_throttled_and_finishes_on_close(tmp_path, monkeypatch) -> None:
    refresher, calls, now, with_links = _refresher(tmp_path, monkeypatch)

    async def scenario() -> None:
        handle = refresher.handler()
        await handle(with_links)  # first batch: both due
        refresher._running.result()
        now[0] = 1.0
        await handle(with_links)  # within 5 s: nothing starts
        assert not refresher.tick()
        now[0] = 6.0
        assert refresher.tick() and refresher._running.result() is None  # resolve only (profiles every 30 s)
        now[0] = 7.0
        await handle(with_links)
        await refresher.close()  # pending evidence and rows: resolved and rebuilt on the way out

    asyncio.run(scenario())
    assert calls == ["resolve", "profiles", "resolve", "resolve", "profiles"]
    assert (refresher.stats.resolves, refresher.stats.profiles) == (3, 7)


def test_identity_refresher_rebuilds_profiles_after_a_late_resolution(tmp_path, monkeypatch) -> None:
    """A resolution that ran alone leaves profiles stale: the stop rebuilds them even with no new rows."""
    refresher, calls, now, with_links = _refresher(tmp_path, monkeypatch)

    async def scenario() -> None:
        await refresher.handler()(with_links)  # resolve + profiles
        refresher._running.result()
        refresher._rows_pending = False  # as if the last batch carried only identity evidence
        refresher._links_pending = True
        now[0] = 6.0
        assert refresher.tick()  # resolve only: profiles not due for 30 s
        refresher._running.result()
        await refresher.close()

    asyncio.run(scenario())
    assert calls == ["resolve", "profiles", "resolve", "profiles"]


def test_identity_refresher_rebuilds_profiles_after_the_resolution_on_close(tmp_path, monkeypatch) -> None:
    """Evidence resolved only on the way out, after a profiles-only rebuild took the pending
    rows: the stop resolves and then rebuilds profiles, so they cover every OneID."""
    refresher, calls, now, with_links = _refresher(tmp_path, monkeypatch)

    async def scenario() -> None:
        await refresher.handler()(with_links)  # resolve + profiles
        refresher._running.result()
        now[0] = 31.0
        refresher.note(with_links)  # links and rows pending
        refresher._last_resolve = 30.5  # resolve not due yet, profiles due
        assert refresher.due() == (False, True)
        assert refresher.tick()  # profiles only: takes the pending rows, leaves the evidence
        refresher._running.result()
        await refresher.close()

    asyncio.run(scenario())
    assert calls == ["resolve", "profiles", "profiles", "resolve", "profiles"]


def test_identity_refresher_starts_nothing_while_closing(tmp_path, monkeypatch) -> None:
    """The worker's 1 s timer may tick while the stop waits for a running refresh: that tick must
    not start a resolution the stop does not know of (it would leave profiles stale)."""
    import threading
    import time

    from lastmile.identity.store import ResolveOutcome

    release = threading.Event()

    def resolve(*_, **__):
        release.wait(10)
        calls.append("resolve")
        return ResolveOutcome(len(calls), 0, _Report())

    refresher, calls, now, with_links = _refresher(tmp_path, monkeypatch, resolve)

    async def scenario() -> None:
        await refresher.handler()(with_links)  # resolve + profiles, held at the resolve
        refresher.note(with_links)
        now[0] = 6.0
        closing = asyncio.ensure_future(refresher.close())
        await asyncio.sleep(0.05)  # the stop now waits for the running refresh
        release.set()
        running = refresher._running
        while not running.done():  # blocks the loop: the stop cannot resume before the tick below
            time.sleep(0.01)
        assert not refresher.tick(), "no refresh starts once the stop began"
        await closing

    asyncio.run(scenario())
    assert calls == ["resolve", "profiles", "resolve", "profiles"]


class _Report:
    profiles = 0
    changes: list = []


def test_judges_adopt_a_forget_request_while_running(tmp_path) -> None:
    """A person forgotten while the worker runs: later batches carry none of their identifiers."""
    from lastmile.streaming.judges import ProcessJudges

    cfg = replace(settings(), home=tmp_path, hash_key="unit")
    ingestor = _ingestor(tmp_path)
    phone_token = ingestor.identifiers.token("phone", "13800138000")
    records = [Record("lastmile.return", 0, n, _return(f"ret-{n:05d}", f"o-{n}", "quality")) for n in range(4)]
    judges = ProcessJudges(cfg, frozenset(), 2)
    try:
        before = asyncio.run(judges.judge(records))
        judges.set_forgotten(frozenset({phone_token}))
        after = asyncio.run(judges.judge(records))
    finally:
        judges.close()
    assert phone_token in b"".join(before.rows["raw_return"]).decode() and before.links
    assert phone_token not in b"".join(after.rows["raw_return"]).decode() and not after.links
    assert after.valid == before.valid == 4, "the events still count; only the person is gone"

    ingestor.identifiers.set_forgotten(frozenset({phone_token}))  # in-process judging: the token cache is dropped too
    assert ingestor.identifiers.token("phone", "13800138000") is None


def test_worker_gc_tuning_keeps_full_collections() -> None:
    """The worker's GC tuning (pipelines.faust_worker: tune_gc, then freeze_heap) must not stop long-lived cyclic
    garbage from being collected. Checked in a child process (the tuning is process-wide),
    with the worker's middle/full ratios at a small young threshold: cycles that live long
    enough to reach the oldest generation, then die, are collected by the allocations after them."""
    import subprocess
    import sys
    from pathlib import Path

    code = """
import gc, weakref
from pipelines.faust_worker import GC_THRESHOLDS, freeze_heap, tune_gc
tune_gc()
freeze_heap()
assert gc.isenabled() and gc.get_threshold() == GC_THRESHOLDS and gc.get_freeze_count() > 0
young, middle, full = GC_THRESHOLDS
gc.set_threshold(100, middle, full)  # the worker's ratios, at a scale a test can afford
class Node:
    pass
held = []
for _ in range(200):
    a, b = Node(), Node()
    a.other, b.other = b, a
    held.append(a)
probes = [weakref.ref(x) for x in held]
keep = [[None] for _ in range(100 * middle * 3)]  # several middle collections: the cycles reach the oldest generation
del held, a, b
junk = []
for i in range(400_000):  # keep allocating; never call gc.collect()
    junk.append([None])
    if i % 1000 == 0 and all(p() is None for p in probes):
        break
print(sum(p() is not None for p in probes))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0", "long-lived cyclic garbage was never collected"


def test_identity_refresher_hurries_while_orders_wait_for_a_oneid(tmp_path, monkeypatch) -> None:
    """A new neighbour's orders wait for a OneID before their features exist: the refresher
    then resolves after ``waiting_every_s`` (1 s) instead of ``resolve_every_s`` (5 s), once."""
    refresher, calls, now, with_links = _refresher(tmp_path, monkeypatch)

    async def scenario() -> None:
        handle = refresher.handler()
        await handle(with_links)  # first batch: resolve + profiles
        refresher._running.result()
        now[0] = 1.5
        await handle(with_links)
        assert not refresher.tick()  # nobody waits: 5 s between resolutions
        refresher.hurry()
        assert refresher.tick()  # someone waits: 1 s is enough
        refresher._running.result()
        now[0] = 2.0
        await handle(with_links)
        refresher.hurry()
        assert not refresher.tick()  # even in a hurry, 1 s from the last start
        now[0] = 2.6
        assert refresher.tick()
        refresher._running.result()
        now[0] = 4.0
        await handle(with_links)
        assert not refresher.tick()  # the hurry was for that resolution only

    asyncio.run(scenario())
    assert calls == ["resolve", "profiles", "resolve", "resolve"]


class _RecordingPush:
    """The push target of a FeaturePusher, recording the frames it is given (no feature store)."""

    def __init__(self) -> None:
        self.frames: list = []

    def impulse_skus(self) -> frozenset[str]:
        return frozenset()

    def push_online(self, frame):
        import pandas as pd

        self.frames.append(frame)
        return frame.assign(_pushed_at=pd.Timestamp.now(tz="UTC"))

    def write_offline(self, frame) -> None:
        pass


def test_feature_pusher_hurries_oneid_only_while_the_stream_keeps_up(home) -> None:
    """A new neighbour's order waits for a OneID: the pusher asks the refresher to hurry when
    the batch came by time (the worker keeps up), not while it drains a backlog (full batches)."""
    import threading

    from lastmile.streaming.features import FeaturePusher
    from lastmile.warehouse import connect, migrate
    from tests.factories import event

    warehouse = connect(home)
    migrate(warehouse)
    ingestor = Ingestor(Identifiers(home))
    pusher = FeaturePusher(home, warehouse, threading.Lock(), ingestor.identifiers.rules.strength, target=_RecordingPush())
    hurried: list[int] = []
    pusher.on_waiting = lambda: hurried.append(1)

    def batch(full: bool) -> WrittenBatch:
        order = event("order", buyer={"openid": f"oNew-{len(hurried)}-{full}", "phone": "13700001111"})
        return WrittenBatch(ingestor.process("kafka:lastmile.order/0", [(1, orjson.dumps(order))]), 1, full=full)

    async def scenario() -> None:
        await pusher.handler()(batch(full=True))
        assert hurried == [] and pusher.counters.unresolved == 1  # a backlog: waits for the regular run
        await pusher.handler()(batch(full=False))
        assert hurried == [1] and pusher.counters.unresolved == 2  # keeping up: resolve soon

    asyncio.run(scenario())
    pusher.close()
    assert pusher.target.frames == []  # nobody has a OneID yet: nothing to push


def test_quarantine_topic_copies_of_huge_payloads_fit_a_kafka_message(tmp_path) -> None:
    """An oversized event is quarantined whole (up to 1 MiB) in the table; its copy on the
    quarantine topic is cut to fit a broker's message limit, and says so. Before, a quoted
    ~1 MiB payload made the send fail, the batch fail, and the restarted worker fail again."""
    from lastmile.streaming.handlers import TOPIC_COPY_MAX_BYTES, topic_copy

    huge = orjson.dumps({**ENVELOPE, "event_id": "ev-huge-1", "event_type": "review", "order_id": "o-1", "stars": 5,
                         "text": '"很好" ' * 120_000, "reviewer": {"phone": "13800138000"}})
    assert len(huge) > 1_000_000
    batch = _ingestor(tmp_path).process("kafka:lastmile.review/0", [(7, huge)])
    (line,) = batch.quarantined
    assert len(line) > TOPIC_COPY_MAX_BYTES  # the table's record keeps (nearly) all of it
    copy = topic_copy(line)
    record, original = orjson.loads(copy), orjson.loads(line)
    assert len(copy) <= TOPIC_COPY_MAX_BYTES
    assert record["payload_truncated"] is True and record["payload_bytes"] == len(original["payload"].encode())
    assert original["payload"].startswith(record["payload"]) and len(record["payload"]) > 10_000
    assert {k: record[k] for k in ("source", "position", "reason", "event_id")} == \
        {k: original[k] for k in ("source", "position", "reason", "event_id")}
    small = _ingestor(tmp_path).process("kafka:lastmile.review/0", [(8, b'{"event_type": "review"')]).quarantined[0]
    assert topic_copy(small) is small  # everyday rejects travel as they are
