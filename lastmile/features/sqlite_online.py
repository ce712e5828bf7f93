"""Feast's SQLite online store: the connection settings lastmile serves with, and a bulk loader.

Two things live here, both about the one SQLite file Feast reads online features from
(``$LASTMILE_HOME/feast/online.db``):

* :func:`tune_connection` applies :data:`SQLITE_PRAGMAS` to Feast's own connection. Feast
  0.67's ``sqlite`` online store has no option for them in ``feature_store.yaml``, so
  :func:`lastmile.features.store.get_store` sets them on the connection it opens; the serving
  path (:mod:`lastmile.features.online`) and ``feast serve`` read through that connection.
* :func:`bulk_write` writes the rows Feast's ``SqliteOnlineStore.online_write_batch`` writes
  (same table, same columns, same bytes: entity key v3, ``feast.types.Value`` messages,
  ``value_text``, ``event_ts`` in epoch seconds, ``created_ts`` NULL) from an Arrow table,
  for lastmile's fast materialization path.

Feast keeps one SQLite row per (entity, feature), so loading 40k customer x SKU rows of a
six-feature view means 250k upserts, and at that scale per-row Python overhead is the cost.
What the loader does about it, each measured on the serving benchmark (bench/serving.py):

* values and entity keys are encoded per column with numpy and pyarrow, never per value;
* rows arrive in primary-key order (entity key, then feature name), so consecutive upserts
  touch neighbouring B-tree pages instead of jumping across a 100 MB file;
* blobs are bound as ``bytearray``: CPython's sqlite3 module skips its adapter lookup only for
  int, float, str and bytearray parameters, and that lookup was half the binding time;
* each view is one transaction, with a larger page cache for its duration.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import contextmanager
from itertools import chain, repeat
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

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

# Field tags of feast.types.Value: (field number << 3) | wire type.
_TAG = {"string": 0x12, "int64": 0x20, "double": 0x29, "bool": 0x38}
_ARROW = {"string": pa.string(), "int64": pa.int64(), "double": pa.float64(), "bool": pa.bool_()}
_STRING_TYPE = 2  # feast ValueType.STRING, as written in entity keys
_NO_SEPARATOR = pa.scalar(b"", pa.large_binary())


def tune_connection(conn: sqlite3.Connection) -> None:
    """Apply :data:`SQLITE_PRAGMAS`; a pragma SQLite refuses (file locked, read-only) is logged."""
    for name, value in SQLITE_PRAGMAS.items():
        try:
            conn.execute(f"PRAGMA {name}={value}")
        except sqlite3.OperationalError as exc:
            log.warning("online store: PRAGMA %s=%s not applied: %s", name, value, exc)


# -- column encoders ------------------------------------------------------------------------


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


# -- list front-ends (byte-for-byte tests, small callers) ------------------------------------


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


# -- the bulk write -------------------------------------------------------------------------


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
    quoted = '"' + table.replace('"', '""') + '"'
    return (f"INSERT INTO {quoted} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
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
