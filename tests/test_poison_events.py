"""One contract-valid event must never stop a block: it loads, or it alone is quarantined.

Each poison event is sent with fifty valid orders around it, through the batch ingest
(Beam, files) and through the stream's sink (the worker's judge → write path, driven
directly with records as the consumer hands them over). Every valid neighbour must land.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from lastmile.config import Settings
from lastmile.ingest import Ingestor
from lastmile.privacy import Identifiers
from lastmile.streaming.sink import Record, StreamSink
from lastmile.warehouse import connect, migrate
from pipelines import beam_ingest
from tests.factories import event

NEIGHBOURS = 50


def neighbours(prefix: str) -> list[dict]:
    return [event("order", order_id=f"{prefix}-{i:04d}", event_id=f"ev-{prefix}-{i:04d}") for i in range(NEIGHBOURS)]


def around(poison: list[bytes], prefix: str) -> tuple[list[bytes], set[str]]:
    """Fifty valid orders with the poison payloads in the middle; the valid event ids."""
    valid = neighbours(prefix)
    lines = [orjson.dumps(e) for e in valid]
    return lines[:25] + poison + lines[25:], {e["event_id"] for e in valid}


def qty_as_float() -> bytes:
    bad = event("order", event_id="ev-poison-qty")
    bad["items"][0]["qty"] = 2.0
    return orjson.dumps(bad)


def version_as_float() -> bytes:
    return orjson.dumps(event("order", event_id="ev-poison-version", schema_version=1.0))


def duplicate_key() -> bytes:
    return orjson.dumps(event("order", event_id="ev-poison-dup"))[:-1] + b',"channel":"store"}'


def many_months() -> list[bytes]:
    """Orders from 101 different months (ClickHouse refuses over 100 partitions per insert by default)."""
    return [orjson.dumps(event("order", event_id=f"ev-month-{m:03d}", occurred_at=f"{2015 + m // 12}-{m % 12 + 1:02d}-10T09:00:00+08:00"))
            for m in range(101)]


def ingest_batch(home: Settings, lines: list[bytes]) -> beam_ingest.IngestReport:
    events = home.home / "events"
    events.mkdir(parents=True, exist_ok=True)
    (events / "order.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return beam_ingest.run(events)


def ingest_stream(home: Settings, lines: list[bytes]) -> tuple[int, int]:
    """The stream worker's write path without a broker: records → judge → write → handlers."""
    warehouse = connect(home)
    migrate(warehouse)
    sink = StreamSink(warehouse, Ingestor(Identifiers(home)))
    records = [Record("lastmile.order", 0, offset, line) for offset, line in enumerate(lines)]
    try:
        written = asyncio.run(sink.handle(records))
    finally:
        sink.close()
    return written.batch.valid, written.batch.quarantine_count


def stored_ids(table: str = "raw_order") -> set[str]:
    return {row[0] for row in connect().rows(f"SELECT event_id FROM {table} FINAL")}


def quarantined() -> dict[str, str]:
    return dict(connect().rows("SELECT event_id, reason FROM quarantine FINAL"))


PATHS: dict[str, Callable[[Settings, list[bytes]], object]] = {"batch": ingest_batch, "stream": ingest_stream}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_integral_floats_load_as_integers(home: Settings, path: str) -> None:
    lines, valid = around([qty_as_float(), version_as_float()], f"num-{path}")
    PATHS[path](home, lines)
    assert stored_ids() == valid | {"ev-poison-qty", "ev-poison-version"}
    assert connect().scalar("SELECT items.qty[1] FROM raw_order FINAL WHERE event_id = 'ev-poison-qty'") == 2
    assert quarantined() == {}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_duplicate_key_is_quarantined_alone_with_its_reason(home: Settings, path: str) -> None:
    lines, valid = around([duplicate_key()], f"dup-{path}")
    PATHS[path](home, lines)
    assert stored_ids() == valid
    assert quarantined() == {"ev-poison-dup": "duplicate_key"}
    error = connect().scalar("SELECT error FROM quarantine FINAL")
    assert "channel" in error and "twice" in error


@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_block_spanning_more_than_a_hundred_months_loads(home: Settings, path: str) -> None:
    months = many_months()
    lines, valid = around(months, f"months-{path}")
    PATHS[path](home, lines)
    assert stored_ids() == valid | {f"ev-month-{m:03d}" for m in range(101)}
    assert quarantined() == {}


def refuse_three_stars(home: Settings) -> None:
    """A rule only the warehouse knows: the contract allows 3 stars, this table does not."""
    warehouse = connect(home)
    migrate(warehouse)
    warehouse.command("ALTER TABLE raw_review ADD CONSTRAINT no_three_stars CHECK stars != 3")


