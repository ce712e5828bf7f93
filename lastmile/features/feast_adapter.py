"""Everything lastmile does with Feast beyond its public API, in one module.

Written against **Feast 0.67.0** (:data:`WRITTEN_FOR`). ``tests/test_feast_adapter.py`` checks
that the installed Feast is that version and exercises every reach-in below against it (the
attributes exist with the signatures used here, and rows written by Feast and by this module
read back identically both ways), so an upgrade fails there, naming what changed, rather than
in production. The rest of lastmile calls the public functions of this module and never
touches Feast's internals itself.

Feast's public API (``apply``, ``materialize``, ``push``, ``get_online_features``,
``get_historical_features``) covers what lastmile asks of it except the following. Each item
says what is used, why, and what replaces it if Feast ever offers it.

1. **The online store object**: ``FeatureStore.provider.online_store`` (a property of Feast's
   ``PassthroughProvider``). Needed to write, read, create tables in and delete from the
   online store without going through ``FeatureStore``'s per-request planning. Functions:
   :func:`online_store`, :func:`online_store_kind`, :func:`create_online_tables`,
   :func:`write_through_feast`.
2. **Feast's SQLite connection**: ``SqliteOnlineStore._get_conn(config)``. Every read and write
   of the SQLite online store goes through this one connection, so lastmile's pragmas
   (:data:`SQLITE_PRAGMAS`: WAL, mmap; Feast's yaml has no option for them) apply to Feast's
   own reads too, and no second connection in the process contends for the file's lock.
   Function: :func:`sqlite_connection`.
3. **SQLite table names**: ``feast.infra.online_stores.sqlite._table_id(project, view,
   versioning)``, ``{project}_{view}``. Function: :func:`sqlite_table`.
4. **The SQLite row layout**, written and read by hand: one row per (entity, feature) in the
   view's table, columns ``entity_key`` (``serialize_entity_key`` version 3),
   ``feature_name``, ``value`` (a serialized ``feast.types.Value``), ``value_text`` (``str`` of
   the value), ``event_ts`` (epoch seconds: Feast registers a ``datetime`` adapter with
   ``sqlite3`` that stores them so), ``created_ts`` (NULL), primary key
   ``(entity_key, feature_name)``. Why by hand: Feast's ``online_write_batch`` converts and
   upserts one value at a time (about 1k rows/s on materialization, ~85 µs per pushed
   customer), its ``get_online_features`` plans every request afresh; :func:`bulk_write`
   writes the same bytes from Arrow columns (20-50x faster, measured by bench/serving.py),
   :func:`read_statement` reads every view of a feature service in one statement, and
   :func:`forget_entities` deletes a person's rows, which Feast has no call for.
5. **The Redis layout**: one hash per entity key, named ``serialize_entity_key(v3) +
   project``, holding the features of every view with that key; the client from
   ``RedisOnlineStore._get_client``. Needed by :func:`forget_entities` only (Feast can delete
   a whole view or entity type from Redis, not one entity).
6. **The ClickHouse offline store's client**: Feast caches one clickhouse-connect client per
   thread (``feast.infra.utils.clickhouse.connection_utils.get_client``) but
   ``ClickhouseSource.get_table_column_names_and_types`` uses it as a context manager, which
   *closes* the cached client. Over HTTP a closed client reconnects; with embedded chDB every
   later query fails ("The client has been closed"), and chDB admits one data directory per
   process, which lastmile's warehouse already holds. :func:`install` replaces ``get_client``
   in the three Feast modules that imported it by name with :func:`shared_client` (lastmile's
   own warehouse client for chDB, one client per thread for a server), wrapped in
   :class:`KeepOpen`, whose ``close`` does nothing. It runs when this module is imported,
   which Feast does when ``feature_store.yaml`` names ``type:
   lastmile.features.feast_adapter.LastmileClickhouseOfflineStore``, so the ``feast`` CLI gets
   it too. Remove it when Feast stops closing its cached client.
7. **The ClickHouse retrieval job**: :class:`LastmileRetrievalJob` overrides
   ``ClickhouseRetrievalJob._to_arrow_internal``/``_to_df_internal`` (and reads
   ``_query_generator``) to run the point-in-time query with ``join_use_nulls=1``; without it
   ClickHouse fills unmatched LEFT JOIN columns with 0/'' and a missing feature reads as a
   real zero.
"""

from __future__ import annotations

import logging
import mmap
import sqlite3
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from itertools import chain, repeat
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

#: The Feast release every reach-in of this module was written and tested against.
WRITTEN_FOR = "0.67.0"


