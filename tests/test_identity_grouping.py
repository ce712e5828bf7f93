"""The fast paths of the resolver's core agree with the plain, exact ones.

Grouping is partitioned into cache-sized parts and keyed by token fingerprints, and a batch
is reduced pair first; each of these is compared here with what it replaces (pandas
factorize, arrow's dictionary encoding and take, the token-first reduction), with parts made
tiny so that small inputs cross many of them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lastmile.identity import IdentityResolver
from lastmile.identity import grouping as gr
from lastmile.identity import observations as obs
from lastmile.identity.state import to_rows

from tests.test_identity_properties import SETTINGS, TIGHT, link_sets

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def hex_tokens(rng: np.random.Generator, n: int, width: int = 32) -> pa.Array:
    data = _HEX[rng.integers(0, 16, size=(n, width))]
    return pa.array(data.view(f"S{width}").ravel().astype(f"U{width}").tolist())


@pytest.mark.parametrize("part_rows", [1, 7, 1 << 16])
@pytest.mark.parametrize("n, distinct", [(0, 1), (1, 1), (50, 5), (5000, 700)])
def test_grouping_numbers_keys_like_pandas(n: int, distinct: int, part_rows: int) -> None:
    rng = np.random.default_rng(n + part_rows)
    keys = rng.integers(-(2**63), 2**63 - 1, distinct, dtype=np.int64)[rng.integers(0, distinct, n)]
    groups = gr.group_keys(keys, part_rows=part_rows)
    assert np.array_equal(keys[groups.first][groups.codes], keys)  # every row lands in its key's group
    assert len(groups) == len(np.unique(keys))
    assert np.array_equal(groups.first, [np.flatnonzero(keys == keys[f])[0] for f in groups.first])
    codes, first = groups.first_appearance()
    expected_codes, expected_uniques = pd.factorize(keys)
    assert np.array_equal(codes, expected_codes)
    assert np.array_equal(keys[first], expected_uniques)


def test_fingerprint_grouping_detects_a_collision() -> None:
    keys = np.array([5, 9, 5, 5], dtype=np.uint64)
    agree = np.stack([keys, keys * np.uint64(3)], axis=1)
    assert gr.group_fingerprints(agree, part_rows=1) is not None
    clash = agree.copy()
    clash[3, 1] += np.uint64(1)  # same first fingerprint, different second: not the same token
    assert gr.group_fingerprints(clash, part_rows=1) is None


def test_token_factorisation_matches_arrow() -> None:
    rng = np.random.default_rng(3)
    base = hex_tokens(rng, 300)
    parts = [base.slice(0, 40), base.take(pa.array(rng.integers(0, 300, 2000))), base.take(pa.array(rng.integers(0, 300, 900)))]
    expected = pa.concat_arrays(parts).dictionary_encode()
    codes, uniques = gr.factorize_token_parts(parts)
    assert np.array_equal(codes, np.asarray(expected.indices))
    assert uniques.equals(expected.dictionary)
    # same first half, different second half: caught, and the exact path still separates them
    clash = pa.array(["0123456789abcdef" + "A" * 16, "0123456789abcdef" + "B" * 16, "0123456789abcdef" + "A" * 16])
    codes, uniques = gr.factorize_tokens(clash)
    assert codes.tolist() == [0, 1, 0] and uniques.to_pylist() == clash.to_pylist()[:2]
    mixed = ["x", "yy", "x", "zzz"]
    codes, uniques = gr.factorize_tokens(mixed)
    assert codes.tolist() == [0, 1, 0, 2] and uniques.to_pylist() == ["x", "yy", "zzz"]


@pytest.mark.parametrize("values", [
    ["ev-0001", "ev-0002", "ev-0003"],
    ["a", "bb", "", "ccc"],
    ["ab\x00", "cd\x00", "ef\x00"],  # trailing NULs must survive
    ["héé", "abcde", "x\u4e2dy"],  # 5 bytes each, not ASCII
])
def test_string_helpers_match_arrow(values: list[str]) -> None:
    arr = pa.array(values)
    rows = np.array([2, 0, 0, 1], dtype=np.int64)
    assert gr.take_strings(arr, rows).to_pylist() == arr.take(pa.array(rows)).to_pylist()
    assert gr.take_strings(arr, np.zeros(0, dtype=np.int64)).to_pylist() == []
    assert gr.to_pylist(arr) == values


def _state(resolver: IdentityResolver) -> dict[str, pd.DataFrame]:
    """The resolver's tables in an order that does not depend on node or link ids."""
    rows = to_rows(resolver)
    edges = rows["identity_edges"].copy()
    swap = edges["token_a"] > edges["token_b"]
    for a, b in (("token_a", "token_b"), ("type_a", "type_b")):
        edges.loc[swap, [a, b]] = edges.loc[swap, [b, a]].to_numpy()
    return {
        "nodes": rows["identity_nodes"].sort_values("token").reset_index(drop=True),
        "edges": edges.sort_values(["token_a", "token_b"]).reset_index(drop=True),
        "oneids": rows["identity_oneids"].sort_values("oneid").reset_index(drop=True),
        "refusals": rows["identity_refusals"],
        "changes": rows["identity_changes"].sort_values(["run", "kind", "from_oneid", "to_oneid"]).reset_index(drop=True),
    }


