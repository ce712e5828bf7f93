"""Changing the hash key: `lastmile key rotate` rebuilds a fresh warehouse from the raw events
under the new key, leaves the old one as it was, and never brings a forgotten person back.
Also: the stream worker refuses a key that is not its warehouse's, as ingest does."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from lastmile.cli import app
from lastmile.config import Settings, settings
from lastmile.contracts import contracts
from lastmile.identity.identifiers import IdentifierHasher, normalize
from lastmile.identity.key_fingerprint import fingerprint
from lastmile.simulator import SimulationConfig, simulate
from lastmile.warehouse import Warehouse, close_all, connect
from lastmile.warehouse.tables import columns_for

runner = CliRunner()
OLD_KEY = b"test-key-not-secret"  # the `home` fixture's


def _simulated(home: Settings) -> Settings:
    simulate(SimulationConfig(seed=5, orders=300, weeks=1, telemetry_every_s=3600), home.home)
    done = runner.invoke(app, ["ingest", "--json"])
    assert done.exit_code == 0, done.output
    return settings()


def _target(home: Settings, new_home: Path) -> tuple[list[str], Settings]:
    """CLI arguments naming the target, and its settings (the key comes from its hash.key)."""
    if home.embedded:
        return ["--to-home", str(new_home)], replace(home, home=new_home, hash_key="")
    database = f"{home.clickhouse_database}_{new_home.name}"
    return ["--to-home", str(new_home), "--to-database", database], replace(home, home=new_home, hash_key="",
                                                                            clickhouse_database=database)


@pytest.fixture(autouse=True)
def _drop_target_databases(home: Settings) -> Iterator[None]:
    """On a server, the targets are databases beside the test's own: dropped with it."""
    yield
    if not home.embedded:
        w = _open(home)
        for (name,) in w.rows("SELECT name FROM system.databases WHERE startsWith(name, {p:String})",
                              {"p": home.clickhouse_database + "_"}):
            w.command(f"DROP DATABASE IF EXISTS `{name}`")


def _open(cfg: Settings) -> Warehouse:
    close_all()
    return connect(cfg)


def _state(w: Warehouse) -> dict[str, object]:
    """What a rotation must carry over (counts) or must change (tokens, OneIDs, fingerprint)."""
    present = set(w.tables())
    pii = {c.table: [col.name for col in columns_for(c) if col.kind == "pii"] for c in contracts().values()}
    return {
        "events": {t: w.count(t) for t in pii if t in present},
        "profiles": w.scalar("SELECT uniqExact(oneid) FROM identity_nodes FINAL WHERE oneid != ''"),
        "tokens": {t for (t,) in w.rows("SELECT token FROM identity_nodes FINAL")},
        "oneids": {o for (o,) in w.rows("SELECT DISTINCT oneid FROM identity_nodes FINAL WHERE oneid != ''")},
        "event_tokens": {v for t, cols in pii.items() for c in cols
                         for (v,) in w.rows(f"SELECT DISTINCT {c} FROM {t} FINAL WHERE {c} IS NOT NULL")},
        "fingerprint": w.rows("SELECT value FROM lastmile_settings FINAL"),
        "forgotten": {t for (t,) in w.rows("SELECT token FROM identity_forgotten FINAL")} if "identity_forgotten" in present else set(),
    }


def _files(home: Path) -> dict[str, str]:
    return {str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
            for sub in ("events", "reference", "truth") for p in sorted((home / sub).glob("*.jsonl"))}


def _a_phone(events: Path) -> str:
    for line in (events / "order.jsonl").read_bytes().splitlines():
        try:
            phone = orjson.loads(line).get("buyer", {}).get("phone")
        except orjson.JSONDecodeError:
            continue
        if isinstance(phone, str) and normalize("phone", phone):
            return phone
    raise AssertionError("the simulation has no order with a phone")


