"""Feature store: apply, materialize -> online equals warehouse, point-in-time correctness,
the chDB kept-open client, push, Redis and `feast serve`.

ONE module-scoped warehouse: 3000 orders over 4 weeks, reference data loaded (no dbt: the
credit view is then empty, which the store must tolerate), the repository applied and
materialized once.
"""

from __future__ import annotations

from dataclasses import replace

import json
import os
import shutil
import socket
import threading
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from lastmile.config import Settings
from lastmile.features import feast_adapter
from lastmile.features.store import (
    definitions,
    feature_env,
    get_store,
    historical_features,
    materialize,
    online_features,
    online_reader,
    repo_dir,
)
from tests.feature_warehouse import build_feature_warehouse
from lastmile.warehouse import connect
from tests.warehouses import feature_home

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("features") / "home"
    with feature_home(home):
        cfg, _ = build_feature_warehouse(home, orders=3000, weeks=4)
        yield cfg


def _some_customers(cfg: Settings, n: int = 5) -> list[str]:
    return [r[0] for r in connect(cfg).rows(
        f"SELECT oneid FROM feat_customer_profile GROUP BY oneid ORDER BY max(orders_total) DESC, oneid LIMIT {n}")]


def test_repo_applies_with_every_object(fs: Settings) -> None:
    store = get_store(fs)
    assert {e.name for e in store.list_entities()} >= {"customer", "community", "locker", "sku"}
    views = {v.name for v in store.list_feature_views()}
    assert views >= {"customer_profile", "customer_credit", "spending_health", "category_affinity", "next_purchase",
                     "community_bestsellers", "locker_service", "sku_catalog", "customer_realtime", "customer_consent"}
    reco = store.get_feature_service("recommendation_v1")
    n = sum(len(p.features) for p in reco.feature_view_projections)
    assert 45 <= n <= 60, n
    assert store.get_feature_service("spending_health_v1")


def test_definitions_match_the_warehouse_tables(fs: Settings) -> None:
    w = connect(fs)
    for fv in definitions().feature_views:
        table = fv.batch_source.get_table_query_string()
        cols = {name for name, in w.rows(f"SELECT name FROM system.columns WHERE database = currentDatabase() AND table = '{table}'")}
        wanted = {f.name for f in fv.features} | set(fv.join_keys) | {"event_timestamp"}
        assert wanted <= cols, (fv.name, wanted - cols)


def test_offline_client_survives_schema_inference(fs: Settings) -> None:
    """Regression: Feast's `with get_client(...)` closed the cached chDB client ("The client has been closed")."""
    assert feast_adapter.installed()
    store = get_store(fs)
    source = store.get_feature_view("customer_profile").batch_source
    for _ in range(2):  # the `with` block that used to close the shared client
        assert ("orders_total", "Int64") in list(source.get_table_column_names_and_types(store.config))
    assert connect(fs).rows("SELECT 1") == [(1,)]
    oneid = _some_customers(fs, 1)[0]
    df = pd.DataFrame({"oneid": [oneid], "event_timestamp": [pd.Timestamp.now(tz="UTC")]})
    out = store.get_historical_features(entity_df=df, features=["customer_profile:orders_total"]).to_df()
    assert len(out) == 1


def test_materialized_online_values_equal_the_warehouse(fs: Settings) -> None:
    oneids = _some_customers(fs)
    w = connect(fs)
    got = online_features(fs, ["customer_profile:orders_total", "customer_profile:spend_total_cny",
                               "customer_profile:home_community_id", "spending_health:sh_impulse_share_28d"],
                          [{"oneid": o} for o in oneids])
    for i, oneid in enumerate(oneids):
        (orders, spend, community, impulse), = w.rows(
            "SELECT argMax(p.orders_total, p.event_timestamp), argMax(p.spend_total_cny, p.event_timestamp), "
            "argMax(p.home_community_id, p.event_timestamp), "
            "(SELECT argMax(sh_impulse_share_28d, event_timestamp) FROM feat_spending_health WHERE oneid = {o:String}) "
            "FROM feat_customer_profile AS p WHERE p.oneid = {o:String}", {"o": oneid})
        assert got["orders_total"][i] == orders
        assert got["spend_total_cny"][i] == pytest.approx(spend)
        assert got["home_community_id"][i] == community
        assert got["sh_impulse_share_28d"][i] == pytest.approx(impulse)
    # a composite key (customer x SKU) and a boolean
    (oneid, sku, purchases), = w.rows("SELECT oneid, sku, argMax(np_purchases, event_timestamp) FROM feat_customer_sku "
                                      "GROUP BY oneid, sku ORDER BY 3 DESC, 1, 2 LIMIT 1")
    got = online_features(fs, ["next_purchase:np_purchases", "sku_catalog:sku_is_healthy"], [{"oneid": oneid, "sku": sku}])
    assert got["np_purchases"] == [purchases]
    assert got["sku_is_healthy"][0] == bool(w.scalar("SELECT is_healthy FROM ref_skus WHERE sku = {s:String}", {"s": sku}))


