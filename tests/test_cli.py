"""The command line: readable tables, machine formats, one-line errors with exit codes."""

from __future__ import annotations

import csv
import io
import json

import orjson
import pytest
from typer.testing import CliRunner

from lastmile.cli import app
from lastmile.config import Settings
from pipelines import beam_ingest
from tests.factories import event

runner = CliRunner()


@pytest.fixture
def loaded(home: Settings) -> Settings:
    events = home.events_dir
    events.mkdir(parents=True)
    lines = [orjson.dumps(event("order", channel=c)) for c in ("mini_program", "group_chat", "group_chat")]
    (events / "order.jsonl").write_bytes(b"\n".join(lines + [b"{broken"]) + b"\n")
    beam_ingest.run(events)
    return home


def test_sql_prints_a_table(loaded: Settings) -> None:
    result = runner.invoke(app, ["sql", "SELECT channel, count() AS orders FROM raw_order FINAL GROUP BY channel ORDER BY channel"])
    assert result.exit_code == 0, result.output
    assert "group_chat" in result.output and "orders" in result.output


def test_sql_csv_and_json_for_programs(loaded: Settings) -> None:
    query = "SELECT channel, count() AS orders FROM raw_order FINAL GROUP BY channel ORDER BY channel"
    as_csv = runner.invoke(app, ["sql", query, "--format", "csv"])
    assert list(csv.reader(io.StringIO(as_csv.stdout))) == [["channel", "orders"], ["group_chat", "2"], ["mini_program", "1"]]
    as_json = runner.invoke(app, ["sql", query, "-f", "json"])
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [
        {"channel": "group_chat", "orders": 2}, {"channel": "mini_program", "orders": 1}]
    # TSV has no header, so `X=$(lastmile sql "SELECT one value" -f tsv)` holds just the value.
    as_tsv = runner.invoke(app, ["sql", query, "-f", "tsv"])
    assert as_tsv.stdout == "group_chat\t2\nmini_program\t1\n"
    awkward = runner.invoke(app, ["sql", "SELECT 'a\tb\nc' AS s, NULL AS n", "-f", "tsv"])
    assert awkward.stdout == "a\\tb\\nc\t\\N\n"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["sql", "SELEC 1"], "Syntax error"),
        (["sql", "SELECT 1", "--format", "xml"], "--format must be"),
        (["sql", "SELECT * FROM no_such_table"], "no_such_table"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(loaded: Settings, args: list[str], words: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert words in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_status_json_counts_distinct_events_and_quarantine(loaded: Settings) -> None:
    result = runner.invoke(app, ["status", "--json"])
    status = json.loads(result.stdout)
    assert status["rows"]["raw_order"] == 3
    assert status["quarantined_by_reason"] == {"not_json": 1}


def test_the_development_broker_stops_cleanly_on_sigterm(tmp_path) -> None:
    """`kill` of `lastmile broker` (as a tour or an orchestrator sends it) ends it at once, exit 0."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    from lastmile.streaming.broker import is_listening

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    broker = subprocess.Popen([sys.executable, "-m", "lastmile.cli", "broker", "--port", str(port)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not is_listening("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert is_listening("127.0.0.1", port), "the broker never listened"
        broker.send_signal(signal.SIGTERM)
        out, err = broker.communicate(timeout=8)
    finally:
        if broker.poll() is None:
            broker.kill()
    assert broker.returncode == 0, err
    assert "Traceback" not in err and "TimeoutExpired" not in err
    assert not is_listening("127.0.0.1", port)