def test_rotation_rebuilds_every_event_and_profile_under_the_new_key(home: Settings, tmp_path: Path) -> None:
    cfg = _simulated(home)
    old_w = connect(cfg)
    declared = sorted(_state(old_w)["oneids"])[:3]  # type: ignore[index]
    declarations = cfg.home / "reference" / "dietary_declarations.jsonl"
    declarations.write_bytes(b"".join(orjson.dumps({"oneid": o, "dietary_need": True, "declared_at": "2026-01-01T00:00:00+00:00",
                                                    "source": "health_form"}) + b"\n" for o in declared))
    assert runner.invoke(app, ["consent", str(declarations)]).exit_code == 0
    old = _state(connect(cfg))
    old_files = _files(cfg.home)
    close_all()

    args, new_cfg = _target(home, tmp_path / "new")
    done = runner.invoke(app, ["key", "rotate", *args, "--json"])
    assert done.exit_code == 0, done.output
    report = orjson.loads(done.stdout.strip().splitlines()[-1])
    new_key = (tmp_path / "new" / "hash.key").read_text().strip().encode()
    assert report["complete"] and report["new"]["fingerprint"] == fingerprint(new_key) != fingerprint(OLD_KEY)
    assert "lastmile transform --full-refresh" in report["next"] and f"export LASTMILE_HOME={tmp_path / 'new'}" in report["next"]

    new = _state(_open(new_cfg))
    assert new["events"] == old["events"] and sum(new["events"].values()) > 1000  # type: ignore[union-attr]
    assert new["profiles"] == old["profiles"] > 100
    assert len(new["tokens"]) == len(old["tokens"]) and not new["tokens"] & old["tokens"]  # type: ignore[operator]
    assert not new["oneids"] & old["oneids"] and not new["event_tokens"] & old["event_tokens"]  # type: ignore[operator]
    assert new["fingerprint"] == [(fingerprint(new_key),)]

    # a profile is the same person under both keys: its phone's token names it in each warehouse
    phone = normalize("phone", _a_phone(cfg.events_dir))
    assert phone is not None
    old_token, new_token = IdentifierHasher(OLD_KEY).token("phone", phone), IdentifierHasher(new_key).token("phone", phone)
    assert old_token in old["tokens"] and new_token in new["tokens"]  # type: ignore[operator]

    # declarations keyed by OneID follow their people to the new OneIDs (file and table)
    moved = [orjson.loads(line)["oneid"] for line in (tmp_path / "new" / "reference" / "dietary_declarations.jsonl").read_bytes().splitlines()]
    assert len(moved) == 3 and set(moved) <= new["oneids"]  # type: ignore[operator]
    assert sorted(o for (o,) in _open(new_cfg).rows("SELECT oneid FROM ref_dietary_declarations FINAL")) == sorted(moved)

    # the old warehouse and data directory are as they were
    assert _state(_open(cfg)) == old and _files(cfg.home) == old_files

    # twice: nothing counted twice
    close_all()
    again = runner.invoke(app, ["key", "rotate", *args, "--json"])
    assert again.exit_code == 0, again.output
    assert _state(_open(new_cfg)) == new

    # a target built under yet another key is refused, and so is the old key itself
    third = tmp_path / "third.key"
    third.write_text("a-third-key")
    close_all()
    refused = runner.invoke(app, ["key", "rotate", *args, "--new-key-file", str(third)])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    text = " ".join(refused.output.split())
    assert fingerprint(b"a-third-key") in text and fingerprint(new_key) in text, text
    same = tmp_path / "same.key"
    same.write_bytes(OLD_KEY)
    refused = runner.invoke(app, ["key", "rotate", *_target(home, tmp_path / "other")[0], "--new-key-file", str(same)])
    assert refused.exit_code == 2 and "the warehouse's own key" in " ".join(refused.output.split())
    assert _state(_open(new_cfg)) == new