def installed_version() -> str:
    """The installed Feast release."""
    from importlib import metadata

    return metadata.version("feast")


# -- 1. the online store object ----------------------------------------------------------------


def online_store(store: Any) -> Any:
    """Feast's online store object of ``store`` (``SqliteOnlineStore``, ``RedisOnlineStore``, ...)."""
    return store.provider.online_store


def online_store_kind(store: Any) -> str:
    """``"sqlite"``, ``"redis"``, or the class name of any other online store."""
    name = type(online_store(store)).__name__
    return {"SqliteOnlineStore": "sqlite", "RedisOnlineStore": "redis"}.get(name, name)


def create_online_tables(store: Any, views: Sequence[Any]) -> None:
    """Create ``views``' tables in the online store (what ``apply`` does), without a registry."""
    online_store(store).update(store.config, tables_to_delete=[], tables_to_keep=list(views),
                               entities_to_delete=[], entities_to_keep=[], partial=False)


def value_kind(dtype: Any) -> str:
    """The ``feast.types.Value`` field a feature of Feast type ``dtype`` is stored in."""
    from feast.types import Bool, Float32, Float64, Int32, Int64

    if dtype in (Float64, Float32):
        return "double"
    if dtype in (Int64, Int32):
        return "int64"
    if dtype == Bool:
        return "bool"
    return "string"


def _protos(values: Iterable[Any], kind: str) -> list:
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    empty = ValueProto()
    if kind == "double":
        return [empty if v is None or v != v else ValueProto(double_val=v) for v in values]
    if kind == "int64":
        return [empty if v is None else ValueProto(int64_val=int(v)) for v in values]
    if kind == "bool":
        return [empty if v is None else ValueProto(bool_val=bool(v)) for v in values]
    return [empty if v is None else ValueProto(string_val=str(v)) for v in values]


def write_through_feast(store: Any, fv: Any, cols: dict[str, list[Any]]) -> None:
    """Write columns (the join keys, the features, ``_event_ts_s`` in epoch seconds) through the
    online store's own ``online_write_batch``: any online store (Redis, ...), protobuf values."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    keys = list(fv.join_keys)
    names = [f.name for f in fv.features]
    proto_cols = [_protos(cols[f.name], value_kind(f.dtype)) for f in fv.features]
    key_values = [cols[k] for k in keys]
    ts = [datetime.fromtimestamp(t, timezone.utc) for t in cols["_event_ts_s"]]
    data = []
    for i in range(len(ts)):
        ek = EntityKeyProto(join_keys=keys, entity_values=[ValueProto(string_val=str(kv[i])) for kv in key_values])
        data.append((ek, {name: col[i] for name, col in zip(names, proto_cols)}, ts[i], None))
    online_store(store).online_write_batch(store.config, fv, data, progress=None)


# -- 2./3. Feast's SQLite connection and tables ----------------------------------------------

#: Pragmas for Feast's SQLite online-store connection.
#: * WAL: readers (the API, ``feast serve``) are never blocked by a materialization or a push
#:   that is committing, and a write appends to the log instead of copying pages to a journal.
#: * synchronous NORMAL: in WAL mode, commits survive an application crash; only a power loss
#:   can drop the last transactions, which a re-materialization restores (the warehouse is the
#:   record, the online store a cache of it).
#: * mmap: page reads become memory reads (about a tenth off an online read of ~50 features).
#: * journal_size_limit: the WAL file shrinks back after a bulk load instead of keeping its size.
#: * page_size 32 KiB (first: it only takes effect on a new, empty file, before WAL mode is set;
#:   an existing store keeps its page size): a bulk load writes each page to the WAL at commit
#:   and again to the database at checkpoint, one system call per page, so 8x fewer pages
#:   made a first load into an empty store ~25 % faster on bench/serving.py's data set, with
#:   online reads unchanged (a read touches a handful of pages, memory-mapped).
SQLITE_PRAGMAS: dict[str, str | int] = {
    "page_size": 32 << 10,
    "journal_mode": "WAL",
    "synchronous": "NORMAL",
    "mmap_size": 1 << 30,
    "journal_size_limit": 64 << 20,
}

#: Page cache while bulk loading one view (KiB): holds the B-tree pages a full reload rewrites.
BULK_CACHE_KIB = 256 << 10


def tune_connection(conn: sqlite3.Connection) -> None:
    """Apply :data:`SQLITE_PRAGMAS`; a pragma SQLite refuses (file locked, read-only) is logged."""
    for name, value in SQLITE_PRAGMAS.items():
        try:
            conn.execute(f"PRAGMA {name}={value}")
        except sqlite3.OperationalError as exc:
            log.warning("online store: PRAGMA %s=%s not applied: %s", name, value, exc)


def sqlite_connection(store: Any) -> sqlite3.Connection | None:
    """Feast's own connection to its SQLite online store (opened on first use); None for other stores."""
    if online_store_kind(store) != "sqlite":
        return None
    return online_store(store)._get_conn(store.config)


