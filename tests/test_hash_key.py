"""One hash key per warehouse: another key is refused, wherever it would be used, with a clear message."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from lastmile.cli import app
from lastmile.config import Settings, settings
from lastmile.identity.key_fingerprint import fingerprint
from lastmile.warehouse import close_all, connect
from tests.factories import event

runner = CliRunner()


def _events(home: Settings) -> Path:
    directory = home.home / "events"
    directory.mkdir(parents=True, exist_ok=True)
    orders = [event("order", order_id=f"ord-{i}", occurred_at=f"2026-11-0{i}T10:00:00+08:00",
                    buyer={"openid": f"oK-{i}", "phone": f"1391234567{i}"}) for i in range(1, 4)]
    (directory / "order.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in orders))
    return directory


def _profiles() -> int:
    return int(connect().scalar("SELECT uniqExact(oneid) FROM identity_nodes FINAL WHERE oneid != ''"))


def test_a_second_key_is_refused_everywhere_it_would_be_used(home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    first = runner.invoke(app, ["ingest", "--json"])  # no events yet: the data directory holds no key
    assert first.exit_code == 2
    _events(home)
    assert runner.invoke(app, ["ingest", "--json"]).exit_code == 0
    before = _profiles()
    assert before == 3

    monkeypatch.setenv("LASTMILE_HASH_KEY", "another-key")
    close_all()
    for command in (["ingest"], ["forget", "--phone", "13912345671"], ["identity", "rebuild"]):
        refused = runner.invoke(app, command)
        assert refused.exit_code == 2, (command, refused.output)
        text = " ".join(refused.output.split())
        assert fingerprint(b"another-key") in text and fingerprint(b"test-key-not-secret") in text, text
        assert "LASTMILE_HASH_KEY" in text and "fresh warehouse" in text, text
        assert "Traceback" not in refused.output
    close_all()
    assert _profiles() == before, "nothing was written under the other key"

    # the warehouse keeps the key's fingerprint, never the key
    stored = connect().rows("SELECT value FROM lastmile_settings FINAL")
    assert stored == [(fingerprint(b"test-key-not-secret"),)]
    assert "test-key-not-secret" not in str(connect().rows("SELECT * FROM lastmile_settings"))

    monkeypatch.setenv("LASTMILE_HASH_KEY", "test-key-not-secret")
    close_all()
    assert runner.invoke(app, ["ingest", "--json"]).exit_code == 0, "the warehouse's own key goes on working"
    assert _profiles() == before


def test_the_variable_does_not_silently_win_over_the_key_file(home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LASTMILE_HASH_KEY")
    _events(home)
    assert runner.invoke(app, ["ingest", "--json"]).exit_code == 0  # generates $LASTMILE_HOME/hash.key
    key_file = home.home / "hash.key"
    assert key_file.is_file()

    monkeypatch.setenv("LASTMILE_HASH_KEY", "a-key-from-the-secret-store")
    close_all()
    refused = runner.invoke(app, ["ingest"])
    assert refused.exit_code == 2, refused.output
    text = " ".join(refused.output.split())
    assert str(key_file) in text and "LASTMILE_HASH_KEY" in text
    assert fingerprint(b"a-key-from-the-secret-store") in text and fingerprint(key_file.read_text().strip().encode()) in text

    # the same key in both places is no conflict
    monkeypatch.setenv("LASTMILE_HASH_KEY", key_file.read_text().strip())
    close_all()
    assert settings().hash_key_bytes() == key_file.read_text().strip().encode()
    assert runner.invoke(app, ["ingest", "--json"]).exit_code == 0


def test_key_show_names_fingerprints_never_keys(home: Settings) -> None:
    _events(home)
    assert runner.invoke(app, ["ingest", "--json"]).exit_code == 0
    shown = runner.invoke(app, ["key", "show", "--json"])
    assert shown.exit_code == 0, shown.output
    assert orjson.loads(shown.stdout) == {"LASTMILE_HASH_KEY": fingerprint(b"test-key-not-secret"),
                                          "warehouse": {"fingerprint": fingerprint(b"test-key-not-secret"),
                                                        "first_loaded_from": "the LASTMILE_HASH_KEY environment variable"}}
    assert "test-key-not-secret" not in shown.stdout
