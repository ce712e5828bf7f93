"""The vectorised core: from an integer-coded link graph and the rules to clusters.

Why vectorised: a OneID run sees tens of millions of links; a Python loop per link would
take minutes. Everything here is numpy/scipy over whole arrays, except one pass in link
order over the few clusters that break a per-type limit or the merge cap.

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
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from lastmile.identity.identifiers import TYPE_NAMES
from lastmile.identity.rules import BLOCKED, MERGE_CAP, SHARED, TYPE_LIMIT, USED, Rules

N_TYPES = len(TYPE_NAMES)


# -- tokens to integers --------------------------------------------------------------------


def as_string_array(values: object) -> pa.Array:
    """Any column of tokens (arrow, numpy, pandas, list) as one arrow ``string`` array."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        arr = values
    elif isinstance(values, pd.Series):
        arr = pa.array(values.to_numpy(dtype=object), type=pa.string())
    else:
        arr = pa.array(values, type=pa.string())
    if pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    if arr.null_count:
        raise ValueError("token column has nulls")
    return arr


def _fixed_width_words(arr: pa.Array) -> np.ndarray | None:
    """The tokens as an (n, width/8) uint64 matrix when all have one width divisible by 8."""
    n = len(arr)
    if n == 0:
        return None
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + n + 1]
    width = int(offsets[1] - offsets[0])
    if width == 0 or width % 8 or int(offsets[-1] - offsets[0]) != width * n:
        return None
    if not np.all(np.diff(offsets) == width):
        return None
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return data.view("<u8").reshape(n, width // 8)


_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


def mix_words(words: np.ndarray, seed: int) -> np.ndarray:
    """A 64-bit hash per row of little-endian words (splitmix64 finaliser, chained).

    Plain uint64 arithmetic with fixed constants: the same bits on every platform and numpy
    version, so it may name persisted things (OneIDs) as well as find equal rows.
    """
    key = np.full(len(words), np.uint64(seed), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(words.shape[1]):
            x = (key ^ words[:, j]) * _M1
            x ^= x >> np.uint64(29)
            x *= _M2
            x ^= x >> np.uint64(32)
            key = x
        key *= _M3
        key ^= key >> np.uint64(29)
    return key


def _fold(words: np.ndarray, seed: int) -> np.ndarray:
    """A cheap 64-bit fold of a row of words (multiply-xor); only used to find equal rows."""
    key = words[:, 0] ^ np.uint64(seed)
    with np.errstate(over="ignore"):
        for j in range(1, words.shape[1]):
            key = key * _M1
            key ^= words[:, j]
    return key


def factorize_tokens(tokens: object) -> tuple[np.ndarray, pa.Array]:
    """``codes`` (int64, first appearance order) and the unique tokens.

    Fast path for fixed-width tokens (what :class:`IdentifierHasher` makes): factorise a
    64-bit fold of the first half of the bytes, then check a fold of the second half of every
    row against its group's first row. For hash-like tokens two different tokens would have to
    collide on both, a ~2^-128 event, the same odds as the 128-bit tokens colliding
    themselves; structured tokens that do collide are detected and take the exact path. On a detected
    collision, or for tokens of mixed width, arrow's exact dictionary encoding is used.
    """
    arr = as_string_array(tokens)
    words = _fixed_width_words(arr)
    if words is not None:
        half = max(1, words.shape[1] // 2)
        rest = words[:, half:] if words.shape[1] > half else words
        codes, uniq = pd.factorize(_fold(words[:, :half], 1), size_hint=max(16, len(arr) // 4))
        first = np.empty(len(uniq), dtype=np.int64)
        first[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)
        check = _fold(rest, 2)
        if np.array_equal(check, check[first[codes]]):
            return codes.astype(np.int64, copy=False), arr.take(pa.array(first))
    encoded = arr.dictionary_encode()
    return np.asarray(encoded.indices, dtype=np.int64), encoded.dictionary


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
    nodes = np.unique(np.concatenate([u[edges], v[edges]]))
    tok = dict(zip(nodes.tolist(), tokens.take(pa.array(nodes)).to_pylist()))
    su, sv = strength[node_type[u[edges]]], strength[node_type[v[edges]]]
    order_keys = []
    for i, e in enumerate(edges.tolist()):
        a, b = tok[int(u[e])], tok[int(v[e])]
        lo_s, hi_s = (su[i], sv[i]) if su[i] <= sv[i] else (sv[i], su[i])
        order_keys.append((-int(lo_s), -int(hi_s), int(edge_first[e]), min(a, b), max(a, b), e))
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


def strong_identities(n: int, u: np.ndarray, v: np.ndarray, ok: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """How many distinct people each identifier is linked to, judged by strong identifiers.

    For a weak identifier (a phone, a device) its strong neighbours are grouped into
    identities: strong identifiers linked to each other directly (an openid and the unionid
    it came with) are one person. A household tablet seen with two people's WeChat accounts
    counts 2; one person's phone seen with their unionid, openid and member card counts 1
    when those were ever seen together. A strong identifier's own neighbours all share its
    identity by construction, so for strong types this counts distinct strong neighbours.
    """
    both = ok & strong[u] & strong[v]
    _, identity = connected_components(
        csr_matrix((np.ones(int(both.sum()), dtype=np.int8), (u[both], v[both])), shape=(n, n)), directed=False)
    to_strong_v, to_strong_u = ok & strong[v], ok & strong[u]
    node = np.concatenate([u[to_strong_v], v[to_strong_u]])
    # strong nodes: count neighbours themselves; weak nodes: count their neighbours' identities
    seen_as = np.concatenate([v[to_strong_v], u[to_strong_u]])
    group = np.where(strong[node], seen_as, n + identity[seen_as])
    if not len(node):
        return np.zeros(n, dtype=np.int64)
    pairs = np.unique(node.astype(np.int64) * (2 * n + 1) + group)
    return np.bincount(pairs // (2 * n + 1), minlength=n)


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
    if m:
        ok = status == USED
        strong = rules.strong_by_code()[node_type]
        shared = strong_identities(n, u, v, ok, strong) > rules.shared_threshold_by_code()[node_type]
        status[ok & (shared[u] | shared[v])] = SHARED
    ok = status == USED
    graph = csr_matrix((np.ones(int(ok.sum()), dtype=np.int8), (u[ok], v[ok])), shape=(n, n))
    k, label = connected_components(graph, directed=False)
    label = label.astype(np.int64)

    # Over-limit components: more of a type than allowed, or more merges than the cap.
    per_type = np.bincount(label * N_TYPES + node_type, minlength=k * N_TYPES).reshape(k, N_TYPES)
    size = np.bincount(label, minlength=k)
    over = (per_type > rules.limit_by_code()[None, :]).any(axis=1) | (size - 1 > rules.max_merges)
    if over.any():
        edges = np.flatnonzero(ok & over[label[u]])
        roots = _limited_pass(edges, u, v, node_type, edge_first_seen, tokens, rules, status)
        involved = np.fromiter(roots.keys(), dtype=np.int64, count=len(roots))
        root = np.fromiter(roots.values(), dtype=np.int64, count=len(roots))
        label[involved] = k + root  # root is a node id: unique, and disjoint from 0..k-1
    label[blocked] = -1

    # Name each cluster after its earliest, strongest identifier.
    key = naming_key(node_type, node_first_seen, rules)
    live = label >= 0
    compact, inverse = np.unique(label[live], return_inverse=True)
    kk = len(compact)
    _, first = group_first_min(inverse, kk, key[live])
    live_nodes = np.flatnonzero(live)
    rep_of = live_nodes[first]
    gmin = key[rep_of]
    tied = np.bincount(inverse[key[live] == gmin[inverse]], minlength=kk) > 1
    if tied.any():
        _break_ties(np.flatnonzero(tied), inverse, live_nodes, key, gmin, tokens, rep_of)
    rep = np.full(n, -1, dtype=np.int64)
    rep[live_nodes] = rep_of[inverse]
    return GraphResolution(rep=rep, edge_status=status, shared=shared, clusters=kk)


def _break_ties(groups: np.ndarray, inverse: np.ndarray, live_nodes: np.ndarray, key: np.ndarray,
                gmin: np.ndarray, tokens: pa.Array, rep_of: np.ndarray) -> None:
    """Clusters whose earliest identifiers tie on time and type: the smallest token names it."""
    in_tied = np.isin(inverse, groups) & (key[live_nodes] == gmin[inverse])
    cand_nodes = live_nodes[in_tied]
    cand_groups = inverse[in_tied]
    cand_tokens = tokens.take(pa.array(cand_nodes)).to_pylist()
    best: dict[int, tuple[str, int]] = {}
    for g, t, node in zip(cand_groups.tolist(), cand_tokens, cand_nodes.tolist()):
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


def oneid_names(tokens: pa.Array) -> list[str]:
    """The OneID named after each token: ``oid_`` + 20 hex digits (80 bits) of a hash of it.

    A pure function of the token, so a profile keeps its OneID for as long as its earliest
    identifier stays in it, on any machine and in any run. Fixed-width tokens (the hasher's)
    are hashed with :func:`mix_words`, vectorised; other tokens with BLAKE2b.
    """
    import hashlib

    arr = as_string_array(tokens)
    out: list[str | None] = [None] * len(arr)
    if len(arr) == 0:
        return []
    lengths = np.asarray(pc.binary_length(arr), dtype=np.int64)
    for width in (np.unique(lengths).tolist() if lengths.min() != lengths.max() else [int(lengths[0])]):
        rows = np.flatnonzero(lengths == width)
        subset = arr.take(pa.array(rows))
        words = _fixed_width_words(subset) if width % 8 == 0 and width else None
        if words is not None:
            body = np.concatenate([_hex_digits(mix_words(words, 11), 16), _hex_digits(mix_words(words, 13), 4)], axis=1)
            prefix = np.broadcast_to(np.frombuffer(ONEID_PREFIX.encode(), dtype=np.uint8), (len(rows), len(ONEID_PREFIX)))
            data = np.ascontiguousarray(np.concatenate([prefix, body], axis=1))
            w = data.shape[1]
            values = data.view(f"S{w}").ravel().astype(f"U{w}").tolist()
        else:
            values = [ONEID_PREFIX + hashlib.blake2b(t.encode(), digest_size=10).hexdigest() for t in subset.to_pylist()]
        if len(rows) == len(arr):
            return values
        for r, name in zip(rows.tolist(), values):
            out[r] = name
    return out  # type: ignore[return-value]