def sqlite_table(config: Any, view: Any) -> str:
    """The SQLite table Feast keeps ``view``'s online rows in."""
    from feast.infra.online_stores.sqlite import _table_id

    return _table_id(config.project, view, config.registry.enable_online_feature_view_versioning)


def _quoted(table: str) -> str:
    return '"' + table.replace('"', '""') + '"'


def bulk_write_supported(store: Any) -> bool:
    """Whether the online store is Feast's plain SQLite store, whose rows :func:`bulk_write` reproduces."""
    config = store.config
    return (online_store_kind(store) == "sqlite" and not config.online_store.vector_enabled
            and not getattr(config.online_store, "enable_openai_compatible_store", False)
            and config.entity_key_serialization_version == 3)


# -- 4. the SQLite row layout: encoders ------------------------------------------------------
#
# Feast keeps one SQLite row per (entity, feature), so loading 40k customer x SKU rows of a
# six-feature view means 250k upserts, and at that scale per-row Python overhead is the cost.
# What the bulk writer does about it, each measured on bench/serving.py:
#
# * values and entity keys are encoded per column with numpy and pyarrow, never per value;
# * rows arrive in primary-key order (entity key, then feature name), so consecutive upserts
#   touch neighbouring B-tree pages instead of jumping across a 100 MB file;
# * blobs are bound as ``bytearray``: CPython's sqlite3 module skips its adapter lookup only for
#   int, float, str and bytearray parameters, and that lookup was half the binding time;
# * each view is one transaction, with a larger page cache for its duration.

# Field tags of feast.types.Value: (field number << 3) | wire type.
_TAG = {"string": 0x12, "int64": 0x20, "double": 0x29, "bool": 0x38}
_ARROW = {"string": pa.string(), "int64": pa.int64(), "double": pa.float64(), "bool": pa.bool_()}
_STRING_TYPE = 2  # feast ValueType.STRING, as written in entity keys
_NO_SEPARATOR = pa.scalar(b"", pa.large_binary())
_U32 = struct.Struct("<I")


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Protobuf varints of uint64 ``values``: a (n, 10) byte matrix and each varint's length."""
    u = values.astype(np.uint64, copy=False)
    shifts = np.arange(10, dtype=np.uint64) * np.uint64(7)
    lengths = 1 + (u[:, None] >= (np.uint64(1) << shifts[1:])).sum(axis=1)
    groups = (u[:, None] >> shifts) & np.uint64(0x7F)
    more = np.arange(10) < (lengths - 1)[:, None]
    return (groups | (more * np.uint64(0x80))).astype(np.uint8), lengths


def _prefixed(tag: int, body: np.ndarray) -> np.ndarray:
    """A byte matrix with ``tag`` in front of every row of ``body``."""
    out = np.empty((body.shape[0], body.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = tag
    out[:, 1:] = body
    return out


def _binary(matrix: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """The first ``lengths[i]`` bytes of row i of ``matrix``, as an Arrow binary array."""
    lengths = np.asarray(lengths, dtype=np.int64)
    keep = np.arange(matrix.shape[1]) < lengths[:, None]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(matrix[keep].tobytes())])


def _bytearrays(arr: pa.Array | pa.ChunkedArray) -> list[bytearray]:
    """One ``bytearray`` per element (nulls become empty), cut from the array's data buffer."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], pa.large_binary())
    arr = arr.cast(pa.large_binary()).fill_null(b"")
    if len(arr) == 0:
        return []
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=len(arr) + 1, offset=arr.offset * 8)
    start, end = int(offsets[0]), int(offsets[-1])
    data = bytearray(memoryview(arr.buffers()[2])[start:end]) if end > start else bytearray()
    bounds = (offsets - start).tolist()
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def _as_kind(column: pa.Array | pa.ChunkedArray, kind: str) -> pa.Array:
    """The column as one Arrow array of the type ``kind`` is encoded from."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], _ARROW[kind])
    if column.type == _ARROW[kind]:
        return column
    try:
        return column.cast(_ARROW[kind])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if kind != "string":
            raise
        return pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.string())


def _present(column: pa.Array, kind: str) -> np.ndarray:
    """Which values get a message (None, and NaN for doubles, get the empty message)."""
    present = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if kind == "double":
        present &= ~np.isnan(column.to_numpy(zero_copy_only=False))
    return present


