"""Online reads on the serving path: Feast's online store, planned once instead of per request.

``FeatureStore.get_online_features`` plans every call afresh: it looks the feature references
up in the registry, groups them by view, builds entity-key protobufs, reads each view, turns
every value into a response protobuf and back into Python. For one customer and the ~50
features of ``recommendation_v1`` that planning and conversion is about four fifths of a read
(bench/serving.py), and on a busy machine every extra millisecond a request holds the CPU
widens its tail.

:class:`OnlineReader` does the planning once per feature service (or list of references):
which views, which features of each, which request columns make each view's entity key. A
read then asks Feast's online store for each view's rows with the store's own
``online_read`` (any Feast online store: Redis, SQLite, ...) and keeps the values as Python
objects. On Feast's SQLite store it reads every view in one statement over Feast's own
connection and tables (the rows Feast, lastmile's bulk loader and the stream's pushes wrote),
and decodes only the requested features.

The result is what ``OnlineResponse.to_dict()`` gives for the same request: the entity
columns as passed, then each feature (``None`` where the online store has no value); the tests
compare the two on every feature service. Feature views are resolved when the reader is
built: a process serving a re-applied repository builds a new reader (``lastmile serve`` does
at start-up), as ``feast serve`` refreshes its registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lastmile.features import feast_adapter
from lastmile.features.feast_adapter import entity_key_bytes

#: Value kinds whose Python value is the message field itself (Feast's converter agrees).
_PLAIN_KINDS = frozenset({"int64_val", "int32_val", "double_val", "float_val", "bool_val", "bytes_val", "string_val"})


@dataclass(frozen=True)
class ViewRead:
    """What to read from one feature view: its features and how to build its entity key."""

    view: Any  # feast FeatureView, with the service's projection
    features: tuple[str, ...]
    join_keys: tuple[str, ...]  # the view's join keys, sorted as the serialized key sorts them
    columns: tuple[str, ...]  # the request column each join key is read from
    string_keys: bool  # every join key is a string (the fast key encoder applies)
    table: str  # SQLite table name ("" for other online stores)
    converted: dict[str, Any] = field(default_factory=dict)  # feature -> ValueType Feast converts strings of (UUIDs)


class OnlineReader:
    """Reads one feature service (or list of ``view:feature`` references) for entity rows."""

    def __init__(self, store: Any, features: Any) -> None:
        from feast import FeatureService

        self.store = store
        self.config = store.config
        self.online_store = feast_adapter.online_store(store)
        self._kind = feast_adapter.online_store_kind(store)
        if isinstance(features, str):
            features = store.get_feature_service(features)
        if isinstance(features, FeatureService):
            wanted = [(p.name, p.name_to_use(), [f.name for f in p.features], dict(p.join_key_map))
                      for p in features.feature_view_projections]
        else:
            grouped: dict[str, list[str]] = {}
            for ref in features:
                view, _, feature = ref.partition(":")
                if not feature:
                    raise ValueError(f"feature reference {ref!r} is not 'view:feature'")
                grouped.setdefault(view, []).append(feature)
            wanted = [(view, view, names, {}) for view, names in grouped.items()]
        self.reads: list[ViewRead] = [self._plan(*w) for w in wanted]
        self.feature_names = [f for r in self.reads for f in r.features]
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ValueError("two views give a feature the same name; read them separately")
        self.entity_columns = list(dict.fromkeys(c for r in self.reads for c in r.columns))
        self._sqlite = self._kind == "sqlite" and all(r.string_keys for r in self.reads)
        self._statements: dict[tuple[int, ...], str] = {}

    def _plan(self, view_name: str, alias: str, features: list[str], join_key_map: dict[str, str]) -> ViewRead:
        from feast.value_type import ValueType

        view = self.store.get_feature_view(view_name)
        if alias != view_name:
            view = view.with_name(alias)
        if join_key_map:
            view = view.with_join_key_map(join_key_map)
        known = {f.name for f in view.features}
        missing = [f for f in features if f not in known]
        if missing:
            raise ValueError(f"feature view {view_name!r} has no feature(s) {missing}")
        keys = sorted(view.entity_columns, key=lambda c: c.name)
        uuid_types = {ValueType.UUID, ValueType.TIME_UUID}
        converted = {f.name: f.dtype.to_value_type() for f in view.features
                     if f.name in features and f.dtype.to_value_type() in uuid_types}
        table = feast_adapter.sqlite_table(self.config, view) if self._kind == "sqlite" else ""
        return ViewRead(view=view, features=tuple(features), join_keys=tuple(c.name for c in keys),
                        columns=tuple(join_key_map.get(c.name, c.name) for c in keys),
                        string_keys=all(c.dtype.to_value_type() == ValueType.STRING for c in keys),
                        table=table, converted=converted)

    # -- reading -------------------------------------------------------------------------------

    def read(self, entity_rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
        """Feature values for ``entity_rows``, as columns: the entity columns, then every feature."""
        for column in self.entity_columns:
            if any(row.get(column) is None for row in entity_rows):
                raise ValueError(f"every entity row needs a value for {column!r}")
        out: dict[str, list[Any]] = {c: [row[c] for row in entity_rows] for c in self.entity_columns}
        n = len(entity_rows)
        if n == 0:
            out.update({f: [] for f in self.feature_names})
            return out
        if self._sqlite:
            found = self._read_sqlite(entity_rows)
        else:
            found = self._read_generic(entity_rows)
        for read, rows in zip(self.reads, found):
            for feature in read.features:
                out[feature] = [row.get(feature) if row else None for row in rows]
        return out

    def _keys(self, read: ViewRead, entity_rows: Sequence[dict[str, Any]]) -> list[bytes]:
        return [entity_key_bytes(read.join_keys, [str(row[c]) for c in read.columns]) for row in entity_rows]

    def _read_sqlite(self, entity_rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any] | None]]:
        """Every view in one statement; values decoded only for the requested features."""
        from feast.protos.feast.types.Value_pb2 import Value

        keys = [self._keys(read, entity_rows) for read in self.reads]
        unique = [list(dict.fromkeys(k)) for k in keys]
        sql = self._statement(tuple(len(u) for u in unique))
        params = [k for u in unique for k in u]
        conn = feast_adapter.sqlite_connection(self.store)
        assert conn is not None  # self._sqlite says so
        found: list[dict[bytes, dict[str, Any]]] = [{} for _ in self.reads]
        wanted = [frozenset(r.features) for r in self.reads]
        converted = [r.converted for r in self.reads]
        value = Value()
        for view_index, key, name, blob in conn.execute(sql, params):
            if name not in wanted[view_index]:
                continue
            value.ParseFromString(blob)
            found[view_index].setdefault(key, {})[name] = _python(value, converted[view_index].get(name))
        return [[hits.get(k) for k in view_keys] for hits, view_keys in zip(found, keys)]

    def _statement(self, counts: tuple[int, ...]) -> str:
        sql = self._statements.get(counts)
        if sql is None:
            sql = self._statements[counts] = feast_adapter.read_statement([r.table for r in self.reads], counts)
        return sql

    def _read_generic(self, entity_rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any] | None]]:
        """Any Feast online store, through its own ``online_read``."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import python_values_to_proto_values

        results = []
        for read in self.reads:
            columns = {}
            for key, column in zip(read.join_keys, read.columns):
                dtype = next(c.dtype for c in read.view.entity_columns if c.name == key).to_value_type()
                columns[key] = python_values_to_proto_values([row[column] for row in entity_rows], dtype)
            protos = [EntityKey(join_keys=list(read.join_keys), entity_values=[columns[k][i] for k in read.join_keys])
                      for i in range(len(entity_rows))]
            rows = self.online_store.online_read(config=self.config, table=read.view, entity_keys=protos,
                                                 requested_features=list(read.features))
            results.append([{name: _python(v, read.converted.get(name)) for name, v in values.items()
                             if name in read.features}
                            if values else None for _, values in rows])
        return results


def _python(value: Any, value_type: Any = None) -> Any:
    """A ``feast.types.Value`` as Python: scalars straight off the message, the rest (and the
    strings of UUID features) through Feast's own converter, as ``to_dict()`` does."""
    kind = value.WhichOneof("val")
    if kind is None:
        return None
    if kind in _PLAIN_KINDS and value_type is None:
        return getattr(value, kind)
    from feast.type_map import feast_value_type_to_python_type

    return feast_value_type_to_python_type(value, value_type)
