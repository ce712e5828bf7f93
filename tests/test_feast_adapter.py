"""lastmile.features.feast_adapter against the installed Feast: every reach-in it relies on.

The adapter was written for one Feast release. These tests pin it: the version, each private
attribute and function it calls (present, with the parameters it passes), and the SQLite row
layout it writes and reads by hand - rows written by Feast's own online write read back
through the adapter and the other way round, byte for byte. Then forgetting a person: their
rows leave every view keyed by their OneID (alone or with a SKU) and their bytes leave the
SQLite file. A small Feast repository on local files; no warehouse, no engine.
"""

from __future__ import annotations

import inspect
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from lastmile.features import feast_adapter

PROJECT = "adaptercheck"
PEOPLE = ["oid_000000000000000000a1", "oid_000000000000000000b2", "oid_000000000000000000c3"]
SKUS = ["SK0001", "SK0002", "SK0003"]
NOW = datetime(2026, 11, 20, 8, 30, 5, tzinfo=timezone.utc)


def _recheck(what: str) -> str:
    return (f"Feast {feast_adapter.installed_version()} installed, adapter written for {feast_adapter.WRITTEN_FOR}: "
            f"re-check {what} (lastmile/features/feast_adapter.py lists every reach-in and why)")


def test_installed_feast_is_the_release_the_adapter_was_written_for() -> None:
    assert feast_adapter.installed_version() == feast_adapter.WRITTEN_FOR, _recheck(
        "every reach-in, then set WRITTEN_FOR")