def value_messages(column: pa.Array | pa.ChunkedArray, kind: str) -> pa.Array:
    """Serialized ``feast.types.Value`` messages of a column, as an Arrow binary array."""
    column = _as_kind(column, kind)
    present = _present(column, kind)
    n = len(column)
    if kind == "string":
        raw = column.cast(pa.large_binary()).fill_null(b"")
        sizes = pc.binary_length(raw).to_numpy().astype(np.uint64)
        body, lengths = _varints(sizes)
        header = _binary(_prefixed(_TAG[kind], body), np.where(present, lengths + 1, 0))
        return pc.binary_join_element_wise(header, raw, _NO_SEPARATOR)
    if kind == "double":
        values = column.to_numpy(zero_copy_only=False).astype("<f8")
        return _binary(_prefixed(_TAG[kind], values.view(np.uint8).reshape(n, 8)), np.where(present, 9, 0))
    if kind == "int64":
        body, lengths = _varints(column.fill_null(0).to_numpy().view(np.uint64))
        return _binary(_prefixed(_TAG[kind], body), np.where(present, lengths + 1, 0))
    flags = column.fill_null(False).to_numpy(zero_copy_only=False).astype(np.uint8).reshape(n, 1)
    return _binary(_prefixed(_TAG[kind], flags), np.where(present, 2, 0))


def value_text_column(column: pa.Array | pa.ChunkedArray, kind: str) -> list[str | None]:
    """The ``value_text`` Feast's SQLite store keeps next to each value (str() of the value)."""
    column = _as_kind(column, kind)
    if kind == "string":
        return column.to_pylist()
    present = _present(column, kind)
    if kind == "bool":
        texts = np.where(column.fill_null(False).to_numpy(zero_copy_only=False), "True", "False").tolist()
    else:
        filled = column.fill_null(0).to_numpy(zero_copy_only=False)
        texts = list(map(str, filled.tolist()))  # str(float) == repr: shortest round-trip, as Feast
    for i in np.flatnonzero(~present).tolist():
        texts[i] = None
    return texts


def entity_key_column(join_keys: Sequence[str], columns: Sequence[pa.Array | pa.ChunkedArray]) -> pa.Array:
    """feast's ``serialize_entity_key`` (version 3) for string join keys, for a whole column."""
    order = sorted(range(len(join_keys)), key=lambda i: join_keys[i])
    prefix = bytearray(np.array([len(join_keys)], dtype="<u4").tobytes())
    for i in order:
        name = join_keys[i].encode("utf8")
        prefix += np.array([_STRING_TYPE, len(name)], dtype="<u4").tobytes() + name
    parts: list[Any] = [pa.scalar(bytes(prefix), pa.large_binary())]
    for i in order:
        raw = _as_kind(columns[i], "string").cast(pa.large_binary())
        head = np.empty((len(raw), 2), dtype="<u4")
        head[:, 0] = _STRING_TYPE
        head[:, 1] = pc.binary_length(raw).fill_null(0).to_numpy()
        parts += [_binary(head.view(np.uint8), np.full(len(raw), 8)), raw]
    return pc.binary_join_element_wise(*parts, _NO_SEPARATOR)


def _string_value(value: str) -> bytes:
    """One string entity value as it appears in a serialized entity key: type, length, UTF-8."""
    raw = value.encode("utf8")
    return _U32.pack(_STRING_TYPE) + _U32.pack(len(raw)) + raw


def entity_key_bytes(join_keys: Sequence[str], values: Sequence[str]) -> bytes:
    """Feast's ``serialize_entity_key`` (version 3) for string join keys already sorted by name
    (``values`` in the same order); with no values, the prefix every such key starts with."""
    out = [_U32.pack(len(join_keys))]
    for key in join_keys:
        raw = key.encode("utf8")
        out += [_U32.pack(_STRING_TYPE), _U32.pack(len(raw)), raw]
    out += [_string_value(v) for v in values]
    return b"".join(out)


def entity_values(key: bytes, entity_key_serialization_version: int = 3) -> dict[str, Any]:
    """The join key -> value mapping of a serialized entity key (Feast's own deserializer)."""
    from feast.infra.key_encoding_utils import deserialize_entity_key

    proto = deserialize_entity_key(bytes(key), entity_key_serialization_version=entity_key_serialization_version)
    return {k: getattr(v, v.WhichOneof("val")) if v.WhichOneof("val") else None
            for k, v in zip(proto.join_keys, proto.entity_values)}


