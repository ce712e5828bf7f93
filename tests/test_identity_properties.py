"""Property tests: the resolver's result depends on the set of links, nothing else.

Arrival order, batching, resolving in between and replaying must give the same clusters and
the same OneIDs; and the vectorised resolver must agree with a plain reference union-find
that applies the documented rules link by link in canonical order.
"""

from __future__ import annotations

from unittest import mock

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lastmile.identity import IdentityResolver, Rules
from lastmile.identity import grouping as gr
from lastmile.identity.identifiers import TYPE_NAMES
from lastmile.identity.state import to_rows

from tests.test_identity_support import HASHER

# Tight rules so small graphs hit every rule: limits, merge cap and shared identifiers.
TIGHT = Rules.default().with_changes(
    max_per_profile={"unionid": 1, "openid": 2, "phone": 1, "member_card": 1, "device_id": 2},
    max_merges=4,
    max_identities={"phone": 2, "device_id": 2, "member_card": 3, "openid": 3, "unionid": 3},
)
POOL = [(TYPE_NAMES[i % 5], HASHER.token(TYPE_NAMES[i % 5], f"v{i}")) for i in range(14)]


@st.composite
def link_sets(draw: st.DrawFn) -> list[dict]:
    """Up to 30 observations over 14 identifiers; times collide on purpose (ties)."""
    n = draw(st.integers(1, 30))
    rows = []
    for k in range(n):
        a = draw(st.integers(0, len(POOL) - 1))
        b = draw(st.one_of(st.none(), st.integers(0, len(POOL) - 1)))
        t = draw(st.integers(0, 6)) * 1000
        rows.append({
            "a_type": POOL[a][0], "a_token": POOL[a][1],
            "b_type": None if b is None else POOL[b][0], "b_token": None if b is None else POOL[b][1],
            "occurred_at_ms": t, "event_id": f"ev-{draw(st.integers(0, 9)):04d}", "event_type": "order",
        })
    return rows


def resolve_in(batches: list[list[dict]], blocked: frozenset[str] = frozenset(), resolve_each: bool = True) -> IdentityResolver:
    resolver = IdentityResolver(TIGHT, blocked)
    for batch in batches:
        if batch:
            resolver.add(pd.DataFrame(batch))
        if resolve_each:
            resolver.resolve()
    resolver.resolve()
    return resolver


def reference(rows: list[dict], blocked: frozenset[str], rules: Rules) -> dict[str, frozenset[str]]:
    """The documented semantics, link by link, in plain Python: OneID -> tokens."""
    from lastmile.identity.graph import oneid_names
    import pyarrow as pa

    kind = {r["a_token"]: r["a_type"] for r in rows}
    kind.update({r["b_token"]: r["b_type"] for r in rows if r["b_token"]})
    first_seen: dict[str, int] = {}
    edges: dict[tuple[str, str], int] = {}
    for r in rows:
        for tok in (r["a_token"], r["b_token"]):
            if tok:
                first_seen[tok] = min(first_seen.get(tok, 1 << 62), r["occurred_at_ms"])
        if r["b_token"] and r["b_token"] != r["a_token"]:
            key = tuple(sorted((r["a_token"], r["b_token"])))
            edges[key] = min(edges.get(key, 1 << 62), r["occurred_at_ms"])
    usable = {e: t for e, t in edges.items() if not (set(e) & blocked)}
    # identities: strong identifiers linked directly to each other are one person
    identity = {tok: tok for tok in kind}

    def root(x: str) -> str:
        while identity[x] != x:
            x = identity[x]
        return x

    for a, b in usable:
        if kind[a] in rules.strong_types and kind[b] in rules.strong_types:
            identity[root(a)] = root(b)
    strong_neighbours: dict[str, set[str]] = {}
    for a, b in usable:
        for x, y in ((a, b), (b, a)):
            if kind[y] in rules.strong_types:
                # a strong identifier counts its neighbours; a weak one, their identities
                strong_neighbours.setdefault(x, set()).add(y if kind[x] in rules.strong_types else root(y))
    shared = {x for x, ns in strong_neighbours.items() if len(ns) > rules.max_identities[kind[x]]}
    usable = {e: t for e, t in usable.items() if not (set(e) & shared)}
    s = rules.strength

    def order(item: tuple[tuple[str, str], int]) -> tuple:
        (a, b), t = item
        lo, hi = sorted((s[kind[a]], s[kind[b]]))
        return (-lo, -hi, t, a, b)

    parent = {tok: tok for tok in first_seen if tok not in blocked}
    members = {tok: [tok] for tok in parent}
    merges = {tok: 0 for tok in parent}

    def find(x: str) -> str:
        while parent[x] != x:
            x = parent[x]
        return x

    for (a, b), _ in sorted(usable.items(), key=order):
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        joined = members[ra] + members[rb]
        if any(sum(kind[m] == t for m in joined) > rules.max_per_profile[t] for t in TYPE_NAMES):
            continue
        if merges[ra] + merges[rb] + 1 > rules.max_merges:
            continue
        parent[rb] = ra
        members[ra], merges[ra] = joined, merges[ra] + merges[rb] + 1
    rank = {t: sum(1 for v in s.values() if v > s[t]) for t in TYPE_NAMES}
    out = {}
    for root in {find(x) for x in parent}:
        group = members[root]
        name = min(group, key=lambda m: (first_seen[m], rank[kind[m]], m))
        out[oneid_names(pa.array([name]))[0]] = frozenset(group)
    return out


SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(rows=link_sets(), data=st.data())
def test_any_order_and_batching_gives_same_profiles_and_oneids(rows: list[dict], data: st.DataObject) -> None:
    expected = resolve_in([rows]).clusters()
    shuffled = data.draw(st.permutations(rows))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(rows)), max_size=4)))
    batches = [shuffled[i:j] for i, j in zip([0] + cuts, cuts + [len(rows)])]
    assert resolve_in(batches).clusters() == expected
    assert resolve_in(batches, resolve_each=False).clusters() == expected


@SETTINGS
@given(rows=link_sets(), data=st.data())
def test_replay_changes_nothing(rows: list[dict], data: st.DataObject) -> None:
    resolver = resolve_in([rows])
    before = resolver.clusters()
    replay = data.draw(st.lists(st.sampled_from(rows), max_size=len(rows)))
    if replay:
        resolver.add(pd.DataFrame(replay))
    assert resolver.resolve().changes == []
    assert resolver.clusters() == before


@SETTINGS
@given(rows=link_sets(), blocked=st.sets(st.sampled_from([t for _, t in POOL]), max_size=2))
def test_vectorised_resolver_matches_reference_semantics(rows: list[dict], blocked: set[str]) -> None:
    got = resolve_in([rows], frozenset(blocked)).clusters()
    assert got == reference(rows, frozenset(blocked), TIGHT)


@SETTINGS
@given(rows=link_sets(), data=st.data())
def test_incremental_history_ends_where_a_fresh_rebuild_does(rows: list[dict], data: st.DataObject) -> None:
    """Old names always point at a live OneID that holds their origin identifier."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(rows)), max_size=3)))
    batches = [rows[i:j] for i, j in zip([0] + cuts, cuts + [len(rows)])]
    resolver = resolve_in(batches)
    clusters = resolver.clusters()
    oneids = to_rows(resolver)["identity_oneids"]
    for name, origin, survivor in oneids.itertuples(index=False):
        assert survivor in clusters
        assert origin in clusters[survivor]


#: The natural key of each versioned state table (the logs are append-only: keyed by position).
STATE_KEYS = {"identity_nodes": lambda r: r["token"], "identity_edges": lambda r: frozenset((r["token_a"], r["token_b"])),
              "identity_oneids": lambda r: r["oneid"]}


def _keyed(tables: dict[str, pd.DataFrame]) -> dict[str, dict]:
    """State tables as the warehouse keeps them: one row per natural key (the logs: per position)."""
    out: dict[str, dict] = {}
    for table, frame in tables.items():
        rows = frame.to_dict("records")
        out[table] = {STATE_KEYS[table](r): r for r in rows} if table in STATE_KEYS else dict(enumerate(rows))
    return out


@SETTINGS
@given(rows=link_sets(), data=st.data())
def test_a_kept_state_writes_exactly_the_rows_that_changed(rows: list[dict], data: st.DataObject) -> None:
    """What ``changed_since`` selects, written over the previous tables, gives the new tables,
    and every row it selects is new or different: nothing missed, nothing rewritten for nothing."""
    from lastmile.identity.state import changed_since, snapshot

    cuts = sorted(data.draw(st.lists(st.integers(0, len(rows)), max_size=4)))
    batches = [rows[i:j] for i, j in zip([0] + cuts, cuts + [len(rows)])]
    with mock.patch.object(gr, "PART_ROWS", 2):  # many grouping parts, as in a large state
        _write_kept(batches)


def _write_kept(batches: list[list[dict]]) -> None:
    from lastmile.identity.state import changed_since, snapshot

    resolver = IdentityResolver(TIGHT)
    stored: dict[str, dict] = {}
    before = None
    for batch in batches:
        if batch:
            resolver.add(pd.DataFrame(batch))
        resolver.resolve()
        full = _keyed(to_rows(resolver))
        if before is None:
            stored = full
        else:
            written = to_rows(resolver, changed_since(resolver, before))
            for table, frame in written.items():
                for r in frame.to_dict("records"):
                    if table not in STATE_KEYS:  # an append-only log: the selected rows are the new ones, in order
                        stored[table][len(stored[table])] = r
                        continue
                    key = STATE_KEYS[table](r)
                    assert stored[table].get(key) != r, f"{table}: an unchanged row was written again"
                    stored[table][key] = r
            assert stored == full, "a changed row was not written"
        before = snapshot(resolver)