def _service_rows(cfg: Settings, n: int = 6) -> list[dict[str, str]]:
    """Customer x community x SKU rows the services read: bought SKUs, one never bought, a
    repeated row and a customer the store has never seen."""
    rows = [{"oneid": o, "community_id": c, "sku": s} for o, c, s in connect(cfg).rows(
        "SELECT oneid, any(community_id), argMax(sku, np_purchases) FROM feat_customer_sku JOIN "
        "(SELECT oneid, argMax(home_community_id, event_timestamp) AS community_id FROM feat_customer_profile "
        f"GROUP BY oneid) AS home USING oneid GROUP BY oneid ORDER BY oneid LIMIT {n}")]
    assert len(rows) == n
    sku = connect(cfg).scalar("SELECT max(sku) FROM ref_skus")
    return rows + [dict(rows[0], sku=sku), rows[1], {"oneid": "nobody", "community_id": "C999", "sku": sku}]


def test_online_reader_reads_what_feast_reads(fs: Settings) -> None:
    """The planned reads of the serving path equal FeatureStore.get_online_features().to_dict()
    for both feature services and for references across views, found and missing values alike."""
    store = get_store(fs)
    rows = _service_rows(fs)
    for service in ("recommendation_v1", "spending_health_v1"):
        fs_obj = store.get_feature_service(service)
        keys = {c for p in fs_obj.feature_view_projections
                for c in store.get_feature_view(p.name).join_keys}
        entity_rows = [{k: r[k] for k in sorted(keys)} for r in rows]
        expected = store.get_online_features(features=fs_obj, entity_rows=entity_rows).to_dict()
        got = online_reader(fs, service).read(entity_rows)
        assert got == expected
        assert any(v is not None for v in got["orders_total"]) and got["orders_total"][-1] is None
    refs = ["next_purchase:np_purchases", "sku_catalog:sku_is_healthy", "customer_profile:home_community_id"]
    expected = store.get_online_features(features=refs, entity_rows=rows).to_dict()
    assert online_features(fs, refs, rows) == {k: expected[k] for k in ("oneid", "sku", *[r.split(":")[1] for r in refs])}
    with pytest.raises(ValueError, match="sku"):
        online_features(fs, refs, [{"oneid": rows[0]["oneid"]}])


def test_materialize_is_incremental(fs: Settings) -> None:
    again = materialize(fs)
    assert again.total_rows == 0, again.summary()


def test_fast_path_writes_the_rows_feast_writes(fs: Settings) -> None:
    """lastmile's bulk SQLite write and Feast's own materialize leave byte-identical rows
    (entity keys, Value messages, value_text, timestamps and SQLite storage types)."""
    store = get_store(fs)
    conn = feast_adapter.sqlite_connection(store)
    views = ["customer_profile", "community_bestsellers", "sku_catalog", "customer_consent"]  # int, double, str, bool

    def rows() -> dict[str, list[tuple]]:
        return {v: sorted(conn.execute(
            "SELECT entity_key, feature_name, value, value_text, event_ts, created_ts, typeof(entity_key), "
            f'typeof(value), typeof(event_ts) FROM "lastmile_{v}"').fetchall()) for v in views}

    report = materialize(fs, incremental=False, views=views)
    assert all(report.rows[v] > 0 for v in views), report.summary()
    fast = rows()
    store.materialize(start_date=datetime(2000, 1, 1, tzinfo=timezone.utc), end_date=report.end, feature_views=views)
    assert rows() == fast