def encode_values(values: Sequence[Any], kind: str) -> list[bytearray]:
    """Serialized ``feast.types.Value`` messages for one column (None/NaN -> empty message)."""
    return _bytearrays(value_messages(pa.array(list(values), _ARROW[kind]), kind))


def value_texts(values: Sequence[Any], kind: str) -> list[str | None]:
    """The ``value_text`` column Feast's SQLite store keeps next to each value."""
    return value_text_column(pa.array(list(values), _ARROW[kind]), kind)


def encode_entity_keys(join_keys: Sequence[str], columns: Sequence[Sequence[Any]]) -> list[bytearray]:
    """feast's ``serialize_entity_key`` (version 3) for string join keys, for many rows at once."""
    arrays = [pa.array([None if v is None else str(v) for v in col], pa.string()) for col in columns]
    return _bytearrays(entity_key_column(join_keys, arrays))


# -- 4. the SQLite row layout: the bulk write and the one-statement read ------------------------


@contextmanager
def _page_cache(conn: sqlite3.Connection, kib: int) -> Iterator[None]:
    """Run with a page cache of ``kib`` KiB, then give the connection its own size back."""
    (before,) = conn.execute("PRAGMA cache_size").fetchone()
    conn.execute(f"PRAGMA cache_size=-{int(kib)}")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA cache_size={int(before)}")


def _upsert_sql(table: str) -> str:
    return (f"INSERT INTO {_quoted(table)} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
            "VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
            "value = excluded.value, value_text = excluded.value_text, event_ts = excluded.event_ts, "
            "created_ts = excluded.created_ts")


def sorted_rows(join_keys: Sequence[str], features: Sequence[tuple[str, str]], data: pa.Table) -> Iterator[tuple]:
    """(entity_key, feature_name, value, value_text, event_ts) in primary-key order.

    ``features`` are (name, kind) pairs; ``data`` has the join keys, the features and
    ``_event_ts_s`` (epoch seconds). Sorting happens on the Arrow side, before any Python
    object exists; the rows are then zipped together by C iterators.
    """
    keys = entity_key_column(join_keys, [data.column(k) for k in join_keys])
    order = pc.sort_indices(keys)
    data = data.take(order)
    key_list = _bytearrays(keys.take(order))
    ts = data.column("_event_ts_s").to_pylist()
    per_feature = [zip(key_list, repeat(name), _bytearrays(value_messages(data.column(name), kind)),
                       value_text_column(data.column(name), kind), ts)
                   for name, kind in sorted(features)]
    return chain.from_iterable(zip(*per_feature))


def bulk_write(conn: sqlite3.Connection, table: str, join_keys: Sequence[str],
               features: Sequence[tuple[str, str]], data: pa.Table) -> None:
    """Upsert one view's rows into Feast's table ``table``, in one transaction."""
    if data.num_rows == 0:
        return
    rows = sorted_rows(join_keys, features, data)
    with _page_cache(conn, BULK_CACHE_KIB), conn:
        conn.executemany(_upsert_sql(table), rows)


def bulk_write_view(store: Any, fv: Any, data: pa.Table) -> bool:
    """Write ``data`` (the join keys, the features, ``_event_ts_s`` in epoch seconds) to ``fv``'s
    online table with :func:`bulk_write` if the store is Feast's plain SQLite store; returns
    False, having written nothing, for any other store."""
    if not bulk_write_supported(store):
        return False
    conn = sqlite_connection(store)
    assert conn is not None
    bulk_write(conn, sqlite_table(store.config, fv), list(fv.join_keys),
               [(f.name, value_kind(f.dtype)) for f in fv.features], data)
    return True


def read_statement(tables: Sequence[str], counts: Sequence[int]) -> str:
    """One statement reading ``counts[i]`` entity keys from ``tables[i]``, for every i.

    Its rows are ``(i, entity_key, feature_name, value)``; the parameters are the entity
    keys, table by table."""
    return " UNION ALL ".join(
        f"SELECT {i}, entity_key, feature_name, value FROM {_quoted(table)} "
        f"WHERE entity_key IN ({','.join('?' * count)})"
        for i, (table, count) in enumerate(zip(tables, counts)))


# -- 4./5. forgetting entities -----------------------------------------------------------------


class OnlineForgetError(RuntimeError):
    """The online store may still hold the entities it was asked to forget."""


class UnsupportedOnlineStore(OnlineForgetError):
    """The configured online store's layout is not one this module knows how to delete from."""


class TracesRemain(OnlineForgetError):
    """The entities' rows are deleted but their bytes are still in the online store's files."""