@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_row_the_warehouse_refuses_is_quarantined_alone_with_the_warehouse_reason(home: Settings, path: str) -> None:
    refuse_three_stars(home)
    reviews = [event("review", event_id=f"ev-rev-{path}-{i:03d}", stars=4) for i in range(NEIGHBOURS)]
    reviews.insert(17, event("review", event_id="ev-three-stars", stars=3))
    lines = [orjson.dumps(r) for r in reviews]
    if path == "batch":
        events = home.home / "events"
        events.mkdir(parents=True, exist_ok=True)
        (events / "review.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        report = beam_ingest.run(events)
        assert (report.read, report.valid, report.quarantined, report.written) == (51, 50, 1, 50)
        assert report.reasons == {"warehouse_refused": 1}
    else:
        assert ingest_stream(home, lines) == (50, 1)
    assert stored_ids("raw_review") == {r["event_id"] for r in reviews} - {"ev-three-stars"}
    assert quarantined() == {"ev-three-stars": "warehouse_refused"}
    error = connect().scalar("SELECT error FROM quarantine FINAL")
    assert "no_three_stars" in error and "Code:" not in error


@pytest.mark.parametrize("path", sorted(PATHS))
def test_an_order_with_a_junk_buyer_identifier_is_kept_and_the_identifier_refused(home: Settings, path: str) -> None:
    junk = [
        orjson.dumps(event("order", event_id="ev-junk-null", buyer={"phone": "null"})),
        orjson.dumps(event("order", event_id="ev-junk-undefined", buyer={"openid": "undefined", "phone": "13912345678"})),
        orjson.dumps(event("order", event_id="ev-junk-number", buyer={"phone": 13800000000})),
    ]
    lines, valid = around(junk, f"junk-{path}")
    PATHS[path](home, lines)
    warehouse = connect()
    assert stored_ids() == valid | {"ev-junk-null", "ev-junk-undefined", "ev-junk-number"}
    assert quarantined() == {}
    stored = dict((row[0], row[1:]) for row in warehouse.rows(
        "SELECT event_id, buyer_phone, buyer_openid FROM raw_order FINAL WHERE event_id LIKE 'ev-junk-%'"))
    assert stored["ev-junk-null"] == (None, None)
    assert stored["ev-junk-number"] == (None, None)
    assert stored["ev-junk-undefined"][0] is not None and stored["ev-junk-undefined"][1] is None
    refusals = set(warehouse.rows(
        "SELECT event_id, a_type, reason, detail FROM identity_links WHERE reason != '' AND event_id LIKE 'ev-junk-%'"))
    assert refusals == {("ev-junk-null", "phone", "blocked_value", "placeholder"),
                        ("ev-junk-undefined", "openid", "blocked_value", "placeholder"),
                        ("ev-junk-number", "phone", "blocked_value", "test_number")}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_payload_that_is_not_utf8_keeps_its_exact_bytes(home: Settings, path: str) -> None:
    broken = b'{"event_type":"order","event_id":"ev-latin1","note":"caf\xe9 \xff\xfe"}'
    lines, valid = around([broken], f"bytes-{path}")
    PATHS[path](home, lines)
    assert stored_ids() == valid
    (reason, kept, shown), = connect().rows("SELECT reason, hex(payload_bytes), payload FROM quarantine FINAL")
    assert reason == "not_json"
    assert bytes.fromhex(kept) == broken
    assert shown == broken.decode("utf-8", "replace"), "payload stays readable text"


def test_validation_processes_die_with_a_killed_ingest(tmp_path: Path) -> None:
    """kill -9 of `lastmile ingest` leaves no validation process or resource tracker behind."""
    import psutil

    events = tmp_path / "home" / "events"
    events.mkdir(parents=True)
    line = orjson.dumps(event("locker_telemetry"))
    with open(events / "locker_telemetry.jsonl", "wb") as out:
        for i in range(150_000):
            out.write(line.replace(b'"ev-test-', b'"ev-%07d-' % i, 1) + b"\n")
    env = {**os.environ, "LASTMILE_HOME": str(tmp_path / "home"), "LASTMILE_HASH_KEY": "test-key-not-secret",
           "LASTMILE_INGEST_WORKERS": "2", "LASTMILE_INGEST_CHUNK_MB": "1"}
    env.pop("LASTMILE_CLICKHOUSE_URL", None)
    ingest = subprocess.Popen([str(Path(sys.executable).with_name("lastmile")), "ingest"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    children: list[psutil.Process] = []
    try:
        parent = psutil.Process(ingest.pid)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and ingest.poll() is None:
            children = parent.children(recursive=True)
            if sum("spawn_main" in " ".join(c.cmdline()) for c in children if _alive(c)) >= 2:
                break
            time.sleep(0.1)
        assert ingest.poll() is None, "ingest ended before its validation processes started"
        names = [" ".join(c.cmdline()) for c in children]
        assert sum("spawn_main" in n for n in names) >= 2, names
        os.kill(ingest.pid, signal.SIGKILL)
        ingest.wait(timeout=10)
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert [c for c in alive if _alive(c)] == [], "validation processes outlived their parent"
    finally:
        if ingest.poll() is None:
            ingest.kill()
        for child in children:
            if _alive(child):
                child.kill()


def _alive(process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _fuzz_module():
    """``bench/fuzz.py``, whose mutations this test shares (the bench runs 100,000 of them)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lastmile_bench_fuzz", Path(__file__).resolve().parent.parent / "bench" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_two_thousand_mutated_events_are_each_written_or_quarantined(home: Settings) -> None:
    """A small fuzz of the batch ingest: truncations, type changes, duplicate keys, huge and deep
    values, bad bytes, odd times... read = written + quarantined, exactly, and no error."""
    from tests.factories import BASE, packaging_return

    fuzz = _fuzz_module()
    seeds = [(t, orjson.dumps(event(t))) for t in sorted(BASE)] + [("return", orjson.dumps(packaging_return()))]
    mutants, used = fuzz.mutants(seeds, 2_000, seed=5)
    assert len(used) >= 12, used
    lines = fuzz.write_files(home.home / "events", mutants)
    report = beam_ingest.run(home.home / "events")
    warehouse = connect()
    written = sum(warehouse.count(t) for t in warehouse.tables() if t.startswith("raw_"))
    assert report.read == lines == 2_000
    assert report.read == report.valid + report.quarantined
    assert (written, warehouse.count("quarantine")) == (report.valid, report.quarantined)
    assert report.written == written and written > 200, "valid mutants (integral floats, junk identifiers, many months) land"
