"""Forgetting a person in the online store: the rows Feast serves for their OneID.

``lastmile forget`` removes a person from the warehouse, ``feat_*`` tables included
(:func:`lastmile.identity.forget.erase_oneid`). The online store is a copy outside it,
written by materialization and by the stream's pushes, and it would go on serving the
person's features - credit, spending, today's counters - to marketing automation until the
views' TTL ran out, or forever for an entity never overwritten. So the request also deletes
the OneID's entity rows from every feature view keyed by ``oneid``.

Feast has no "delete these entities" call, so this speaks each store's own layout, the two
lastmile configures: Feast's SQLite store (a table per view, rows keyed by the serialized
entity key) and its Redis store (one hash per entity key and project, holding every view's
features). Another store type raises :class:`UnsupportedOnlineStore`, which ``lastmile
forget`` reports, rather than claiming the person is gone.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from lastmile.config import Settings

#: The customer entity's join key: views keyed by it alone hold rows about one person.
JOIN_KEY = "oneid"


class UnsupportedOnlineStore(RuntimeError):
    """The configured online store's layout is not one this module knows how to delete from."""


def customer_views(store) -> list:
    """Feature views (batch and stream/push-fed) whose entity key is the OneID alone."""
    views = list(store.list_feature_views()) + list(store.list_stream_feature_views())
    seen: set[str] = set()
    out = []
    for fv in views:
        if list(fv.join_keys) == [JOIN_KEY] and fv.name not in seen:
            seen.add(fv.name)
            out.append(fv)
    return out


def _entity_keys(store, oneids: Sequence[str]) -> list[bytes]:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    version = store.config.entity_key_serialization_version
    return [serialize_entity_key(EntityKeyProto(join_keys=[JOIN_KEY], entity_values=[ValueProto(string_val=o)]),
                                 entity_key_serialization_version=version) for o in oneids]


def forget_online(cfg: Settings, oneids: Sequence[str]) -> int:
    """Delete ``oneids``' rows from the online store; returns how many were deleted: SQLite
    rows (Feast keeps one per entity and feature) or entity hashes (Redis: one per entity,
    holding every view). A store nobody applied yet holds nothing: 0."""
    from lastmile.features.store import feast_dir, get_store

    oneids = sorted({o for o in oneids if o})
    if not oneids or not (feast_dir(cfg) / "registry.db").exists():
        return 0
    store = get_store(cfg)
    views = customer_views(store)
    if not views:
        return 0
    keys = _entity_keys(store, oneids)
    online = store._get_provider().online_store
    kind = type(online).__name__
    config = store.config
    if kind == "SqliteOnlineStore":
        from feast.infra.online_stores.sqlite import _table_id

        conn = online._get_conn(config)
        deleted = 0
        marks = ",".join("?" * len(keys))
        for fv in views:
            table = _table_id(config.project, fv, config.registry.enable_online_feature_view_versioning)
            try:
                deleted += conn.execute(f'DELETE FROM "{table}" WHERE entity_key IN ({marks})', keys).rowcount
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
        conn.commit()
        return deleted
    if kind == "RedisOnlineStore":
        client = online._get_client(config.online_store)
        project = config.project.encode("utf-8")
        return int(client.delete(*[key + project for key in keys]))
    raise UnsupportedOnlineStore(f"cannot delete entities from a {kind}: remove OneIDs {', '.join(oneids)} "
                                 "from it by hand (lastmile knows Feast's SQLite and Redis layouts)")