def _resolve_batches(rows: list[dict], cuts: list[int]) -> IdentityResolver:
    resolver = IdentityResolver(TIGHT)
    for lo, hi in zip([0] + cuts, cuts + [len(rows)]):
        if hi > lo:
            batch = pd.DataFrame(rows[lo:hi])
            resolver.add(pa.Table.from_pandas(batch, preserve_index=False) if lo % 2 else batch)
        resolver.resolve()
    return resolver


@SETTINGS
@given(rows=link_sets(), data=st.data())
def test_pairs_first_in_tiny_parts_equals_tokens_first(rows: list[dict], data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(rows)), max_size=3)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gr, "PART_ROWS", 2)
        patch.setattr(gr, "BLOCK_ROWS", 3)
        fast = _state(_resolve_batches(rows, cuts))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(obs, "_pairs_first", lambda cols, old_tokens: None)
        exact = _state(_resolve_batches(rows, cuts))
    for name, table in exact.items():
        pd.testing.assert_frame_equal(fast[name], table, check_dtype=False, obj=name)


def test_tokens_sharing_a_first_half_take_the_exact_path() -> None:
    """Structured tokens that share their first 16 bytes: fingerprints disagree, the result does not."""
    head = "0123456789abcdef"
    a, b, c = head + "a" * 16, head + "b" * 16, head + "c" * 16
    rows = [
        {"a_type": "openid", "a_token": a, "b_type": "openid", "b_token": b, "occurred_at_ms": 5, "event_id": "e1", "event_type": "order"},
        {"a_type": "openid", "a_token": b, "b_type": "openid", "b_token": a, "occurred_at_ms": 3, "event_id": "e2", "event_type": "order"},
        {"a_type": "openid", "a_token": c, "b_type": None, "b_token": None, "occurred_at_ms": 4, "event_id": "e3", "event_type": "order"},
    ]
    fast = _state(_resolve_batches(rows, []))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(obs, "_pairs_first", lambda cols, old_tokens: None)
        exact = _state(_resolve_batches(rows, []))
    for name, table in exact.items():
        pd.testing.assert_frame_equal(fast[name], table, check_dtype=False, obj=name)
    edges = fast["edges"]
    assert len(edges) == 1 and edges.loc[0, "count"] == 2 and edges.loc[0, "first_event_id"] == "e2"


def test_an_arrow_batch_without_any_b_side_is_a_batch_of_sightings() -> None:
    token = "f" * 32
    table = pa.table({"a_type": ["phone"], "a_token": [token], "b_type": pa.array([None], pa.string()),
                      "b_token": pa.array([None], pa.null()), "occurred_at_ms": [7], "event_id": ["e1"],
                      "event_type": ["order"]})
    resolver = IdentityResolver(TIGHT)
    resolver.add(table)
    resolver.resolve()
    assert resolver.partition() == frozenset({frozenset({token})})