def _parameters(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def test_private_api_the_adapter_calls_is_there() -> None:
    """Each private name the adapter uses exists and takes the arguments it passes."""
    from feast import FeatureStore
    from feast.infra.key_encoding_utils import deserialize_entity_key
    from feast.infra.online_stores import sqlite as feast_sqlite
    from feast.infra.online_stores.online_store import OnlineStore
    from feast.infra.online_stores.redis import RedisOnlineStore
    from feast.infra.passthrough_provider import PassthroughProvider

    assert isinstance(inspect.getattr_static(FeatureStore, "provider"), property), _recheck("FeatureStore.provider")
    assert isinstance(inspect.getattr_static(PassthroughProvider, "online_store"), property), _recheck(
        "PassthroughProvider.online_store")
    assert _parameters(feast_sqlite.SqliteOnlineStore._get_conn) == ["config"], _recheck("SqliteOnlineStore._get_conn")
    assert _parameters(feast_sqlite._table_id) == ["project", "table", "enable_versioning"], _recheck(
        "feast.infra.online_stores.sqlite._table_id")
    assert _parameters(RedisOnlineStore._get_client) == ["online_store_config"], _recheck("RedisOnlineStore._get_client")
    assert _parameters(deserialize_entity_key)[:2] == ["serialized_entity_key", "entity_key_serialization_version"]
    assert _parameters(OnlineStore.online_write_batch) == ["config", "table", "data", "progress"], _recheck(
        "OnlineStore.online_write_batch")
    assert _parameters(OnlineStore.update) == ["config", "tables_to_delete", "tables_to_keep", "entities_to_delete",
                                               "entities_to_keep", "partial"], _recheck("OnlineStore.update")


def test_redis_key_layout_is_feasts() -> None:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    key = EntityKey(join_keys=["sku", "oneid"], entity_values=[Value(string_val="SK0001"), Value(string_val=PEOPLE[0])])
    assert feast_adapter.redis_key(PROJECT, serialize_entity_key(key, 3)) == _redis_key(PROJECT, key, 3), _recheck(
        "the Redis hash name (serialized entity key + project)")
    assert feast_adapter.entity_key_bytes(["oneid", "sku"], [PEOPLE[0], "SK0001"]) == serialize_entity_key(key, 3)
    assert feast_adapter.entity_values(serialize_entity_key(key, 3)) == {"oneid": PEOPLE[0], "sku": "SK0001"}


def test_offline_store_patch_reaches_every_get_client() -> None:
    """The kept-open client replaces ``get_client`` wherever Feast's ClickHouse code looks it up,
    and the adapter's retrieval job overrides methods the base job still has."""
    import importlib

    feast_adapter.install()
    assert feast_adapter.installed()
    for name in feast_adapter.PATCHED_MODULES:
        assert "get_client(" in inspect.getsource(importlib.import_module(name)), _recheck(f"get_client in {name}")
    from feast.infra.offline_stores.contrib.clickhouse_offline_store.clickhouse import ClickhouseRetrievalJob

    for method in ("_to_arrow_internal", "_to_df_internal"):
        assert _parameters(getattr(ClickhouseRetrievalJob, method)) == ["timeout"], _recheck(f"ClickhouseRetrievalJob.{method}")
    assert _parameters(ClickhouseRetrievalJob.__init__)[:5] == [
        "query", "config", "full_feature_names", "on_demand_feature_views", "metadata"], _recheck("ClickhouseRetrievalJob()")
    config_class = getattr(importlib.import_module("lastmile.features.feast_adapter"), "LastmileClickhouseOfflineStoreConfig")
    assert config_class(host="h", database="d", user="u", password="p").type == feast_adapter.OFFLINE_STORE_TYPE


# -- a small local repository with a SQLite online store -----------------------------------------


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[object]:
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.repo_config import RepoConfig
    from feast.types import Bool, Float64, Int64, String

    config = RepoConfig(project=PROJECT, provider="local", registry=str(tmp_path / "registry.db"),
                        offline_store={"type": "file"}, online_store={"type": "sqlite", "path": str(tmp_path / "online.db")},
                        entity_key_serialization_version=3)
    fs = FeatureStore(repo_path=str(tmp_path), config=config)
    customer = Entity(name="customer", join_keys=["oneid"], value_type=ValueType.STRING)
    sku = Entity(name="sku", join_keys=["sku"], value_type=ValueType.STRING)

    def source(name: str) -> FileSource:
        return FileSource(name=name, path=str(tmp_path / f"{name}.parquet"), timestamp_field="event_timestamp")

    views = [
        FeatureView(name="profile", entities=[customer], ttl=timedelta(days=0), source=source("profile"),
                    schema=[Field(name="orders", dtype=Int64), Field(name="spend", dtype=Float64),
                            Field(name="home", dtype=String), Field(name="vip", dtype=Bool)]),
        FeatureView(name="next_purchase", entities=[customer, sku], ttl=timedelta(days=0), source=source("next_purchase"),
                    schema=[Field(name="np_purchases", dtype=Int64), Field(name="np_interval", dtype=Float64)]),
        FeatureView(name="catalog", entities=[sku], ttl=timedelta(days=0), source=source("catalog"),
                    schema=[Field(name="category", dtype=String)]),
    ]
    fs.apply([customer, sku, *views])
    conn = feast_adapter.sqlite_connection(fs)
    assert conn is not None
    feast_adapter.tune_connection(conn)
    yield fs
    conn.close()


def _profile_frame(orders: int = 3) -> pd.DataFrame:
    return pd.DataFrame({"oneid": PEOPLE, "orders": [orders, 7, 0], "spend": [88.5, 1e-7, 12.0],
                         "home": ["翠苑一区", "C02", ""], "vip": [True, False, True],
                         "event_timestamp": [NOW] * 3})


def _next_purchase_frame(purchases: int = 2) -> pd.DataFrame:
    rows = [{"oneid": o, "sku": s, "np_purchases": purchases + i, "np_interval": 6.5 + j}
            for i, o in enumerate(PEOPLE) for j, s in enumerate(SKUS)]
    return pd.DataFrame(rows).assign(event_timestamp=NOW)


def _arrow(frame: pd.DataFrame) -> pa.Table:
    """A frame as the adapter's bulk writer takes it: event times as epoch seconds."""
    seconds = [int(t.timestamp()) for t in frame["event_timestamp"]]
    return pa.Table.from_pandas(frame.drop(columns="event_timestamp"), preserve_index=False).append_column(
        "_event_ts_s", pa.array(seconds, pa.int64()))


def _rows(store, view: str) -> list[tuple]:
    conn = feast_adapter.sqlite_connection(store)
    return sorted(conn.execute(
        "SELECT entity_key, feature_name, value, value_text, event_ts, created_ts, typeof(entity_key), typeof(value), "
        f"typeof(event_ts) FROM {PROJECT}_{view}").fetchall())


def _feast_reads(store, refs: list[str], rows: list[dict]) -> dict[str, list]:
    return store.get_online_features(features=refs, entity_rows=rows).to_dict()


def test_sqlite_table_layout_is_what_the_adapter_writes(store) -> None:
    conn = feast_adapter.sqlite_connection(store)
    view = store.get_feature_view("next_purchase")
    table = feast_adapter.sqlite_table(store.config, view)
    assert table == f"{PROJECT}_next_purchase"
    columns = {name: pk for _, name, _, _, _, pk in conn.execute(f'PRAGMA table_info("{table}")')}
    assert {"entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts"} <= set(columns), _recheck(
        "the SQLite table's columns")
    assert [c for c, pk in sorted(columns.items(), key=lambda kv: kv[1]) if pk] == ["entity_key", "feature_name"], _recheck(
        "the SQLite table's primary key")
    assert feast_adapter.bulk_write_supported(store)


def test_rows_feast_writes_are_the_rows_the_adapter_writes(store) -> None:
    """Feast's own online write and the adapter's bulk write leave byte-identical rows
    (entity keys, Value messages, value_text, epoch-second timestamps, SQLite storage types)."""
    for view, frame in (("profile", _profile_frame()), ("next_purchase", _next_purchase_frame())):
        store.write_to_online_store(view, frame)
        by_feast = _rows(store, view)
        assert by_feast and all(r[-1] == "integer" for r in by_feast), _recheck("event_ts stored as epoch seconds")
        feast_adapter.sqlite_connection(store).execute(f"DELETE FROM {PROJECT}_{view}").connection.commit()
        assert feast_adapter.bulk_write_view(store, store.get_feature_view(view), _arrow(frame))
        assert _rows(store, view) == by_feast, _recheck(f"the SQLite row layout of {view}")


def test_feast_reads_what_the_adapter_writes_and_the_adapter_reads_what_feast_writes(store) -> None:
    from lastmile.features.online import OnlineReader

    refs = ["profile:orders", "profile:spend", "profile:home", "profile:vip", "next_purchase:np_purchases",
            "next_purchase:np_interval"]
    rows = [{"oneid": o, "sku": s} for o in PEOPLE for s in SKUS] + [{"oneid": "oid_nobody", "sku": "SK0001"}]
    feast_adapter.bulk_write_view(store, store.get_feature_view("profile"), _arrow(_profile_frame()))
    feast_adapter.bulk_write_view(store, store.get_feature_view("next_purchase"), _arrow(_next_purchase_frame()))
    written_by_adapter = _feast_reads(store, refs, rows)
    assert written_by_adapter["home"][:3] == ["翠苑一区"] * 3 and written_by_adapter["np_purchases"][-1] is None
    assert OnlineReader(store, refs).read(rows) == written_by_adapter

    store.write_to_online_store("profile", _profile_frame(orders=5))
    store.write_to_online_store("next_purchase", _next_purchase_frame(purchases=9))
    written_by_feast = OnlineReader(store, refs).read(rows)
    assert written_by_feast["orders"][0] == 5 and written_by_feast["np_purchases"][0] == 9
    assert written_by_feast == _feast_reads(store, refs, rows)


# -- forgetting a person ---------------------------------------------------------------------------


def _files_hold(store, needle: bytes) -> list[str]:
    conn = feast_adapter.sqlite_connection(store)
    return [str(p) for p in feast_adapter.sqlite_files(conn) if needle in p.read_bytes()]


def test_forget_leaves_no_row_and_no_byte_of_the_person(store) -> None:
    """Every view whose key holds the OneID (alone, or with a SKU) loses the person's rows;
    the file keeps no byte of their OneID, even from values the person had before (free space
    left by upserts); everybody else, and views not about people, are unchanged."""
    from lastmile.features.forget import person_views

    for purchases in (1, 2, 30):  # rows rewritten in place and with other sizes: old cells in free space
        store.write_to_online_store("profile", _profile_frame(orders=purchases * 1000))
        feast_adapter.bulk_write_view(store, store.get_feature_view("next_purchase"),
                                      _arrow(_next_purchase_frame(purchases=purchases * 100_000)))
    store.write_to_online_store("catalog", pd.DataFrame({"sku": SKUS, "category": ["veg", "fruit", "dairy"],
                                                          "event_timestamp": [NOW] * 3}))
    refs = ["profile:orders", "profile:home", "next_purchase:np_purchases", "catalog:category"]
    rows = [{"oneid": o, "sku": s} for o in PEOPLE for s in SKUS]
    before = _feast_reads(store, refs, rows)
    person = PEOPLE[0].encode()
    assert _files_hold(store, person)

    views = person_views(store)
    assert sorted(v.name for v in views) == ["next_purchase", "profile"]
    deleted = feast_adapter.forget_entities(store, views, "oneid", [PEOPLE[0]])
    assert deleted == 4 + 3 * 2  # profile: one row per feature; next_purchase: per SKU and feature

    after = _feast_reads(store, refs, rows)
    mine = [i for i, r in enumerate(rows) if r["oneid"] == PEOPLE[0]]
    for name in ("orders", "home", "np_purchases"):
        assert [after[name][i] for i in mine] == [None] * len(mine), name
        assert [v for i, v in enumerate(after[name]) if i not in mine] == [v for i, v in enumerate(before[name]) if i not in mine]
    assert after["category"] == before["category"]
    assert _files_hold(store, person) == []
    assert all(_files_hold(store, o.encode()) for o in PEOPLE[1:])
    assert feast_adapter.forget_entities(store, views, "oneid", [PEOPLE[0]]) == 0


def test_forget_refuses_an_online_store_it_cannot_clear(store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feast_adapter, "online_store_kind", lambda s: "DynamoDBOnlineStore")
    with pytest.raises(feast_adapter.UnsupportedOnlineStore, match="DynamoDBOnlineStore"):
        feast_adapter.forget_entities(store, [store.get_feature_view("profile")], "oneid", [PEOPLE[0]])


def test_forget_reports_bytes_it_could_not_remove(store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader holding a snapshot open keeps the old pages in the WAL: forget says so instead
    of reporting success."""
    from lastmile.features.forget import person_views

    monkeypatch.setattr(feast_adapter, "CHECKPOINT_WAIT_S", 0.2)
    store.write_to_online_store("profile", _profile_frame())
    reader = sqlite3.connect(tmp_path / "online.db")
    reader.execute("BEGIN")
    reader.execute(f"SELECT count(*) FROM {PROJECT}_profile").fetchone()
    try:
        with pytest.raises(feast_adapter.TracesRemain, match="online.db"):
            feast_adapter.forget_entities(store, person_views(store), "oneid", [PEOPLE[0]])
    finally:
        reader.rollback()
        reader.close()
    assert feast_adapter.forget_entities(store, person_views(store), "oneid", [PEOPLE[0]]) == 0
    assert _files_hold(store, PEOPLE[0].encode()) == []


def test_forget_clears_copies_an_earlier_plain_delete_left_in_free_space(store) -> None:
    """Rows deleted earlier without ``secure_delete`` leave their bytes in free pages; forgetting
    the person finds them there and rebuilds the file."""
    from lastmile.features.forget import person_views

    store.write_to_online_store("profile", _profile_frame())
    feast_adapter.bulk_write_view(store, store.get_feature_view("next_purchase"), _arrow(_next_purchase_frame()))
    conn = feast_adapter.sqlite_connection(store)
    conn.execute("PRAGMA secure_delete=OFF")
    with conn:
        for view in ("profile", "next_purchase"):
            conn.execute(f"DELETE FROM {PROJECT}_{view} WHERE instr(entity_key, ?) > 0", (PEOPLE[0].encode(),))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert _files_hold(store, PEOPLE[0].encode())  # no live row, yet the bytes are in the file
    assert feast_adapter.forget_entities(store, person_views(store), "oneid", [PEOPLE[0]]) == 0
    assert _files_hold(store, PEOPLE[0].encode()) == []
    assert all(_files_hold(store, o.encode()) for o in PEOPLE[1:])
