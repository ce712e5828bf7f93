"""Row formats of the resolver state, for the warehouse (ReplacingMergeTree tables).

Why rows and not a pickle: the state must outlive the process and be queryable (which OneID
is this token now? why did these two not merge?), and a new run on another machine must
continue where the last stopped. Each table has a natural key, so writing a table again
after a run simply replaces the previous version of each row.

Tables (pandas frames; times are UTC epoch milliseconds):

``identity_nodes`` (key ``token``): token, id_type, first_seen_ms, last_seen_ms, oneid
    ("" when blocked), shared (bool).
``identity_edges`` (key ``token_a, token_b``): token_a, type_a, token_b, type_b,
    first_seen_ms, last_seen_ms, count, first_event_id, first_event_type, status ("used" or
    the refusal reason).
``identity_oneids`` (key ``oneid``): oneid, origin_token ("" once forgotten), survivor
    (the OneID standing for it now; itself while alive; "" when gone).
``identity_refusals`` (append-only): event_id, event_type, occurred_at_ms, role, id_type,
    token ("" when the value itself was refused), reason, detail.
``identity_changes`` (append-only): run, kind, from_oneid, to_oneid, identifiers.

The audit of refused links is ``identity_edges`` where status != "used" plus
``identity_refusals``; :func:`audit` joins both into one frame.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Mapping

import numpy as np
import pandas as pd

from lastmile.identity import graph as g
from lastmile.identity.identifiers import TYPE_NAMES
from lastmile.identity.rules import STATUS_REASONS

if TYPE_CHECKING:
    from lastmile.identity.resolver import IdentityResolver

TABLES = ("identity_nodes", "identity_edges", "identity_oneids", "identity_refusals", "identity_changes")
_STATUS_NAMES = np.array(["used"] + [STATUS_REASONS[c] for c in sorted(STATUS_REASONS)], dtype=object)
_TYPE_NAMES = np.array(TYPE_NAMES, dtype=object)
REFUSAL_COLUMNS = ["event_id", "event_type", "occurred_at_ms", "role", "id_type", "token", "reason", "detail"]
CHANGE_COLUMNS = ["run", "kind", "from_oneid", "to_oneid", "identifiers"]


def to_rows(r: "IdentityResolver") -> dict[str, pd.DataFrame]:
    """All five tables of a resolver's state."""
    names = np.array(r._oid_names + [""], dtype=object)  # index -1 -> ""
    tokens = r._tok.to_numpy(zero_copy_only=False)
    nodes = pd.DataFrame({
        "token": tokens,
        "id_type": _TYPE_NAMES[r._type.astype(np.int64)],
        "first_seen_ms": r._first,
        "last_seen_ms": r._last,
        "oneid": names[r._oidc],
        "shared": r._shared,
    })
    edges = pd.DataFrame({
        "token_a": tokens[r._u], "type_a": _TYPE_NAMES[r._type[r._u].astype(np.int64)],
        "token_b": tokens[r._v], "type_b": _TYPE_NAMES[r._type[r._v].astype(np.int64)],
        "first_seen_ms": r._efirst, "last_seen_ms": r._elast, "count": r._ecount,
        "first_event_id": r._eevent.to_numpy(zero_copy_only=False),
        "first_event_type": r._eetype.to_numpy(zero_copy_only=False),
        "status": _STATUS_NAMES[r._status.astype(np.int64)],
    })
    oneids = pd.DataFrame({
        "oneid": r._oid_names,
        "origin_token": r._oid_origin,
        "survivor": names[r._oid_surv] if len(r._oid_surv) else np.array([], dtype=object),
    })
    refusals = pd.DataFrame(list(r._refusals), columns=REFUSAL_COLUMNS)
    changes = pd.DataFrame([asdict(c) for c in r.changes], columns=["kind", "from_oneid", "to_oneid", "identifiers", "run"])
    return {
        "identity_nodes": nodes,
        "identity_edges": edges,
        "identity_oneids": oneids,
        "identity_refusals": refusals,
        "identity_changes": changes[CHANGE_COLUMNS],
    }


