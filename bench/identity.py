"""Benchmark: OneID resolution of a synthetic graph against plain connected components.

Builds ~P people with ~3.2 identifiers each and ~10 link observations per person (default
1M people: ~3M identifiers, ~10M links), salted with the traps real data has: group-leader
phones on neighbours' orders, household tablets, blocked test numbers, people over the
per-type limits. Rows are shuffled (arrival order is random in real life).

Timed: ``IdentityResolver.add`` + ``resolve`` (factorise tokens, aggregate links, rules,
components, per-type limits, OneID naming) versus the ceiling, scipy's
``connected_components`` on the same link list (tokens factorised the same way, no rules).
Prints figures, then one JSON line: edges_per_s, ratio_to_scipy, peak_rss_mb.

    python bench/identity.py [--people 1000000] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lastmile.identity.grouping import factorize_token_parts  # noqa: E402
from lastmile.identity.identifiers import TYPE_CODES  # noqa: E402
from lastmile.identity.resolver import IdentityResolver  # noqa: E402
from lastmile.identity.rules import Rules  # noqa: E402

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def fixed_strings(data: np.ndarray) -> pa.Array:
    """An (n, w) uint8 matrix as an arrow string array without Python objects."""
    n, w = data.shape
    offsets = np.arange(0, w * (n + 1), w, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data))])


def random_tokens(rng: np.random.Generator, n: int) -> pa.Array:
    return fixed_strings(_HEX[rng.integers(0, 16, size=(n, 32), dtype=np.uint8)])


def synthetic_links(people: int, seed: int) -> tuple[pa.Table, dict[str, int]]:
    """Shuffled link observations of ``people`` synthetic neighbours, plus a few traps."""
    rng = np.random.default_rng(seed)
    has = {
        "unionid": rng.random(people) < 0.75,
        "openid": rng.random(people) < 0.95,
        "openid2": rng.random(people) < 0.25,
        "phone": rng.random(people) < 0.85,
        "member_card": rng.random(people) < 0.2,
        "device_id": rng.random(people) < 0.35,
    }
    kinds = ["unionid", "openid", "openid2", "phone", "member_card", "device_id"]
    type_of_kind = np.array([TYPE_CODES[k.rstrip("2")] for k in kinds], dtype=np.int8)
    matrix = np.stack([has[k] for k in kinds], axis=1)
    size = matrix.sum(axis=1)
    owner = np.repeat(np.arange(people), size)
    node_type = np.broadcast_to(type_of_kind, matrix.shape)[matrix]
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    n_nodes = len(owner)

    # ~10 observations per person, each a pair of that person's identifiers
    multi = np.flatnonzero(size >= 2)
    n_obs = people * 10
    p = multi[rng.integers(0, len(multi), n_obs)]
    i = rng.integers(0, size[p])
    j = rng.integers(0, size[p] - 1)
    j = j + (j >= i)
    a, b = start[p] + i, start[p] + j
    # traps: one leader phone per 200 people, on 40 neighbours' orders each
    leaders = max(1, people // 200)
    leader_nodes = n_nodes + np.arange(leaders)
    openid_nodes = np.flatnonzero(node_type == TYPE_CODES["openid"])
    la = np.repeat(leader_nodes, 40)
    lb = openid_nodes[rng.integers(0, len(openid_nodes), len(la))]
    # one household tablet per 100 people: half used by 2 people (seen with their unionids:
    # the unionid limit decides), half by 3 (seen with unionids and openids: shared)
    tablets = max(2, people // 100)
    tablet_nodes = n_nodes + leaders + np.arange(tablets)
    unionid_nodes = np.flatnonzero(node_type == TYPE_CODES["unionid"])
    pairs, trios = tablet_nodes[: tablets // 2], tablet_nodes[tablets // 2 :]
    ta = np.concatenate([np.repeat(pairs, 2), np.repeat(trios, 6)])
    tb = np.concatenate([unionid_nodes[rng.integers(0, len(unionid_nodes), 2 * len(pairs))],
                         unionid_nodes[rng.integers(0, len(unionid_nodes), 3 * len(trios))],
                         openid_nodes[rng.integers(0, len(openid_nodes), 3 * len(trios))]])
    # people with a third and fourth phone (over the limit of 2): 1 in 500
    extra_people = rng.choice(np.flatnonzero(has["unionid"]), size=max(1, people // 500), replace=False)
    extra_nodes = n_nodes + leaders + tablets + np.arange(2 * len(extra_people))
    ea = extra_nodes
    eb = start[np.repeat(extra_people, 2)]  # their unionid comes first
    all_types = np.concatenate([node_type, np.full(leaders, TYPE_CODES["phone"]), np.full(tablets, TYPE_CODES["device_id"]),
                                np.full(len(extra_nodes), TYPE_CODES["phone"])]).astype(np.int8)
    a = np.concatenate([a, la, ta, ea])
    b = np.concatenate([b, lb, tb, eb])
    order = rng.permutation(len(a))
    a, b = a[order], b[order]
    tokens = random_tokens(rng, len(all_types))
    m = len(a)
    t = 1_767_225_600_000 + rng.integers(0, 365 * 86_400_000, m)  # 2026
    event_ids = fixed_strings(np.concatenate([np.full((m, 2), ord("e"), dtype=np.uint8),
                                              _HEX[rng.integers(0, 16, size=(m, 14), dtype=np.uint8)]], axis=1))
    table = pa.table({
        "a_type": pa.array(all_types[a]), "a_token": tokens.take(pa.array(a)),
        "b_type": pa.array(all_types[b]), "b_token": tokens.take(pa.array(b)),
        "occurred_at_ms": pa.array(t), "event_id": event_ids,
        "event_type": pa.DictionaryArray.from_arrays(pa.array(np.zeros(m, dtype=np.int32)), pa.array(["order"])).cast(pa.string()),
    })
    return table, {"people": people, "identifiers": len(all_types), "links": m}


def scipy_ceiling(table: pa.Table) -> tuple[float, int]:
    """Plain components over the same link list: factorise tokens, build CSR, components.

    The two token columns are factorised as they are, without first copying them into one
    array: the resolver does not copy them either.
    """
    t0 = time.perf_counter()
    codes, uniques = factorize_token_parts([table.column("a_token").combine_chunks(),
                                            table.column("b_token").combine_chunks()])
    m, n = table.num_rows, len(uniques)
    graph = csr_matrix((np.ones(m, dtype=np.int8), (codes[:m], codes[m:])), shape=(n, n))
    k, _ = connected_components(graph, directed=False)
    return time.perf_counter() - t0, k


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    table, shape = synthetic_links(args.people, args.seed)
    print(f"synthetic graph: {shape['people']:,} people, {shape['identifiers']:,} identifiers, "
          f"{shape['links']:,} link observations (built in {time.perf_counter() - t0:.1f}s)")

    scipy_s, scipy_k = scipy_ceiling(table)
    print(f"scipy connected_components (no rules): {scipy_s:.2f}s, {scipy_k:,} components")

    resolver = IdentityResolver(Rules.default())
    t1 = time.perf_counter()
    resolver.add(table)
    t2 = time.perf_counter()
    report = resolver.resolve()
    t3 = time.perf_counter()
    ours_s = t3 - t1
    print(f"lastmile add (factorise + aggregate): {t2 - t1:.2f}s; resolve (rules + components + limits + OneIDs): "
          f"{t3 - t2:.2f}s")
    print(f"profiles: {report.profiles:,}; distinct links: {report.links:,}; used: {report.used:,}; refused: {report.refused}")
    edges_per_s = shape["links"] / ours_s
    ratio = scipy_s / ours_s
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"throughput: {edges_per_s:,.0f} link observations/s; speed ratio to scipy: {ratio:.2f} "
          f"(1.0 = as fast as plain components); peak RSS {peak_mb:,.0f} MB")
    result = {"edges_per_s": round(edges_per_s), "ratio_to_scipy": round(ratio, 3), "peak_rss_mb": round(peak_mb)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