def test_a_forgotten_person_does_not_come_back(home: Settings, tmp_path: Path) -> None:
    cfg = _simulated(home)
    phone = _a_phone(cfg.events_dir)
    # a copy of the raw files made before the person asked to be forgotten (a backup, an export)
    backup = tmp_path / "backup"
    backup.mkdir()
    for path in cfg.events_dir.glob("*.jsonl"):
        (backup / path.name).write_bytes(path.read_bytes())
    forgot = runner.invoke(app, ["forget", "--phone", phone, "--json"])
    assert forgot.exit_code == 0, forgot.output
    close_all()

    args, new_cfg = _target(home, tmp_path / "new")
    refused = runner.invoke(app, ["key", "rotate", *args, "--events", str(backup)])
    assert refused.exit_code == 2, refused.output
    text = " ".join(refused.output.split())
    assert "forgotten" in text and "--drop-forgotten" in text and "order.jsonl" in text and "Traceback" not in text, text
    assert not (tmp_path / "new" / "events").exists(), "nothing was staged"

    done = runner.invoke(app, ["key", "rotate", *args, "--events", str(backup), "--drop-forgotten", "--json"])
    assert done.exit_code == 0, done.output
    report = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert report["forgotten"]["raw_lines_dropped"] > 0 and report["forgotten"]["suppression_carried"] >= 1
    assert report["forgotten"]["resurrected"] == 0
    new_key = (tmp_path / "new" / "hash.key").read_text().strip().encode()
    token = IdentifierHasher(new_key).token("phone", normalize("phone", phone) or "")
    new = _state(_open(new_cfg))
    assert token not in new["tokens"] and token in new["forgotten"]  # type: ignore[operator]
    assert token not in new["event_tokens"]  # type: ignore[operator]
    staged = b"".join(p.read_bytes() for p in (tmp_path / "new" / "events").glob("*.jsonl"))
    assert phone.encode() not in staged, "the new data directory's copies no longer name them"
    assert phone.encode() in (backup / "order.jsonl").read_bytes(), "the given files are only read"

    # from the data directory forget cleaned, nothing needs dropping and they stay gone
    # (the new key given as a file, as from a secret store: it is not written into the new directory)
    close_all()
    key_file = tmp_path / "secret-store.key"
    key_file.write_text("the-new-key")
    clean_args, clean_cfg = _target(home, tmp_path / "clean")
    clean = runner.invoke(app, ["key", "rotate", *clean_args, "--new-key-file", str(key_file), "--json"])
    assert clean.exit_code == 0, clean.output
    report = orjson.loads(clean.stdout.strip().splitlines()[-1])
    assert report["forgotten"]["raw_lines_dropped"] == 0 and report["new"]["fingerprint"] == fingerprint(b"the-new-key")
    assert not (tmp_path / "clean" / "hash.key").exists()
    assert "export LASTMILE_HASH_KEY=<the new key from your secret store>" in report["next"]
    clean_token = IdentifierHasher(b"the-new-key").token("phone", normalize("phone", phone) or "")
    assert clean_token not in _state(_open(replace(clean_cfg, hash_key="the-new-key")))["tokens"]  # type: ignore[operator]

    # that directory's warehouse belongs to that key: another one is refused, naming both
    close_all()
    key_file.write_text("yet-another-key")
    refused = runner.invoke(app, ["key", "rotate", *clean_args, "--new-key-file", str(key_file)])
    assert refused.exit_code == 2, refused.output
    text = " ".join(refused.output.split())
    assert "already holds a warehouse" in text and fingerprint(b"the-new-key") in text and fingerprint(b"yet-another-key") in text


def test_the_stream_worker_refuses_another_key_before_it_needs_a_broker(home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    _simulated(home)
    close_all()
    monkeypatch.setenv("LASTMILE_HASH_KEY", "another-key")
    monkeypatch.setenv("LASTMILE_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nothing listens: the key must be refused first
    refused = runner.invoke(app, ["stream"])
    assert refused.exit_code == 2, (refused.output, refused.exception)
    text = " ".join(refused.output.split())
    assert fingerprint(b"another-key") in text and fingerprint(OLD_KEY) in text and "fresh warehouse" in text, text
    assert "Traceback" not in refused.output
