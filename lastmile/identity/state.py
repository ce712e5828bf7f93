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

from dataclasses import asdict, dataclass
from collections.abc import Sequence
from typing import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from lastmile.identity import graph as g
from lastmile.identity import grouping as gr
from lastmile.identity.identifiers import TYPE_NAMES
from lastmile.identity.resolver import IdentityResolver
from lastmile.identity.rules import STATUS_REASONS

TABLES = ("identity_nodes", "identity_edges", "identity_oneids", "identity_refusals", "identity_changes")
_STATUS_NAMES = np.array(["used"] + [STATUS_REASONS[c] for c in sorted(STATUS_REASONS)], dtype=object)
_TYPE_NAMES = np.array(TYPE_NAMES, dtype=object)
REFUSAL_COLUMNS = ["event_id", "event_type", "occurred_at_ms", "role", "id_type", "token", "reason", "detail"]
CHANGE_COLUMNS = ["run", "kind", "from_oneid", "to_oneid", "identifiers"]


#: Which rows of each table to build (an index array per table; a missing table: every row).
Selection = Mapping[str, np.ndarray]


def to_rows(r: IdentityResolver, select: Selection | None = None) -> dict[str, pd.DataFrame]:
    """All five tables of a resolver's state, or the rows of them that ``select`` names.

    Building only the selected rows matters for a kept resolver (the stream's): strings
    become Python objects only for the rows written, not for the whole state every run.
    """
    select = select or {}

    def rows_of(table: str, n: int) -> np.ndarray | slice:
        picked = select.get(table)
        return slice(0, n) if picked is None else picked

    names = np.array(r._oid_names + [""], dtype=object)  # index -1 -> ""
    at = rows_of("identity_nodes", len(r._tok))
    node_tokens = _strings(r._tok, at)
    nodes = pd.DataFrame({
        "token": node_tokens,
        "id_type": _TYPE_NAMES[r._type[at].astype(np.int64)],
        "first_seen_ms": r._first[at],
        "last_seen_ms": r._last[at],
        "oneid": names[r._oidc[at]],
        "shared": r._shared[at],
    })
    at = rows_of("identity_edges", len(r._u))
    u, v = r._u[at], r._v[at]
    edges = pd.DataFrame({
        "token_a": _strings(r._tok, u), "type_a": _TYPE_NAMES[r._type[u].astype(np.int64)],
        "token_b": _strings(r._tok, v), "type_b": _TYPE_NAMES[r._type[v].astype(np.int64)],
        "first_seen_ms": r._efirst[at], "last_seen_ms": r._elast[at], "count": r._ecount[at],
        "first_event_id": _strings(r._eevent, at),
        "first_event_type": _strings(r._eetype, at),
        "status": _STATUS_NAMES[r._status[at].astype(np.int64)],
    })
    at = rows_of("identity_oneids", len(r._oid_names))
    surv = names[r._oid_surv] if len(r._oid_surv) else np.array([], dtype=object)
    oneids = pd.DataFrame({
        "oneid": np.array(r._oid_names, dtype=object)[at] if r._oid_names else np.array([], dtype=object),
        "origin_token": np.array(r._oid_origin, dtype=object)[at] if r._oid_origin else np.array([], dtype=object),
        "survivor": surv[at],
    })
    at = rows_of("identity_refusals", len(r._refusals))
    refusals = pd.DataFrame(_pick(r._refusals, at), columns=REFUSAL_COLUMNS)
    at = rows_of("identity_changes", len(r.changes))
    changes = pd.DataFrame([asdict(c) for c in _pick(r.changes, at)],
                           columns=["kind", "from_oneid", "to_oneid", "identifiers", "run"])
    return {
        "identity_nodes": nodes,
        "identity_edges": edges,
        "identity_oneids": oneids,
        "identity_refusals": refusals,
        "identity_changes": changes[CHANGE_COLUMNS],
    }


