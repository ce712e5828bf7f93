"""The vectorised core: from an integer-coded link graph and the rules to clusters.

Why vectorised: a OneID run sees tens of millions of links; a Python loop per link would
take minutes. Everything here is numpy/scipy over whole arrays, except one pass in link
order over the few clusters that break a per-type limit or the merge cap. Tokens become
integers in :mod:`lastmile.identity.grouping`.

Why the result cannot depend on arrival order: every decision is a function of the *set* of
distinct links (their first-seen time, the identifier types and tokens), never of array
positions. Node ids are arbitrary (they depend on arrival order) and are only used to group.

The semantics, equal to a union-find over the links in canonical order:

1. links touching a blocked identifier are refused (``blocked_value``);
2. an identifier linked to more distinct strong identifiers than its type's threshold is
   shared, and all its links are refused (``shared_identifier``);
3. remaining links are applied strongest first (strength of the weaker end, then of the
   stronger end), then earliest first, then by token; a link that would put more identifiers
   of a type into a profile than allowed is refused (``type_limit``), one that would exceed
   the merge cap too (``merge_cap``). Components that break no limit are accepted whole,
   which is what that union-find would do, without running it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from lastmile.identity.grouping import (  # noqa: F401 - as_string_array, factorize_*: re-exported
    BLOCK_ROWS,
    as_string_array,
    ascii_rows,
    factorize_token_parts,
    factorize_tokens,
    fixed_width_bytes,
    fixed_width_words,
    mix_words,
    take_strings,
    to_pylist,
)
from lastmile.identity.identifiers import TYPE_NAMES
from lastmile.identity.rules import BLOCKED, MERGE_CAP, SHARED, TYPE_LIMIT, USED, Rules

N_TYPES = len(TYPE_NAMES)


# -- per-group reductions ------------------------------------------------------------------


def group_first_min(codes: np.ndarray, k: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group: the minimum of ``values`` and the index of the first row holding it."""
    gmin = np.full(k, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(gmin, codes, values)
    rows = np.flatnonzero(values == gmin[codes])
    first = np.empty(k, dtype=np.int64)
    first[codes[rows][::-1]] = rows[::-1]
    return gmin, first


# -- the resolution ------------------------------------------------------------------------


@dataclass
class GraphResolution:
    """Result of :func:`resolve_graph`, aligned with the node and edge arrays it was given.

    ``rep[node]`` is the node naming the node's profile (-1: blocked, no profile);
    ``edge_status[edge]`` is 0 (used) or a :data:`~lastmile.identity.rules.STATUS_REASONS` code;
    ``shared[node]`` marks identifiers judged shared.
    """

    rep: np.ndarray
    edge_status: np.ndarray
    shared: np.ndarray
    clusters: int


def naming_key(node_type: np.ndarray, first_seen: np.ndarray, rules: Rules) -> np.ndarray:
    """Sort key deciding which identifier names a profile: earliest seen, then strongest type.

    Packed into one int64 (first-seen ms * 8 + strength rank) so the per-cluster minimum is
    a single vectorised reduction; exact ties are broken by token afterwards.
    """
    strength = rules.strength_by_code()
    # rank 0 = strongest; equal strengths share a rank so the token, not the type, decides
    rank = (strength[None, :] > strength[:, None]).sum(axis=1).astype(np.int64)
    return first_seen.astype(np.int64) * 8 + rank[node_type]


def _limited_pass(edges: np.ndarray, u: np.ndarray, v: np.ndarray, node_type: np.ndarray,
                  edge_first: np.ndarray, tokens: pa.Array, rules: Rules,
                  status: np.ndarray) -> dict[int, int]:
    """Union-find in canonical order over the links of over-limit components.

    Returns ``root[node]`` for the nodes involved; marks refused links in ``status``.
    """
    strength = rules.strength_by_code()
    limit = rules.limit_by_code().tolist()
    eu, ev = u[edges], v[edges]
    nodes = np.unique(np.concatenate([eu, ev]))
    tok = dict(zip(nodes.tolist(), to_pylist(take_strings(tokens, nodes))))
    su, sv = strength[node_type[eu]], strength[node_type[ev]]
    order_keys = []
    # plain Python values (numpy scalars cost ~10x more per access in this loop)
    for a_node, b_node, sa, sb, t, e in zip(eu.tolist(), ev.tolist(), np.minimum(su, sv).tolist(),
                                            np.maximum(su, sv).tolist(), edge_first[edges].tolist(), edges.tolist()):
        a, b = tok[a_node], tok[b_node]
        order_keys.append((-sa, -sb, t, min(a, b), max(a, b), e))
    order_keys.sort()

    parent: dict[int, int] = {int(n): int(n) for n in nodes}
    counts: dict[int, list[int]] = {}
    merges: dict[int, int] = {}
    for n in parent:
        c = [0] * N_TYPES
        c[int(node_type[n])] = 1
        counts[n] = c
        merges[n] = 0

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for *_, e in order_keys:
        ra, rb = find(int(u[e])), find(int(v[e]))
        if ra == rb:
            continue
        ca, cb = counts[ra], counts[rb]
        if any(ca[t] + cb[t] > limit[t] for t in range(N_TYPES)):
            status[e] = TYPE_LIMIT
            continue
        if merges[ra] + merges[rb] + 1 > rules.max_merges:
            status[e] = MERGE_CAP
            continue
        if ra > rb:
            ra, rb = rb, ra
        parent[rb] = ra
        counts[ra] = [x + y for x, y in zip(ca, cb)]
        merges[ra] += merges[rb] + 1
        del counts[rb], merges[rb]
    return {n: find(n) for n in parent}


@dataclass(frozen=True)
class Identities:
    """People as told by strong identifiers: components of the usable strong-strong links."""

    label: np.ndarray  # per node: its identity (0..count-1)
    count: int
    links: np.ndarray  # per link: usable and joining two strong identifiers


def identities(n: int, u: np.ndarray, v: np.ndarray, ok: np.ndarray, strong: np.ndarray) -> Identities:
    """Strong identifiers linked to each other directly (an openid and its unionid) are one person."""
    links = ok & strong[u] & strong[v]
    count, label = _components(n, u[links], v[links])
    return Identities(label=label, count=count, links=links)


def strong_identities(n: int, u: np.ndarray, v: np.ndarray, ok: np.ndarray, strong: np.ndarray,
                      ids: Identities | None = None) -> np.ndarray:
    """How many distinct people each identifier is linked to, judged by strong identifiers.

    For a weak identifier (a phone, a device) its strong neighbours are grouped into
    identities (:func:`identities`). A household tablet seen with two people's WeChat
    accounts counts 2; one person's phone seen with their unionid, openid and member card
    counts 1 when those were ever seen together. A strong identifier's own neighbours all
    share its identity by construction, so for strong types this counts distinct strong
    neighbours: links are distinct, so that is its number of links to strong identifiers,
    and only the weak identifiers' (identifier, identity) pairs need de-duplicating.
    """
    ids = ids if ids is not None else identities(n, u, v, ok, strong)
    counts = np.bincount(np.concatenate([u[ids.links], v[ids.links]]), minlength=n)
    strong_u, strong_v = strong[u], strong[v]
    weak_u, weak_v = ok & ~strong_u & strong_v, ok & strong_u & ~strong_v
    if not (weak_u.any() or weak_v.any()):
        return counts
    node = np.concatenate([u[weak_u], v[weak_v]])
    seen_as = ids.label[np.concatenate([v[weak_u], u[weak_v]])]
    pairs = np.unique(node * np.int64(n) + seen_as)
    return counts + np.bincount(pairs // n, minlength=n)


def _components(n: int, u: np.ndarray, v: np.ndarray) -> tuple[int, np.ndarray]:
    """scipy's connected components of ``n`` nodes joined by links ``u``-``v``."""
    graph = csr_matrix((np.ones(len(u), dtype=np.int8), (u, v)), shape=(n, n))
    k, label = connected_components(graph, directed=False)
    return int(k), label


def usable_components(n: int, u: np.ndarray, v: np.ndarray, ok: np.ndarray, ids: Identities | None
                      ) -> tuple[int, np.ndarray]:
    """Components of the usable links (int64 labels).

    When every strong-strong link that made the identities is still usable, each identity
    lies inside one component, so the components are those of the identities joined by the
    remaining usable links: a smaller graph (the ~40% strong-strong links and the nodes
    they merge drop out) with the same partition.
    """
    if ids is not None and ids.links.any() and not (ids.links & ~ok).any():
        rest = ok & ~ids.links
        k, label = _components(ids.count, ids.label[u[rest]], ids.label[v[rest]])
        return k, label.astype(np.int64)[ids.label]
    k, label = _components(n, u[ok], v[ok])
    return k, label.astype(np.int64)


def resolve_graph(node_type: np.ndarray, node_first_seen: np.ndarray, tokens: pa.Array,
                  blocked: np.ndarray, u: np.ndarray, v: np.ndarray, edge_first_seen: np.ndarray,
                  rules: Rules) -> GraphResolution:
    """Cluster ``n`` identifiers joined by ``m`` distinct links under ``rules``.

    ``u``/``v`` are node ids (no duplicates, no self-links); ``tokens[node]`` is only read
    for tie-breaks, so it may be large and stays in arrow.
    """
    n, m = len(node_type), len(u)
    status = np.zeros(m, dtype=np.int8)
    if m:
        status[blocked[u] | blocked[v]] = BLOCKED
    # Shared identifiers: distinct strong neighbours per node over the links still usable.
    shared = np.zeros(n, dtype=bool)
    ids = None
    if m:
        ok = status == USED
        strong = rules.strong_by_code()[node_type]
        ids = identities(n, u, v, ok, strong)
        shared = strong_identities(n, u, v, ok, strong, ids) > rules.shared_threshold_by_code()[node_type]
        status[ok & (shared[u] | shared[v])] = SHARED
    ok = status == USED
    k, label = usable_components(n, u, v, ok, ids)
    k = _enforce_limits(k, label, u, v, ok, node_type, edge_first_seen, tokens, rules, status)
    label[blocked] = -1
    rep, clusters = _representatives(label, k, naming_key(node_type, node_first_seen, rules), tokens)
    return GraphResolution(rep=rep, edge_status=status, shared=shared, clusters=clusters)


def _enforce_limits(k: int, label: np.ndarray, u: np.ndarray, v: np.ndarray, ok: np.ndarray, node_type: np.ndarray,
                    edge_first_seen: np.ndarray, tokens: pa.Array, rules: Rules, status: np.ndarray) -> int:
    """Re-cluster the components that break a limit, link by link; returns the label count.

    A component with more identifiers of a type than allowed, or more merges than the cap,
    is rebuilt by :func:`_limited_pass`; its nodes get new labels ``k, k+1, ...`` (one per
    resulting cluster) and its old label is left empty.
    """
    per_type = np.bincount(label * N_TYPES + node_type, minlength=k * N_TYPES).reshape(k, N_TYPES)
    size = np.bincount(label, minlength=k)
    over = (per_type > rules.limit_by_code()[None, :]).any(axis=1) | (size - 1 > rules.max_merges)
    if not over.any():
        return k
    edges = np.flatnonzero(ok & over[label[u]])
    roots = _limited_pass(edges, u, v, node_type, edge_first_seen, tokens, rules, status)
    involved = np.fromiter(roots.keys(), dtype=np.int64, count=len(roots))
    root = np.fromiter(roots.values(), dtype=np.int64, count=len(roots))
    distinct, new_label = np.unique(root, return_inverse=True)
    label[involved] = k + new_label
    return k + len(distinct)


def _representatives(label: np.ndarray, k: int, key: np.ndarray, tokens: pa.Array) -> tuple[np.ndarray, int]:
    """Per node, the node naming its cluster (-1: no cluster), and the number of clusters.

    The name giver is the node with the smallest naming key (earliest, then strongest),
    then the smallest token. Labels are ``0..k-1`` (some may be empty) or -1.
    """
    live = label >= 0
    nodes = None if live.all() else np.flatnonzero(live)
    lab = label if nodes is None else label[nodes]
    lkey = key if nodes is None else key[nodes]
    gmin = np.full(k, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(gmin, lab, lkey)
    at_min = np.flatnonzero(lkey == gmin[lab])
    rep_of = np.zeros(k, dtype=np.int64)
    rep_of[lab[at_min]] = at_min if nodes is None else nodes[at_min]  # a tie is broken below
    tied = np.bincount(lab[at_min], minlength=k) > 1
    if tied.any():
        cand = at_min[tied[lab[at_min]]]
        _break_ties(lab[cand], cand if nodes is None else nodes[cand], tokens, rep_of)
    used = np.zeros(k, dtype=bool)
    used[lab] = True
    rep = np.full(len(label), -1, dtype=np.int64)
    if nodes is None:
        rep[:] = rep_of[lab]
    else:
        rep[nodes] = rep_of[lab]
    return rep, int(used.sum())


def _break_ties(cand_groups: np.ndarray, cand_nodes: np.ndarray, tokens: pa.Array, rep_of: np.ndarray) -> None:
    """Clusters whose earliest identifiers tie on time and type: the smallest token names it."""
    cand_tokens = take_strings(tokens, cand_nodes)
    data = fixed_width_bytes(cand_tokens)
    if data is not None:
        # one width: bytewise order is string order (UTF-8 preserves code point order), and
        # big-endian words compare as their bytes do
        data = np.ascontiguousarray(data)
        columns = data.reshape(-1).view(">u8").reshape(len(data), -1) if data.shape[1] % 8 == 0 else data
        order = np.lexsort([columns[:, j] for j in range(columns.shape[1] - 1, -1, -1)] + [cand_groups])
        first = np.ones(len(order), dtype=bool)
        first[1:] = cand_groups[order][1:] != cand_groups[order][:-1]
        rep_of[cand_groups[order][first]] = cand_nodes[order][first]
        return
    best: dict[int, tuple[str, int]] = {}
    for g, t, node in zip(cand_groups.tolist(), cand_tokens.to_pylist(), cand_nodes.tolist()):
        if g not in best or t < best[g][0]:
            best[g] = (t, node)
    for g, (_, node) in best.items():
        rep_of[g] = node


def blocked_mask(tokens: pa.Array, blocked_tokens: frozenset[str]) -> np.ndarray:
    """``True`` for nodes whose token is blocked by value."""
    if not blocked_tokens or len(tokens) == 0:
        return np.zeros(len(tokens), dtype=bool)
    return np.asarray(pc.is_in(tokens, value_set=pa.array(sorted(blocked_tokens), type=pa.string())), dtype=bool)


# -- OneID names -----------------------------------------------------------------------------

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
ONEID_PREFIX = "oid_"


def _hex_digits(key: np.ndarray, digits: int) -> np.ndarray:
    """The first ``digits`` hex digits of each uint64 (big-endian), as an (n, digits) byte matrix."""
    octets = key.astype(">u8").view(np.uint8).reshape(len(key), 8)
    out = np.empty((len(key), 16), dtype=np.uint8)
    out[:, 0::2] = _HEX[octets >> 4]
    out[:, 1::2] = _HEX[octets & 0xF]
    return out[:, :digits]


def _oneid_bytes(words: np.ndarray) -> np.ndarray:
    """OneID names of fixed-width tokens as an (n, 24) ASCII matrix, block by block."""
    prefix = np.frombuffer(ONEID_PREFIX.encode(), dtype=np.uint8)
    out = np.empty((len(words), len(prefix) + 20), dtype=np.uint8)
    out[:, : len(prefix)] = prefix
    for lo in range(0, len(words), BLOCK_ROWS):
        block = words[lo : lo + BLOCK_ROWS]
        rows = slice(lo, lo + len(block))
        out[rows, len(prefix) : len(prefix) + 16] = _hex_digits(mix_words(block, 11), 16)
        out[rows, len(prefix) + 16 :] = _hex_digits(mix_words(block, 13), 4)
    return out


def oneid_names(tokens: pa.Array) -> list[str]:
    """The OneID named after each token: ``oid_`` + 20 hex digits (80 bits) of a hash of it.

    A pure function of the token, so a profile keeps its OneID for as long as its earliest
    identifier stays in it, on any machine and in any run. Fixed-width tokens (the hasher's)
    are hashed with :func:`mix_words`, vectorised; other tokens with BLAKE2b.
    """
    import hashlib

    arr = as_string_array(tokens)
    if len(arr) == 0:
        return []
    words = fixed_width_words(arr)
    if words is not None:
        return ascii_rows(_oneid_bytes(words))
    out: list[str | None] = [None] * len(arr)
    lengths = np.asarray(pc.binary_length(arr), dtype=np.int64)
    for width in np.unique(lengths).tolist():
        rows = np.flatnonzero(lengths == width)
        subset = arr.take(pa.array(rows))
        words = fixed_width_words(subset) if width % 8 == 0 and width else None
        if words is not None:
            values = ascii_rows(_oneid_bytes(words))
        else:
            values = [ONEID_PREFIX + hashlib.blake2b(t.encode(), digest_size=10).hexdigest() for t in subset.to_pylist()]
        for r, name in zip(rows.tolist(), values):
            out[r] = name
    return out  # type: ignore[return-value]