def forget_entities(store: Any, views: Sequence[Any], join_key: str, values: Sequence[str]) -> int:
    """Delete every online row whose entity key has ``join_key`` equal to one of ``values``, in
    ``views`` (whatever their other join keys); returns SQLite rows deleted (one per entity
    and feature) or Redis hashes deleted (one per entity key, holding every view of it).

    On SQLite the deleted bytes are then physically gone from the file before this returns
    (see :func:`_scrub_sqlite`); :class:`TracesRemain` if they cannot be made so.
    """
    values = sorted(set(values))
    kind = online_store_kind(store)
    if kind == "sqlite":
        return _forget_sqlite(store, views, join_key, values)
    if kind == "redis":
        return _forget_redis(store, views, join_key, values)
    raise UnsupportedOnlineStore(f"cannot delete entities from a {kind}: remove {join_key} {', '.join(values)} "
                                 "from it by hand (lastmile knows Feast's SQLite and Redis layouts)")


def _chunks(items: Sequence[Any], size: int = 500) -> Iterator[Sequence[Any]]:
    for lo in range(0, len(items), size):
        yield items[lo:lo + size]


def _matching_keys(found: Iterable[bytes], join_key: str, wanted: set[str], version: int) -> list[bytes]:
    return [bytes(k) for k in found if entity_values(k, version).get(join_key) in wanted]


def _forget_sqlite(store: Any, views: Sequence[Any], join_key: str, values: list[str]) -> int:
    """Delete with ``secure_delete`` on (SQLite zeroes the freed cells and pages), then scrub."""
    conn = sqlite_connection(store)
    assert conn is not None
    config = store.config
    version = config.entity_key_serialization_version
    wanted = set(values)
    if conn.in_transaction:
        conn.commit()
    (secure_before,) = conn.execute("PRAGMA secure_delete").fetchone()
    conn.execute("PRAGMA secure_delete=ON")
    deleted = 0
    try:
        with conn:
            for fv in views:
                table = _quoted(sqlite_table(config, fv))
                if list(fv.join_keys) == [join_key]:
                    keys = [entity_key_bytes([join_key], [v]) for v in values]
                else:  # the OneID among other keys: find the keys holding its encoded value, then confirm
                    found: set[bytes] = set()
                    for value in values:
                        try:
                            found |= {bytes(k) for (k,) in conn.execute(
                                f"SELECT DISTINCT entity_key FROM {table} WHERE instr(entity_key, ?) > 0",
                                (_string_value(value),))}
                        except sqlite3.OperationalError as exc:
                            if "no such table" not in str(exc):
                                raise
                    keys = _matching_keys(found, join_key, wanted, version)
                for chunk in _chunks(keys):
                    try:
                        deleted += conn.execute(f"DELETE FROM {table} WHERE entity_key IN ({','.join('?' * len(chunk))})",
                                                list(chunk)).rowcount
                    except sqlite3.OperationalError as exc:
                        if "no such table" not in str(exc):
                            raise
    finally:
        conn.execute(f"PRAGMA secure_delete={int(secure_before)}")
    _scrub_sqlite(conn, [v.encode("utf8") for v in values])
    return deleted


def sqlite_files(conn: sqlite3.Connection) -> list[Path]:
    """The files of the connection's main database: the database and, if present, its WAL."""
    path = next((Path(file) for _, name, file in conn.execute("PRAGMA database_list") if name == "main"), None)
    if path is None or not str(path):
        return []
    return [p for p in (path, path.with_name(path.name + "-wal")) if p.exists()]


def _traces(files: Sequence[Path], needles: Sequence[bytes]) -> list[tuple[Path, bytes]]:
    found = []
    for path in files:
        if path.stat().st_size == 0:
            continue
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            found += [(path, n) for n in needles if data.find(n) >= 0]
    return found


#: How long forgetting waits for readers of the SQLite online store (the API, ``feast serve``)
#: to leave the old snapshot, so the WAL can be checkpointed and truncated. Their reads take
#: milliseconds; a reader still holding a snapshot after this is reported, not waited for.
CHECKPOINT_WAIT_S = 10.0


def _checkpoint(conn: sqlite3.Connection) -> bool:
    """Copy the WAL into the database and truncate it; False if a reader kept it busy."""
    (before,) = conn.execute("PRAGMA busy_timeout").fetchone()
    conn.execute(f"PRAGMA busy_timeout={int(CHECKPOINT_WAIT_S * 1000)}")
    try:
        row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(before)}")
    return row is None or row[0] == 0