def _strings(arr: pa.Array, at: np.ndarray | slice) -> np.ndarray:
    """Rows of a string array as an object array (a whole-array slice without a take)."""
    if isinstance(at, slice):
        return arr.to_numpy(zero_copy_only=False)
    return gr.take_strings(arr, at).to_numpy(zero_copy_only=False) if len(at) else np.array([], dtype=object)


def _pick(items: list, at: np.ndarray | slice) -> list:
    return items[at] if isinstance(at, slice) else [items[i] for i in at.tolist()]


@dataclass(frozen=True)
class Snapshot:
    """A resolver's state as it was last written (or read back): what :func:`changed_since` compares to.

    Arrays rather than frames: taking one copies a few numeric arrays (the resolver updates
    some in place) and keeps references to its immutable string arrays, so a kept resolver
    pays nothing per run for the rows that did not change.
    """

    nodes: tuple[np.ndarray, ...]  # type, first, last, oneid code, shared
    edges: tuple[np.ndarray, ...]  # u, v, first, last, count, status
    edge_strings: tuple[pa.Array, pa.Array]  # first event id and type
    oneids: tuple[np.ndarray, np.ndarray]  # survivor code, origin token
    refusals: int
    changes: int


def snapshot(r: IdentityResolver) -> Snapshot:
    return Snapshot(
        nodes=(r._type.copy(), r._first.copy(), r._last.copy(), r._oidc.copy(), r._shared.copy()),
        edges=(r._u.copy(), r._v.copy(), r._efirst.copy(), r._elast.copy(), r._ecount.copy(), r._status.copy()),
        edge_strings=(r._eevent, r._eetype),
        oneids=(r._oid_surv.copy(), np.array(r._oid_origin, dtype=object)),
        refusals=len(r._refusals), changes=len(r.changes),
    )


def changed_since(r: IdentityResolver, before: Snapshot) -> dict[str, np.ndarray]:
    """Per table, the rows that differ from ``before`` or are new (a :data:`Selection`).

    Identifiers, links and OneIDs keep their positions between runs (the resolver appends;
    see ``IdentityResolver._merge_links``) and the logs only grow, so comparing position by
    position finds exactly what changed. A table that shrank (a forget request removed
    rows) is selected whole: a superset, never a miss.
    """
    import pyarrow.compute as pc

    def differs(now: tuple[np.ndarray, ...], then: tuple[np.ndarray, ...], extra: Sequence[np.ndarray] = ()) -> np.ndarray | None:
        n_now, n_then = len(now[0]), len(then[0])
        if n_now < n_then:
            return None
        moved = np.zeros(n_then, dtype=bool)
        for a, b in zip(now, then):
            moved |= a[:n_then] != b
        for m in extra:
            moved |= m
        return np.concatenate([np.flatnonzero(moved), np.arange(n_then, n_now, dtype=np.int64)])

    selection: dict[str, np.ndarray] = {}
    nodes = differs((r._type, r._first, r._last, r._oidc, r._shared), before.nodes)
    edges_now = (r._u, r._v, r._efirst, r._elast, r._ecount, r._status)
    n_then = len(before.edges[0])
    strings = []
    if len(r._u) >= n_then and n_then:
        for now, then in zip((r._eevent, r._eetype), before.edge_strings):
            strings.append(np.asarray(pc.not_equal(now.slice(0, n_then), then), dtype=bool))
    edges = differs(edges_now, before.edges, strings)
    origin_now = np.array(r._oid_origin, dtype=object)
    oneids = differs((r._oid_surv, origin_now), before.oneids)
    for table, picked in (("identity_nodes", nodes), ("identity_edges", edges), ("identity_oneids", oneids)):
        if picked is not None:
            selection[table] = picked
    if len(r._refusals) >= before.refusals:
        selection["identity_refusals"] = np.arange(before.refusals, len(r._refusals), dtype=np.int64)
    if len(r.changes) >= before.changes:
        selection["identity_changes"] = np.arange(before.changes, len(r.changes), dtype=np.int64)
    return selection


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


def from_rows(r: IdentityResolver, rows: Mapping[str, pd.DataFrame]) -> IdentityResolver:
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