def test_historical_retrieval_is_point_in_time_correct(fs: Settings) -> None:
    """A feature row stamped after the entity timestamp must never be joined (no future leakage)."""
    w = connect(fs)
    oneid = _some_customers(fs, 1)[0]
    first = w.scalar("SELECT min(event_timestamp) FROM feat_customer_profile WHERE oneid = {o:String}", {"o": oneid})
    t = pd.Timestamp(first).tz_localize("UTC") + pd.Timedelta(days=5, hours=3)
    expected = w.scalar("SELECT argMax(orders_total, event_timestamp) FROM feat_customer_profile "
                        "WHERE oneid = {o:String} AND event_timestamp <= {t:DateTime64(3, 'UTC')}",
                        {"o": oneid, "t": t.to_pydatetime()})
    # plant a sentinel one hour in the future of the entity timestamp
    w.command("INSERT INTO feat_customer_profile (oneid, event_timestamp, orders_total) "
              "VALUES ({o:String}, {t:DateTime64(3, 'UTC')}, 999999)", {"o": oneid, "t": (t + pd.Timedelta(hours=1)).to_pydatetime()})
    try:
        entity = pd.DataFrame({"oneid": [oneid] * 3,
                               "event_timestamp": [t, t + pd.Timedelta(hours=2), pd.Timestamp(first).tz_localize("UTC") - pd.Timedelta(days=1)]})
        out = historical_features(fs, ["customer_profile:orders_total"], entity).sort_values("event_timestamp")
        values = dict(zip(out["event_timestamp"], out["orders_total"]))
        assert values[t] == expected and values[t] != 999999            # the past, never the future
        assert values[t + pd.Timedelta(hours=2)] == 999999               # once it has happened, it is seen
        before = values[pd.Timestamp(first).tz_localize("UTC") - pd.Timedelta(days=1)]
        assert before is None or pd.isna(before)                         # before any row: missing, not 0
    finally:
        w.command("ALTER TABLE feat_customer_profile DELETE WHERE orders_total = 999999 SETTINGS mutations_sync = 1")


