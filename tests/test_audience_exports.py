"""A group leader's export: their building's neighbours, consented only, a keyed hash by default.

People and their consent are ingested as consent events (the contract, hashing and OneID of
the batch path); the traits table is written by hand so each person's home building is known.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lastmile.audiences import load_audience, refresh
from lastmile.audiences.contact_rules import ContactRules
from lastmile.audiences.exports import ExportRefused, LeaderExport, leader_key, leader_rows, pseudonym
from lastmile.cli import app
from lastmile.config import Settings
from lastmile.warehouse import Warehouse
from tests.test_audiences import audience
from tests.test_contact_rules import NOON, _openid, consent, consenting, ingest
from tests.warehouses import empty_embedded_warehouse

runner = CliRunner()


@pytest.fixture(scope="module")
def town(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Warehouse, dict[str, str], Path]]:
    """Leader L1 runs building B1, leader L2 building B2; an audience of everyone, refreshed.

    People: ``granted`` (B1, marketing on wecom_leader), ``withdraws`` (B1, granted then
    withdrawn before each export as the test says), ``other_building`` (B2, granted),
    ``unconsented`` (B1, consent on another channel only), ``personalised`` (B1, marketing and
    personalised_recommendation on wecom_leader).
    """
    base = tmp_path_factory.mktemp("exports")
    with empty_embedded_warehouse(base / "home") as (cfg, store):
        people = {
            "granted": consenting(cfg, store, channel="wecom_leader"),
            "withdraws": consenting(cfg, store, channel="wecom_leader"),
            "other_building": consenting(cfg, store, channel="all"),
            "unconsented": consenting(cfg, store, channel="sms"),
            "personalised": consenting(cfg, store, purposes=("marketing", "personalised_recommendation"), channel="wecom_leader"),
        }
        store.command("CREATE TABLE audience_traits (oneid String, home_building_id Nullable(String), credit_tier String) "
                      "ENGINE = MergeTree ORDER BY oneid")
        store.insert_rows("audience_traits", [(o, "B2" if k == "other_building" else "B1", "gold") for k, o in people.items()],
                          ["oneid", "home_building_id", "credit_tier"])
        store.command("CREATE TABLE ref_leaders (leader_id String, building_id String, community_id String) ENGINE = MergeTree ORDER BY leader_id")
        store.insert_rows("ref_leaders", [("L1", "B1", "C1"), ("L2", "B2", "C1")], ["leader_id", "building_id", "community_id"])
        store.command("CREATE TABLE ref_buildings (building_id String, name String) ENGINE = MergeTree ORDER BY building_id")
        store.insert_rows("ref_buildings", [("B1", "Block 1"), ("B2", "Block 2")], ["building_id", "name"])
        folder = base / "audiences"
        folder.mkdir()
        audience(folder, "gold", "rule: {trait: credit_tier, op: '=', value: gold}\n")
        assert refresh(store, load_audience(folder / "gold.yml")).size == 5
        yield cfg, store, people, folder


def _ids(store: Warehouse, cfg: Settings, export: LeaderExport, rules: ContactRules = ContactRules()) -> list[dict]:
    return list(leader_rows(store, export, cfg.hash_key_bytes(), rules))


def test_only_the_leaders_consented_neighbours_each_as_a_keyed_hash(town) -> None:
    cfg, store, people, _ = town
    rows = _ids(store, cfg, LeaderExport("gold", "L1"))
    key = leader_key(cfg.hash_key_bytes(), "L1")
    by_id = {pseudonym(key, oneid): name for name, oneid in people.items()}
    assert sorted(by_id[r["id"]] for r in rows) == ["granted", "personalised", "withdraws"]
    assert {r["id_kind"] for r in rows} == {"keyed_hash"} and {r["building_id"] for r in rows} == {"B1"}
    assert not {r["id"] for r in rows} & set(people.values())  # no OneID leaves by default
    # the other leader's file: their own neighbour, under another pseudonym
    (theirs,) = _ids(store, cfg, LeaderExport("gold", "L2"))
    assert theirs["id"] == pseudonym(leader_key(cfg.hash_key_bytes(), "L2"), people["other_building"]) not in by_id


def test_a_withdrawal_removes_the_person_from_the_next_export(town) -> None:
    cfg, store, people, _ = town
    export = LeaderExport("gold", "L1")
    key = leader_key(cfg.hash_key_bytes(), "L1")
    assert pseudonym(key, people["withdraws"]) in {r["id"] for r in _ids(store, cfg, export)}
    ingest(cfg, [consent(_openid[people["withdraws"]], NOON - timedelta(days=1), False, channel="wecom_leader")])
    after = {r["id"] for r in _ids(store, cfg, export)}
    assert pseudonym(key, people["withdraws"]) not in after
    assert after == {pseudonym(key, people["granted"]), pseudonym(key, people["personalised"])}


def test_oneids_in_the_clear_only_where_configuration_and_consent_allow(town) -> None:
    cfg, store, people, _ = town
    clear = LeaderExport("gold", "L1", identifiers="oneid")
    with pytest.raises(ExportRefused, match="clear_identifiers"):
        _ids(store, cfg, clear)
    rows = _ids(store, cfg, clear, ContactRules(clear_identifiers=True))
    in_clear = {r["id"] for r in rows if r["id_kind"] == "oneid"}
    assert in_clear == {people["personalised"]}  # the only one who granted personalised_recommendation too
    assert people["granted"] not in {r["id"] for r in rows} and len(rows) >= 2


def test_cli_leader_export_and_its_errors(town, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, store, people, folder = town
    monkeypatch.setenv("LASTMILE_AUDIENCES_DIR", str(folder))
    out = tmp_path / "l2.jsonl"
    result = runner.invoke(app, ["audience", "export", "gold", "--leader", "L2", "--format", "jsonl", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert set(row) == {"id", "id_kind", "building_id", "entered_at", "version"} and row["building_id"] == "B2"
    unknown = runner.invoke(app, ["audience", "export", "gold", "--leader", "L9"])
    assert unknown.exit_code != 0 and "L9" in unknown.output and "Traceback" not in unknown.output
    stray = runner.invoke(app, ["audience", "export", "gold", "--identifiers", "oneid"])
    assert stray.exit_code != 0 and "--leader" in stray.output
