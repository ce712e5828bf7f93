"""`lastmile forget` leaves nothing: no table (deleted masks included) and no file under the data
directory still holds the person's raw values, tokens or OneID - and everybody else stays."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import orjson
from typer.testing import CliRunner

from lastmile.cli import app
from lastmile.config import Settings
from lastmile.privacy import Identifiers
from lastmile.warehouse import close_all, connect
from tests.factories import event

runner = CliRunner()

OPENID, UNIONID, PHONE, TYPED_PHONE = "oA7x-person-0077", "uW-person-0077", "19812345678", "+86 198-1234-5678"
OTHER_OPENID, OTHER_PHONE = "oB9z-neighbour-0042", "13711112222"


def _write(path: Path, events: list[dict] | list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join((e if isinstance(e, bytes) else orjson.dumps(e)) + b"\n" for e in events))


def _oneid(token: str) -> str:
    return connect().scalar("SELECT oneid FROM identity_nodes FINAL WHERE token = {t:String}", {"t": token})


def _everything_holding(home: Path, needles: list[str]) -> list[str]:
    """Independent of the command's own check: every table with deleted masks off, every file as bytes."""
    wh = connect()
    found = []
    for (table,) in wh.rows("SELECT name FROM system.tables WHERE database = currentDatabase() AND engine LIKE '%MergeTree'"):
        if table == "identity_forgotten":
            continue  # the suppression list keeps tokens by design (checked below)
        n = wh.scalar(f"SELECT count() FROM `{table}` WHERE multiSearchAny(toString(tuple(*)), {{n:Array(String)}}) "
                      "SETTINGS apply_deleted_mask = 0", {"n": needles})
        if n:
            found.append(f"table {table}: {n}")
    suppression = [Path(p).resolve() for (paths,) in wh.rows(
        "SELECT data_paths FROM system.tables WHERE database = currentDatabase() AND name = 'identity_forgotten'") for p in paths]
    for root, dirs, files in os.walk(home):
        dirs[:] = [d for d in dirs if Path(root, d).resolve() not in suppression]
        for name in files:
            data = (Path(root) / name).read_bytes()
            found += [f"file {Path(root, name).relative_to(home)}: {n}" for n in needles if n.encode() in data]
    return found


def test_forget_leaves_no_trace_in_any_table_or_file(home: Settings) -> None:
    mine = [event("order", order_id="ord-1", occurred_at="2026-11-02T10:00:00+08:00",
                  buyer={"openid": OPENID, "unionid": UNIONID}),
            event("pickup", order_id="ord-1", occurred_at="2026-11-02T18:00:00+08:00", collector={"phone": TYPED_PHONE}),
            event("identify", occurred_at="2026-11-03T09:00:00+08:00", reason="bind_phone",
                  identifiers={"openid": OPENID, "phone": PHONE})]
    other = [event("order", order_id="ord-2", occurred_at="2026-11-02T11:00:00+08:00",
                   buyer={"openid": OTHER_OPENID, "phone": OTHER_PHONE})]
    events = home.home / "events"
    by_type: dict[str, list[dict]] = {}
    for e in mine + other:
        by_type.setdefault(e["event_type"], []).append(e)
    for event_type, rows in by_type.items():
        _write(events / f"{event_type}.jsonl", rows)
    # quarantined: a broken line with the phone as typed elsewhere, and a contract breach naming the unionid
    _write(events / "broken.jsonl", [b'{"event_type": "order", "buyer": {"phone": "' + TYPED_PHONE.encode() + b'", "openid": 1',
                                     orjson.dumps({"event_type": "review", "reviewer": {"unionid": UNIONID}})])
    assert runner.invoke(app, ["ingest", "--json"]).exit_code == 0
    ids = Identifiers(home)
    tokens = [ids.token("openid", OPENID), ids.token("unionid", UNIONID), ids.token("phone", PHONE)]
    oneid, other_oneid = _oneid(tokens[0]), _oneid(ids.token("openid", OTHER_OPENID))
    assert oneid and oneid == _oneid(tokens[1]) == _oneid(tokens[2]) != other_oneid
    assert connect().scalar("SELECT count() FROM quarantine WHERE position(payload, 'person-0077') > 0 "
                            "OR position(payload, '198-1234') > 0") == 2
    # health data keyed by OneID, and a saved recommender holding a factor row per OneID
    _write(home.home / "reference" / "dietary_declarations.jsonl",
           [{"oneid": o, "dietary_need": True, "declared_at": "2026-01-01T00:00:00+00:00", "source": "form"}
            for o in (oneid, other_oneid)])
    assert runner.invoke(app, ["consent", str(home.home / "reference" / "dietary_declarations.jsonl")]).exit_code == 0
    model = home.home / "models" / "recommender"
    model.mkdir(parents=True)
    (model / "model.json").write_text(json.dumps({"users": {oneid: 0, other_oneid: 1}, "items": ["SKU-1"]}))
    np.savez_compressed(model / "factors.npz", user_factors=np.array([[1.0, 2.0], [3.0, 4.0]]), item_factors=np.ones((1, 2)))
    close_all()

    result = runner.invoke(app, ["forget", "--phone", PHONE, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["verification"]["clean"] and out["verification"]["traces"] == []
    assert out["touched"]["quarantine"] == 2 and out["touched"]["recommender_model"] == 1

    needles = [OPENID, UNIONID, PHONE, TYPED_PHONE, "+86" + PHONE, *tokens, oneid]
    assert _everything_holding(home.home, needles) == []
    assert connect().scalar("SELECT count() FROM identity_forgotten FINAL WHERE token IN {t:Array(String)}", {"t": tokens}) == 3

    # everybody else, and the business facts, stay
    wh = connect()
    assert wh.scalar("SELECT count() FROM raw_order FINAL") == 2
    assert wh.scalar("SELECT count() FROM raw_order FINAL WHERE buyer_phone = {t:String}", {"t": ids.token("phone", OTHER_PHONE)}) == 1
    assert wh.scalar("SELECT count() FROM ref_dietary_declarations WHERE oneid = {o:String}", {"o": other_oneid}) == 1
    saved = json.loads((model / "model.json").read_text())
    assert saved["users"] == {other_oneid: 0}
    assert np.load(model / "factors.npz")["user_factors"].tolist() == [[3.0, 4.0]]
    kept = [orjson.loads(line) for line in (home.home / "events" / "order.jsonl").read_bytes().splitlines()]
    assert len(kept) == 2 and kept[0]["buyer"] == {"openid": None, "unionid": None}, "the order stays, without its buyer"
    assert OTHER_OPENID.encode() in (home.home / "events" / "order.jsonl").read_bytes()

    # a replay of the cleaned files brings nobody back, and a second request finds nothing and stays clean
    close_all()
    assert runner.invoke(app, ["ingest", "--json"]).exit_code == 0
    again = runner.invoke(app, ["forget", "--openid", OPENID, "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["verification"]["clean"]
    assert _everything_holding(home.home, needles) == []