def test_push_reaches_the_online_store(fs: Settings) -> None:
    from lastmile.features.push import push

    oneid = _some_customers(fs, 1)[0]
    frame = pd.DataFrame([{"oneid": oneid, "event_timestamp": datetime.now(timezone.utc), "rt_orders_today": 3,
                           "rt_spend_today_cny": 88.5, "rt_impulse_spend_today_cny": 40.0, "rt_last_order_ts": 1_800_000_000}])
    assert push(fs, frame, offline=True) == 1
    got = online_features(fs, ["customer_realtime:rt_orders_today", "customer_realtime:rt_spend_today_cny"], [{"oneid": oneid}])
    assert got["rt_orders_today"] == [3] and got["rt_spend_today_cny"] == [88.5]
    assert connect(fs).scalar("SELECT count() FROM feat_customer_realtime WHERE oneid = {o:String}", {"o": oneid}) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(port: int, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on {port}")


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_redis_online_store(fs: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(port, 20)
        monkeypatch.setenv("LASTMILE_FEAST_ONLINE_STORE", f"redis://127.0.0.1:{port}")
        redis_fs = replace(fs, feast_online_store=f"redis://127.0.0.1:{port}")
        store = get_store(redis_fs, fresh=True)
        assert store.config.online_store.type == "redis"
        store.apply([])  # registry unchanged; makes sure the Redis infra exists
        report = materialize(redis_fs, incremental=False, views=["customer_profile", "sku_catalog", "next_purchase"])
        assert report.rows["customer_profile"] > 0 and report.rows["next_purchase"] > 0
        oneids = _some_customers(fs, 3)
        from_redis = online_features(redis_fs, ["customer_profile:orders_total", "customer_profile:home_community_id"],
                                     [{"oneid": o} for o in oneids])
        monkeypatch.delenv("LASTMILE_FEAST_ONLINE_STORE")
        from_sqlite = online_features(fs, ["customer_profile:orders_total", "customer_profile:home_community_id"],
                                      [{"oneid": o} for o in oneids])
        assert from_redis == from_sqlite
        # the serving path's reads through Redis's own online_read equal Feast's
        rows = [{"oneid": o} for o in oneids] + [{"oneid": "nobody"}]
        refs = ["customer_profile:orders_total", "customer_profile:home_community_id"]
        assert online_features(redis_fs, refs, rows) == store.get_online_features(features=refs, entity_rows=rows).to_dict()
        # forgetting a person deletes the hash of every entity key holding their OneID (alone:
        # every customer view; with a SKU: next_purchase, found by SCAN), nobody else's
        from lastmile.features.forget import forget_online

        skus = {o: [s for (s,) in connect(fs).rows("SELECT DISTINCT sku FROM feat_customer_sku WHERE oneid = {o:String}",
                                                   {"o": o})] for o in oneids[:2]}
        assert skus[oneids[0]] and skus[oneids[1]]
        np_rows = [{"oneid": o, "sku": s} for o in oneids[:2] for s in skus[o]]
        np_before = store.get_online_features(features=["next_purchase:np_purchases"], entity_rows=np_rows).to_dict()
        assert all(v is not None for v in np_before["np_purchases"])
        assert forget_online(redis_fs, [oneids[0]]) == 1 + len(skus[oneids[0]])
        after = store.get_online_features(features=refs, entity_rows=rows).to_dict()
        assert after["orders_total"][0] is None and after["orders_total"][1:3] == from_redis["orders_total"][1:3]
        np_after = store.get_online_features(features=["next_purchase:np_purchases"], entity_rows=np_rows).to_dict()
        mine = len(skus[oneids[0]])
        assert np_after["np_purchases"][:mine] == [None] * mine
        assert np_after["np_purchases"][mine:] == np_before["np_purchases"][mine:]
        assert forget_online(redis_fs, [oneids[0]]) == 0
    finally:
        proc.terminate()
        proc.wait(10)


def test_feast_serve_works_against_the_repo(fs: Settings) -> None:
    """`feast serve` in feature_store/, configured only by the environment `lastmile features env` prints."""
    port = _free_port()
    env = {**os.environ, **feature_env(fs)}
    feast = Path(sys.executable).parent / "feast"
    proc = subprocess.Popen([str(feast), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            cwd=repo_dir(), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait(port, 90)
        oneid = _some_customers(fs, 1)[0]
        body = json.dumps({"features": ["customer_profile:orders_total"], "entities": {"oneid": [oneid]}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/get-online-features", data=body,
                                     headers={"Content-Type": "application/json"})
        deadline = time.time() + 30
        while True:
            try:
                answer = json.loads(urllib.request.urlopen(req, timeout=10).read())
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        values = {name: r["values"] for name, r in zip(answer["metadata"]["feature_names"], answer["results"])}
        expected = connect(fs).scalar("SELECT argMax(orders_total, event_timestamp) FROM feat_customer_profile "
                                      "WHERE oneid = {o:String}", {"o": oneid})
        assert values["orders_total"] == [expected]
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_fast_push_writes_the_rows_feast_push_writes(fs: Settings) -> None:
    """The worker's push (bulk SQLite writer) and Feast's ``store.push`` leave byte-identical rows."""
    from lastmile.features.push import PUSH_SOURCE, RealtimePush, _conform
    from feast.data_source import PushMode

    store = get_store(fs)
    conn = feast_adapter.sqlite_connection(store)
    customers = _some_customers(fs, 3)
    frame = pd.DataFrame([{"oneid": o, "event_timestamp": pd.Timestamp("2026-11-20 08:05:07.654", tz="UTC") + pd.Timedelta(hours=i),
                           "rt_orders_today": i + 1, "rt_spend_today_cny": 12.5 * (i + 1), "rt_impulse_spend_today_cny": 0.0,
                           "rt_last_order_ts": 1_795_000_000 + i} for i, o in enumerate(customers)])

    def rows() -> list[tuple]:
        return sorted(conn.execute(
            "SELECT entity_key, feature_name, value, value_text, event_ts, created_ts, typeof(value), typeof(event_ts) "
            "FROM lastmile_customer_realtime").fetchall())

    pusher = RealtimePush(fs, connect(fs), threading.Lock())
    assert [fv.name for fv in pusher.views] == ["customer_realtime"]
    conn.execute("DELETE FROM lastmile_customer_realtime")
    assert pusher._bulk_write(_conform(frame))
    fast = rows()
    assert len(fast) == 3 * 4
    conn.execute("DELETE FROM lastmile_customer_realtime")
    store.push(PUSH_SOURCE, frame.copy(), to=PushMode.ONLINE)
    assert rows() == fast


def _a_buyer(cfg: Settings) -> tuple[str, str, str]:
    """``(id_type, raw value, OneID)`` of a buyer with online features: read from the simulated
    order events (the warehouse holds only tokens), the quietest such customer first."""
    from lastmile.privacy import Identifiers

    ids, wh = Identifiers(cfg), connect(cfg)
    quiet = dict(wh.rows("SELECT oneid, orders_total FROM feat_customer_profile ORDER BY event_timestamp"))
    best: tuple[int, str, str, str] | None = None
    for path in sorted(cfg.home.rglob("order.jsonl")):
        for line in path.read_text().splitlines()[:400]:
            try:
                buyer = json.loads(line).get("buyer") or {}
            except json.JSONDecodeError:
                continue  # the simulator's deliberately broken lines
            for id_type in ("openid", "phone"):
                if buyer.get(id_type):
                    token = ids.token(id_type, buyer[id_type])
                    found = wh.rows("SELECT oneid FROM identity_nodes FINAL WHERE token = {t:String} AND oneid != ''",
                                    {"t": token})
                    if found and found[0][0] in quiet and (best is None or quiet[found[0][0]] < best[0]):
                        best = (quiet[found[0][0]], id_type, buyer[id_type], found[0][0])
                    break
    assert best is not None, "no simulated buyer has online features"
    return best[1], best[2], best[3]


def test_forget_removes_the_person_from_the_feature_store(fs: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """`lastmile forget` reaches the feature store: the person's online rows (materialized and
    pushed) and every feat_* row keyed by their OneID are gone; everybody else is untouched.
    Last in this module: it changes the shared warehouse."""
    from typer.testing import CliRunner

    from lastmile.cli import app
    from lastmile.features.push import push
    from lastmile.identity.forget import oneid_columns

    monkeypatch.setenv("LASTMILE_HOME", str(fs.home))
    id_type, value, oneid = _a_buyer(fs)
    other = next(o for o in _some_customers(fs, 2) if o != oneid)
    push(fs, pd.DataFrame([{"oneid": o, "event_timestamp": datetime.now(timezone.utc), "rt_orders_today": 2,
                            "rt_spend_today_cny": 30.0, "rt_impulse_spend_today_cny": 0.0, "rt_last_order_ts": 1_800_000_000}
                           for o in (oneid, other)]), offline=True)
    refs = ["customer_profile:orders_total", "customer_realtime:rt_orders_today"]
    rows = [{"oneid": oneid}, {"oneid": other}]
    before = online_features(fs, refs, rows)
    assert before["orders_total"][0] is not None and before["rt_orders_today"] == [2, 2]
    # next_purchase is keyed by OneID and SKU: the person's SKUs, and the other customer's
    w = connect(fs)
    sku_rows = [{"oneid": o, "sku": s} for o in (oneid, other) for (s,) in w.rows(
        "SELECT DISTINCT sku FROM feat_customer_sku WHERE oneid = {o:String} ORDER BY sku LIMIT 5", {"o": o})]
    assert {r["oneid"] for r in sku_rows} == {oneid, other}
    np_refs = ["next_purchase:np_purchases", "sku_catalog:sku_category"]
    np_before = get_store(fs).get_online_features(features=np_refs, entity_rows=sku_rows).to_dict()
    assert all(v is not None for v in np_before["np_purchases"])
    online_files = [p for p in (fs.home / "feast").glob("online.db*") if p.stat().st_size]
    assert any(oneid.encode() in p.read_bytes() for p in online_files)
    wh = connect(fs)
    tables = [t for t, c, *_ in oneid_columns(wh) if c == "oneid" and t.startswith("feat_")]
    assert {"feat_customer_profile", "feat_customer_realtime"} <= set(tables)

    result = CliRunner().invoke(app, ["forget", f"--{id_type.replace('_', '-')}", value, "--json"])
    assert result.exit_code == 0, result.output
    touched = json.loads(result.stdout)["touched"]
    assert touched["online_store"] >= 2 and touched["feat_customer_profile"] >= 1 and touched["feat_customer_realtime"] == 1

    store = get_store(fs)
    for read in (online_features(fs, refs, rows), store.get_online_features(features=refs, entity_rows=rows).to_dict()):
        assert read["orders_total"][0] is None and read["rt_orders_today"][0] is None  # the person: gone
        assert read["orders_total"][1] == before["orders_total"][1] and read["rt_orders_today"][1] == 2  # the rest: kept
    np_after = store.get_online_features(features=np_refs, entity_rows=sku_rows).to_dict()
    for i, row in enumerate(sku_rows):
        if row["oneid"] == oneid:
            assert np_after["np_purchases"][i] is None  # every (OneID, SKU) row of the person: gone
        else:
            assert np_after["np_purchases"][i] == np_before["np_purchases"][i]
    assert np_after["sku_category"] == np_before["sku_category"]  # views not about people: unchanged
    # and not a byte of the OneID is left in the online store's files (free pages, WAL)
    assert not [p.name for p in (fs.home / "feast").glob("online.db*") if oneid.encode() in p.read_bytes()]
    for table in tables:
        assert wh.scalar(f"SELECT count() FROM {table} WHERE oneid = {{o:String}}", {"o": oneid}) == 0, table
    assert wh.scalar("SELECT count() FROM feat_customer_realtime WHERE oneid = {o:String}", {"o": other}) >= 1
    again = json.loads(CliRunner().invoke(app, ["forget", f"--{id_type.replace('_', '-')}", value, "--json"]).stdout)
    assert not any(again["touched"].values())  # idempotent: nothing left to touch