def _scrub_sqlite(conn: sqlite3.Connection, needles: Sequence[bytes]) -> None:
    """Make sure no byte of ``needles`` is left in the database's files.

    ``secure_delete`` zeroes what the DELETE frees, but older copies can sit in free space
    from before (an upsert that rewrote the person's row, a delete made without it), and the
    WAL holds page images until a checkpoint. So: checkpoint and truncate the WAL, search the
    files, and if a needle is still there rebuild the database (``VACUUM``: every page is
    written afresh, free space dropped) and search again.
    """
    files = sqlite_files(conn)
    if not files or not needles:
        return
    _checkpoint(conn)
    if not _traces(sqlite_files(conn), needles):
        return
    log.info("online store: rebuilding %s to drop deleted entities' bytes from its free space", files[0])
    conn.execute("VACUUM")
    _checkpoint(conn)
    left = _traces(sqlite_files(conn), needles)
    if left:
        raise TracesRemain("the online store's rows are deleted but their bytes remain in "
                           + ", ".join(sorted({str(p) for p, _ in left}))
                           + " (another process holds a read transaction open?): stop the readers and forget again")


def _glob_escape(raw: bytes) -> bytes:
    """``raw`` as a literal in a Redis MATCH pattern."""
    out = bytearray()
    for byte in raw:
        if byte in b"*?[]\\^":
            out += b"\\"
        out.append(byte)
    return bytes(out)


def redis_client(store: Any) -> Any:
    """The redis-py client Feast's Redis online store writes through."""
    return online_store(store)._get_client(store.config.online_store)


def redis_key(project: str, entity_key: bytes) -> bytes:
    """The Redis hash holding every view's features of one serialized entity key."""
    return entity_key + project.encode("utf8")


def _forget_redis(store: Any, views: Sequence[Any], join_key: str, values: list[str]) -> int:
    """Delete the hash of every entity key holding one of ``values``: named directly for views
    keyed by ``join_key`` alone, found by SCAN for composite keys."""
    client = redis_client(store)
    config = store.config
    project = config.project
    suffix = project.encode("utf8")
    wanted = set(values)
    hashes: set[bytes] = set()
    for join_keys in sorted({tuple(sorted(fv.join_keys)) for fv in views}):
        if join_keys == (join_key,):
            hashes |= {redis_key(project, entity_key_bytes([join_key], [v])) for v in values}
            continue
        prefix = _glob_escape(entity_key_bytes(join_keys, []))
        for value in values:
            pattern = prefix + b"*" + _glob_escape(_string_value(value)) + b"*" + _glob_escape(suffix)
            found = [k[: -len(suffix)] for k in client.scan_iter(match=pattern, count=1000) if k.endswith(suffix)]
            hashes |= {redis_key(project, k) for k in
                       _matching_keys(found, join_key, wanted, config.entity_key_serialization_version)}
    return int(client.delete(*sorted(hashes))) if hashes else 0


# -- 6./7. the ClickHouse offline store --------------------------------------------------------
#
# Defined on first use (:func:`install`), not at import: Feast's ClickHouse modules take seconds
# to import, and most users of this module (encoders, forget, reads) never need them.

#: The offline store ``type`` in feature_store.yaml.
OFFLINE_STORE_TYPE = "lastmile.features.feast_adapter.LastmileClickhouseOfflineStore"
#: The Feast modules that import ``get_client`` by name, so each needs the replacement.
PATCHED_MODULES = ("feast.infra.utils.clickhouse.connection_utils",
                   "feast.infra.offline_stores.contrib.clickhouse_offline_store.clickhouse",
                   "feast.infra.offline_stores.contrib.clickhouse_offline_store.clickhouse_source")
#: Settings for point-in-time queries. Without join_use_nulls ClickHouse fills the LEFT JOINs
#: of Feast's point-in-time query with 0 / '' where no feature row qualifies (before a
#: customer's first order, past the TTL), so a missing feature would read as a real zero.
PIT_SETTINGS = {"join_use_nulls": 1}
_OFFLINE_CLASSES = ("LastmileClickhouseOfflineStoreConfig", "LastmileClickhouseOfflineStore", "LastmileRetrievalJob")
_local = threading.local()
_lock = threading.RLock()
_embedded: dict[str, Any] = {}


