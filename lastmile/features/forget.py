"""Forgetting a person in the online store: every row Feast serves that is keyed by their OneID.

``lastmile forget`` removes a person from the warehouse, ``feat_*`` tables included
(:func:`lastmile.identity.forget.erase_oneid`). The online store is a copy outside it,
written by materialization and by the stream's pushes, and it would go on serving the
person's features - credit, spending, today's counters, what they buy and when - to
marketing automation until the views' TTL ran out, or forever for an entity never
overwritten. So the request also deletes the entity rows of every online view whose entity
key includes ``oneid``, whatever its other keys (``next_purchase`` is keyed by OneID and SKU).

Deleted must mean gone: on SQLite the rows are deleted with ``secure_delete`` on, the WAL is
checkpointed and truncated, and the file is searched for the OneID's bytes (rebuilt with
``VACUUM`` if any are left in its free space) before :func:`forget_online` returns. On Redis
the hash of every entity key holding the OneID is deleted (found by SCAN for composite keys).

Feast has no "delete these entities" call, so the layouts are spoken by
:mod:`lastmile.features.feast_adapter`. Another online store type raises
:class:`UnsupportedOnlineStore`, which ``lastmile forget`` reports, rather than claiming the
person is gone.
"""

from __future__ import annotations

from collections.abc import Sequence

from lastmile.config import Settings
from lastmile.features.feast_adapter import (  # noqa: F401  (the errors callers catch)
    OnlineForgetError,
    TracesRemain,
    UnsupportedOnlineStore,
    forget_entities,
)

#: The customer entity's join key: a view whose key holds it has rows about one person.
JOIN_KEY = "oneid"


def person_views(store) -> list:
    """Feature views (batch and stream/push-fed) whose entity key includes the OneID."""
    views = list(store.list_feature_views()) + list(store.list_stream_feature_views())
    seen: set[str] = set()
    out = []
    for fv in views:
        if JOIN_KEY in fv.join_keys and fv.name not in seen:
            seen.add(fv.name)
            out.append(fv)
    return out


def forget_online(cfg: Settings, oneids: Sequence[str]) -> int:
    """Delete ``oneids``' rows from the online store, physically; returns how many were
    deleted: SQLite rows (Feast keeps one per entity and feature) or entity hashes (Redis: one
    per entity key, holding every view of that key). A store nobody applied yet holds nothing: 0.

    Raises :class:`OnlineForgetError` (:class:`UnsupportedOnlineStore` for a store type whose
    layout is unknown, :class:`TracesRemain` if the bytes could not be removed from the file)
    when the person may still be in the online store.
    """
    from lastmile.features.store import feast_dir, get_store

    oneids = sorted({o for o in oneids if o})
    if not oneids or not (feast_dir(cfg) / "registry.db").exists():
        return 0
    store = get_store(cfg)
    views = person_views(store)
    if not views:
        return 0
    return forget_entities(store, views, JOIN_KEY, oneids)