def audit(rows: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Every observation not used to merge, with its reason, in one frame."""
    edges = rows["identity_edges"]
    refused = edges[edges["status"] != "used"]
    graph_part = pd.DataFrame({
        "event_id": refused["first_event_id"], "event_type": refused["first_event_type"],
        "occurred_at_ms": refused["first_seen_ms"], "id_type": refused["type_a"] + "|" + refused["type_b"],
        "token": refused["token_a"] + "|" + refused["token_b"], "reason": refused["status"], "detail": "",
    })
    extraction = rows["identity_refusals"].drop(columns=["role"])
    return pd.concat([extraction, graph_part], ignore_index=True)


def from_rows(r: "IdentityResolver", rows: Mapping[str, pd.DataFrame]) -> "IdentityResolver":
    """Load tables written by :func:`to_rows` into an empty resolver ``r``.

    The next :meth:`~IdentityResolver.resolve` under unchanged rules logs no change: the
    OneID assignment, the map of old names and the refusals are all restored.
    """
    nodes = rows["identity_nodes"]
    edges = rows["identity_edges"]
    oneids = rows["identity_oneids"]
    r._tok = g.as_string_array(nodes["token"].to_numpy(dtype=object))
    n = len(nodes)
    r._type = nodes["id_type"].map({t: i for i, t in enumerate(TYPE_NAMES)}).to_numpy(dtype=np.int8)
    r._first = nodes["first_seen_ms"].to_numpy(dtype=np.int64)
    r._last = nodes["last_seen_ms"].to_numpy(dtype=np.int64)
    r._shared = nodes["shared"].to_numpy(dtype=bool)
    r._oid_names = oneids["oneid"].tolist()
    r._oid_origin = oneids["origin_token"].fillna("").tolist()
    code = {name: i for i, name in enumerate(r._oid_names)}
    r._oid_surv = oneids["survivor"].map(lambda s: code.get(s, -1)).to_numpy(dtype=np.int64) if len(oneids) else np.zeros(0, dtype=np.int64)
    r._oidc = nodes["oneid"].map(lambda s: code.get(s, -1)).to_numpy(dtype=np.int64) if n else np.zeros(0, dtype=np.int64)
    node_of = pd.Index(nodes["token"])
    origin_node = node_of.get_indexer(pd.Series(r._oid_origin, dtype=object))
    r._named = np.full(n, -1, dtype=np.int64)
    has = origin_node >= 0
    r._named[origin_node[has]] = np.flatnonzero(has)
    r._retired = {r._oid_names[c]: c for c in np.flatnonzero(~has).tolist()}
    u = node_of.get_indexer(edges["token_a"])
    v = node_of.get_indexer(edges["token_b"])
    if (u < 0).any() or (v < 0).any():
        raise ValueError("identity_edges references tokens missing from identity_nodes")
    r._u, r._v = np.minimum(u, v).astype(np.int64), np.maximum(u, v).astype(np.int64)
    r._efirst = edges["first_seen_ms"].to_numpy(dtype=np.int64)
    r._elast = edges["last_seen_ms"].to_numpy(dtype=np.int64)
    r._ecount = edges["count"].to_numpy(dtype=np.int64)
    r._eevent = g.as_string_array(edges["first_event_id"].to_numpy(dtype=object))
    r._eetype = g.as_string_array(edges["first_event_type"].to_numpy(dtype=object))
    status_code = {name: i for i, name in enumerate(_STATUS_NAMES)}
    r._status = edges["status"].map(status_code).fillna(0).to_numpy(dtype=np.int8)
    r._refusals = rows.get("identity_refusals", pd.DataFrame(columns=REFUSAL_COLUMNS)).to_dict("records")
    changes = rows.get("identity_changes")
    r.run = int(changes["run"].max()) if changes is not None and len(changes) else 0
    return r