class KeepOpen:
    """A clickhouse-connect client whose ``close`` (and ``with`` exit) is a no-op."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def __enter__(self) -> "KeepOpen":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def close(self) -> None:
        """Deliberately nothing: the owner (lastmile's warehouse) closes the real client."""

    @property
    def wrapped(self) -> Any:
        return self._client


def _embedded_client(config: Any, path: str) -> Any:
    """lastmile's warehouse client for this chDB directory (opening it if needed)."""
    from dataclasses import replace

    import clickhouse_connect

    from lastmile.config import settings
    from lastmile.warehouse import connect

    target = Path(path).expanduser().resolve()
    cfg = settings()
    if target.name == "warehouse":
        cfg = replace(cfg, home=target.parent, clickhouse_url="", clickhouse_database=config.database)
        return connect(cfg).client
    # A chDB directory not laid out as $LASTMILE_HOME/warehouse: keep one raw client for it.
    with _lock:
        client = _embedded.get(str(target))
        if client is None:
            client = clickhouse_connect.get_client(interface="chdb", path=str(target), database=config.database)
            _embedded[str(target)] = client
        return client


def shared_client(config: Any) -> KeepOpen:
    """Feast's ``get_client`` replacement (``config``: Feast's ``ClickhouseConfig``): never hands
    out a client that ``with`` can close."""
    import clickhouse_connect

    args = dict(config.additional_client_args or {})
    if args.get("interface") == "chdb" or str(args.get("dsn", "")).startswith("chdb"):
        path = args.get("path") or str(args["dsn"]).split("://", 1)[1]
        client = _embedded_client(config, path)
        # The warehouse may have been re-opened since (tests, close_all): re-wrap each time.
        return KeepOpen(client)
    args.pop("path", None)  # only meaningful for chDB
    client = getattr(_local, "client", None)
    if client is None:
        client = clickhouse_connect.get_client(
            host=config.host, port=config.port, user=config.user, password=config.password,
            database=config.database, **args,
        )
        _local.client = client
    return KeepOpen(client)


def _define_offline_store() -> dict[str, Any]:
    from feast.infra.offline_stores.contrib.clickhouse_offline_store.clickhouse import (
        ClickhouseOfflineStore,
        ClickhouseOfflineStoreConfig,
        ClickhouseRetrievalJob,
    )

    class LastmileClickhouseOfflineStoreConfig(ClickhouseOfflineStoreConfig):
        """Same options as Feast's ``clickhouse`` offline store; only the type name differs."""

        type: Literal[OFFLINE_STORE_TYPE] = OFFLINE_STORE_TYPE  # type: ignore[assignment,valid-type]

    class LastmileRetrievalJob(ClickhouseRetrievalJob):
        """Feast's ClickHouse retrieval job, run with :data:`PIT_SETTINGS` (missing stays NULL)."""

        def _to_df_internal(self, timeout: int | None = None):
            return self._to_arrow_internal(timeout).to_pandas()

        def _to_arrow_internal(self, timeout: int | None = None):
            with self._query_generator() as query:
                table = shared_client(self.config.offline_store).query_arrow(query, settings=PIT_SETTINGS)
            for i, (name, dtype) in enumerate(zip(table.schema.names, table.schema.types)):
                if pa.types.is_decimal(dtype):
                    table = table.set_column(i, name, pc.cast(table[name], target_type=pa.float64()))
            return table

    class LastmileClickhouseOfflineStore(ClickhouseOfflineStore):
        """Feast's ClickHouse offline store with the shared, kept-open client and NULL-preserving joins."""

        @staticmethod
        def get_historical_features(*args: Any, **kwargs: Any):
            job: Any = ClickhouseOfflineStore.get_historical_features(*args, **kwargs)
            return LastmileRetrievalJob(
                query=job._query_generator, config=job.config, full_feature_names=job.full_feature_names,
                on_demand_feature_views=job.on_demand_feature_views, metadata=job.metadata)

    classes = {c.__name__: c for c in (LastmileClickhouseOfflineStoreConfig, LastmileClickhouseOfflineStore,
                                       LastmileRetrievalJob)}
    for cls in classes.values():
        cls.__qualname__ = cls.__name__
        cls.__module__ = __name__
    return classes


def install() -> None:
    """Define the offline store classes and point Feast's ClickHouse offline store and source
    at :func:`shared_client` (idempotent)."""
    import importlib

    with _lock:
        if _OFFLINE_CLASSES[0] not in globals():
            globals().update(_define_offline_store())
        for name in PATCHED_MODULES:
            importlib.import_module(name).get_client = shared_client  # type: ignore[attr-defined]


def installed() -> bool:
    """Whether every module of :data:`PATCHED_MODULES` hands out :func:`shared_client`."""
    import sys

    return all(getattr(sys.modules.get(name), "get_client", None) is shared_client for name in PATCHED_MODULES)


def __getattr__(name: str) -> Any:
    """The offline store classes, defined (and the client patch installed) on first access:
    this is how Feast reaches them when it resolves ``type:`` in feature_store.yaml."""
    if name in _OFFLINE_CLASSES:
        install()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
