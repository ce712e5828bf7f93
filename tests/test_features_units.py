"""Fast checks of the feature store plumbing (no warehouse): byte-exact encodings, config."""

from __future__ import annotations

import pytest

from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from lastmile.features.feast_adapter import encode_entity_keys, encode_values, value_texts
from lastmile.features.store import FeatureStoreError, online_store_config, resolved_yaml


def test_value_encodings_match_protobuf() -> None:
    doubles = [1.5, 0.0, -2.25, 1e300, None, float("nan")]
    assert encode_values(doubles, "double") == [
        Value(double_val=v).SerializeToString() if v is not None and v == v else b"" for v in doubles]
    ints = [0, 1, 127, 128, 300, 2**40, -1, -300, None]
    assert encode_values(ints, "int64") == [Value(int64_val=v).SerializeToString() if v is not None else b"" for v in ints]
    strings = ["C01", "", "翠苑一区", "x" * 300, None]
    assert encode_values(strings, "string") == [
        Value(string_val=v).SerializeToString() if v is not None else b"" for v in strings]
    assert encode_values([True, False, None], "bool") == [
        Value(bool_val=True).SerializeToString(), Value(bool_val=False).SerializeToString(), b""]
    assert value_texts([1.0, None, 2.5, float("nan"), 1e-7], "double") == ["1.0", None, "2.5", None, "1e-07"]
    assert value_texts([0, -300, 2**40, None], "int64") == ["0", "-300", str(2**40), None]
    assert value_texts([True, False, None], "bool") == ["True", "False", None]
    assert value_texts(["翠苑", "", None], "string") == ["翠苑", "", None]


def test_entity_key_encoding_matches_feast() -> None:
    got = encode_entity_keys(["sku", "oneid", "community_id"], [["SK0001", "SK0002"], ["oid_a", "oid_b"], ["C01", "C02"]])
    for i, (s, o, c) in enumerate([("SK0001", "oid_a", "C01"), ("SK0002", "oid_b", "C02")]):
        key = EntityKey(join_keys=["sku", "oneid", "community_id"],
                        entity_values=[Value(string_val=s), Value(string_val=o), Value(string_val=c)])
        assert got[i] == serialize_entity_key(key, entity_key_serialization_version=3)


def test_serving_entity_keys_match_feast() -> None:
    from lastmile.features.feast_adapter import entity_key_bytes

    for keys, values in ((["oneid"], ["oid_甲"]), (["community_id", "oneid", "sku"], ["C01", "oid_a", "SK0001"])):
        proto = EntityKey(join_keys=keys, entity_values=[Value(string_val=v) for v in values])
        assert entity_key_bytes(keys, values) == serialize_entity_key(proto, entity_key_serialization_version=3)


def test_online_store_selection(monkeypatch: pytest.MonkeyPatch, home) -> None:
    from lastmile.config import settings

    monkeypatch.delenv("LASTMILE_FEAST_ONLINE_STORE", raising=False)
    assert online_store_config(settings()) is None
    assert resolved_yaml(settings())["online_store"]["type"] == "sqlite"
    monkeypatch.setenv("LASTMILE_FEAST_ONLINE_STORE", "redis://cache.internal:6380/2")
    assert online_store_config(settings()) == {"type": "redis", "connection_string": "cache.internal:6380,db=2"}
    assert resolved_yaml(settings())["online_store"]["type"] == "redis"
    monkeypatch.setenv("LASTMILE_FEAST_ONLINE_STORE", "memcached://x")
    with pytest.raises(FeatureStoreError):
        online_store_config(settings())


def test_server_mode_config(monkeypatch: pytest.MonkeyPatch, home) -> None:
    from lastmile.config import settings

    monkeypatch.setenv("LASTMILE_CLICKHOUSE_URL", "https://ch.internal:8443")
    raw = resolved_yaml(settings())
    off = raw["offline_store"]
    assert (off["host"], off["port"], off["additional_client_args"]) == ("ch.internal", 8443, {"interface": "https"})


def test_new_online_store_gets_large_pages_and_wal(tmp_path) -> None:
    """tune_connection on a new file sets the bulk-friendly page size and WAL; on an existing
    store it keeps the page size it was created with (SQLite cannot change it in WAL mode)."""
    import sqlite3

    from lastmile.features.feast_adapter import SQLITE_PRAGMAS, tune_connection

    fresh = sqlite3.connect(tmp_path / "new.db")
    tune_connection(fresh)
    fresh.execute("CREATE TABLE t (k BLOB PRIMARY KEY)")
    assert fresh.execute("PRAGMA page_size").fetchone()[0] == SQLITE_PRAGMAS["page_size"] == 32768
    assert fresh.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    old = sqlite3.connect(tmp_path / "old.db")
    old.execute("PRAGMA page_size=4096")
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("CREATE TABLE t (k BLOB PRIMARY KEY)")
    old.close()
    reopened = sqlite3.connect(tmp_path / "old.db")
    tune_connection(reopened)
    assert reopened.execute("PRAGMA page_size").fetchone()[0] == 4096
    assert reopened.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
