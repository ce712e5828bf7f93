"""From a batch of link observations to what the graph keeps: node sightings and links.

Why pairs first: a batch of ten million observations names ~3M identifiers in ~4M distinct
pairs. Numbering every token occurrence (20M) and then grouping the links (10M) groups 30M
rows; grouping the observations by the fingerprints of their two tokens first, then
numbering only the distinct pairs' endpoints, groups ~18M, and every later step runs on
distinct pairs. Both orders give the same nodes, links, times, counts and first events:
grouping is by token identity either way (fingerprints with a second, checked fingerprint;
see :mod:`lastmile.identity.grouping`). Tokens that are not all of one
fixed width, or whose fingerprints fail a check, take the exact token-first path.

Why sort-free reductions: per-group minima, maxima and counts run over the grouped order
that :func:`~lastmile.identity.grouping.group_parts` yields, one cache-sized part at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from lastmile.identity import grouping as gr
from lastmile.identity.identifiers import TYPE_CODES

_I64MAX = np.iinfo(np.int64).max
_I64MIN = np.iinfo(np.int64).min


# -- input columns ---------------------------------------------------------------------------


def _type_codes(values: Any) -> np.ndarray:
    """Identifier-type column (names or codes) to int8 codes; nulls become -1."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.to_pandas()
    series = pd.Series(values)
    if pd.api.types.is_integer_dtype(series.dtype):
        return series.to_numpy(dtype=np.int8)
    codes = series.map(TYPE_CODES)
    unknown = series.notna() & codes.isna()
    if unknown.any():
        raise ValueError(f"unknown identifier types: {sorted(set(series[unknown]))[:5]}")
    return codes.fillna(-1).to_numpy(dtype=np.int8)


def _column(table: Any, name: str) -> Any:
    if isinstance(table, pa.Table):
        return table.column(name)
    return table[name]


def _single_array(values: Any) -> pa.Array:
    """A token column as one arrow array (no copy for a one-chunk column)."""
    if isinstance(values, pa.ChunkedArray):
        return values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    return pa.array(pd.Series(values).to_numpy(dtype=object), type=pa.string())


@dataclass(frozen=True)
class LinkColumns:
    """A bulk link frame as arrays; ``b_tok`` holds the b side of the rows that have one.

    ``b_rows`` lists those rows, or is ``None`` when every row has a b side (the bulk case:
    no index array of the whole batch is then built).
    """

    rows: int
    a_type: np.ndarray
    b_type: np.ndarray
    a_tok: pa.Array
    b_tok: pa.Array
    b_rows: np.ndarray | None
    t: np.ndarray
    events: pa.Array
    etypes: pa.Array

    @classmethod
    def read(cls, table: pd.DataFrame | pa.Table) -> "LinkColumns":
        """The columns of :data:`~lastmile.identity.resolver.LINK_COLUMNS`, checked."""
        n_rows = len(table)
        a_type = _type_codes(_column(table, "a_type"))
        b_type = _type_codes(_column(table, "b_type"))
        if (a_type < 0).any():
            raise ValueError("a_type must be set on every link")
        a_tok = gr.as_string_array(_column(table, "a_token")) if n_rows else pa.array([], type=pa.string())
        b_arr = _single_array(_column(table, "b_token"))
        has_b = np.asarray(b_arr.is_valid(), dtype=bool) & (b_type >= 0)
        b_rows = None if has_b.all() else np.flatnonzero(has_b)
        b_tok = gr.as_string_array(b_arr if b_rows is None else b_arr.take(pa.array(b_rows)))
        t = _column(table, "occurred_at_ms")
        t = np.asarray(_single_array(t) if isinstance(t, pa.ChunkedArray) else t, dtype=np.int64)
        return cls(rows=n_rows, a_type=a_type, b_type=b_type, a_tok=a_tok, b_tok=b_tok, b_rows=b_rows, t=t,
                   events=gr.as_string_array(_column(table, "event_id")),
                   etypes=gr.as_string_array(_column(table, "event_type")))

    def b_index(self) -> np.ndarray:
        """The rows that have a b side, as an index array."""
        return np.arange(self.rows, dtype=np.int64) if self.b_rows is None else self.b_rows

    def at_b(self, values: np.ndarray) -> np.ndarray:
        """A per-row column restricted to the rows that have a b side (no copy if all do)."""
        return values if self.b_rows is None else values[self.b_rows]


# -- the reduced batch -----------------------------------------------------------------------


@dataclass(frozen=True)
class Sightings:
    """Nodes seen as ``node_type`` from ``first`` to ``last`` (one entry per sighting)."""

    node: np.ndarray
    node_type: np.ndarray
    first: np.ndarray
    last: np.ndarray


@dataclass(frozen=True)
class Batch:
    """A batch reduced to node sightings and links, over node ids that extend the old ones.

    ``tokens`` are all nodes' tokens after the batch (old nodes first, unchanged). Links:
    ``u < v``, seen ``count`` times from ``first`` to ``last``, first by the observation in
    row ``event_row`` of the batch; ``distinct`` says no two of them join the same pair.
    ``self_links`` are rows linking a token with itself.
    """

    tokens: pa.Array
    sightings: list[Sightings]
    u: np.ndarray
    v: np.ndarray
    first: np.ndarray
    last: np.ndarray
    count: np.ndarray
    event_row: np.ndarray
    distinct: bool
    self_links: np.ndarray


def reduce_batch(cols: LinkColumns, old_tokens: pa.Array) -> Batch:
    """The batch as sightings and links; pairs first when tokens allow it (see module doc)."""
    batch = _pairs_first(cols, old_tokens)
    return batch if batch is not None else _tokens_first(cols, old_tokens)


def _tokens_first(cols: LinkColumns, old_tokens: pa.Array) -> Batch:
    """Exact path: number every token occurrence, then every observation is a link."""
    n_old, n = len(old_tokens), cols.rows
    codes, uniques = gr.factorize_token_parts([old_tokens, cols.a_tok, cols.b_tok])
    if n_old and not np.array_equal(codes[:n_old], np.arange(n_old)):
        raise AssertionError("node dictionary is not unique")  # cannot happen: tokens are unique
    ca, cb = codes[n_old : n_old + n], codes[n_old + n :]
    b_rows = cols.b_index()
    u = ca[b_rows]
    same = u == cb
    keep, u, v = (b_rows[~same], u[~same], cb[~same]) if same.any() else (b_rows, u, cb)
    t_b, t_link = cols.at_b(cols.t), cols.t[keep]
    return Batch(
        tokens=uniques,
        sightings=[Sightings(ca, cols.a_type, cols.t, cols.t), Sightings(cb, cols.at_b(cols.b_type), t_b, t_b)],
        u=np.minimum(u, v), v=np.maximum(u, v), first=t_link, last=t_link,
        count=np.ones(len(keep), dtype=np.int64), event_row=keep, distinct=False, self_links=b_rows[same],
    )


def _pairs_first(cols: LinkColumns, old_tokens: pa.Array) -> Batch | None:
    """Fast path: group observations by token pair, then number the distinct pairs' tokens."""
    words = gr.token_words([old_tokens, cols.a_tok, cols.b_tok])
    if words is None:
        return None
    pairs = _distinct_pairs(cols, words[1], words[2])
    if pairs is None:
        return None
    segments = pairs.occurrences(len(words[0]))
    groups = gr.group_fingerprints(_occurrence_fingerprints(segments, words))
    if groups is None:
        return None
    codes, tokens = _number_tokens(groups, segments, [old_tokens, cols.a_tok, cols.b_tok])
    n_old = len(words[0])
    if n_old and not np.array_equal(codes[:n_old], np.arange(n_old)):
        raise AssertionError("node dictionary is not unique")  # cannot happen: tokens are unique
    return pairs.batch(cols, codes[n_old:], tokens)


@dataclass(frozen=True)
class _Pairs:
    """A batch's observations grouped into distinct token pairs (links), before numbering.

    Per link: its :class:`LinkStats`, the batch row first seen (``event_row``) and the
    index of that row's b side (``b_side``). Rows outside any link: ``single`` (no b side)
    and ``self_rows`` (a token linked with itself; b side ``self_b``).
    """

    stats: LinkStats
    event_row: np.ndarray
    b_side: np.ndarray
    single: np.ndarray
    self_rows: np.ndarray
    self_b: np.ndarray

    def occurrences(self, n_old: int) -> list[_Segment]:
        """Token occurrences to number: old tokens, both ends of each link, rows seen alone."""
        return [_Segment(0, None, n_old), _Segment(1, self.event_row), _Segment(2, self.b_side),
                _Segment(1, self.single), _Segment(1, self.self_rows), _Segment(2, self.self_b)]

    def batch(self, cols: LinkColumns, codes: np.ndarray, tokens: pa.Array) -> Batch:
        """The :class:`Batch`, given node ids of the new occurrences in :meth:`occurrences` order."""
        k, n_single, n_self = len(self.event_row), len(self.single), len(self.self_rows)
        u, v = codes[:k], codes[k : 2 * k]
        alone = codes[2 * k :]
        t_single, t_self = cols.t[self.single], cols.t[self.self_rows]
        b_type = cols.at_b(cols.b_type)
        first, last = self.stats.first, self.stats.last
        sightings = [
            Sightings(u, cols.a_type[self.event_row], first, last),
            Sightings(v, b_type[self.b_side], first, last),
            Sightings(alone[:n_single], cols.a_type[self.single], t_single, t_single),
            Sightings(alone[n_single : n_single + n_self], cols.a_type[self.self_rows], t_self, t_self),
            Sightings(alone[n_single + n_self :], b_type[self.self_b], t_self, t_self),
        ]
        return Batch(tokens=tokens, sightings=sightings, u=np.minimum(u, v), v=np.maximum(u, v), first=first,
                     last=last, count=self.stats.count, event_row=self.event_row, distinct=True,
                     self_links=self.self_rows)


def _distinct_pairs(cols: LinkColumns, a_words: np.ndarray, b_words: np.ndarray) -> _Pairs | None:
    """Group the rows with a b side by their unordered token pair (``None``: fingerprints clash)."""
    fps, same = pair_fingerprints(a_words, cols.b_rows, b_words, cols.a_type, cols.b_type)
    pair_rows = None  # pair j is b side j (and batch row b_rows[j]) unless self-links are dropped
    if same.any():
        pair_rows = np.flatnonzero(~same)
        fps = fps[pair_rows]
    rows_of = _compose(cols.b_rows, pair_rows)  # pair -> batch row (None: identity)
    try:
        stats = link_stats(gr.group_parts(fps), cols.t if rows_of is None else cols.t[rows_of], None, None,
                           lambda r: cols.events.take(pa.array(_at(rows_of, r))).to_pylist())
    except gr.FingerprintCollision:
        return None
    self_b = np.flatnonzero(same)
    return _Pairs(stats=stats, event_row=_at(rows_of, stats.pick), b_side=_at(pair_rows, stats.pick),
                  single=_rows_without(cols.b_rows, cols.rows), self_rows=_at(cols.b_rows, self_b), self_b=self_b)


@dataclass(frozen=True)
class _Segment:
    """Token occurrences: rows ``rows`` of part ``part`` (``None``: its first ``size`` rows)."""

    part: int
    rows: np.ndarray | None
    size: int = 0

    def __len__(self) -> int:
        return self.size if self.rows is None else len(self.rows)

    def row(self, local: np.ndarray) -> np.ndarray:
        """The part rows of the segment's occurrences ``local``."""
        return local if self.rows is None else self.rows[local]


def _occurrence_fingerprints(segments: list[_Segment], words: list[np.ndarray]) -> np.ndarray:
    """Token fingerprints of the occurrences, segment after segment, gathered block by block."""
    out = np.empty((sum(len(s) for s in segments), 2), dtype=np.uint64)
    at = 0
    for seg in segments:
        gr.fingerprints_at(words[seg.part], seg.rows, out[at : at + len(seg)])
        at += len(seg)
    return out


def _number_tokens(groups: gr.Groups, segments: list[_Segment], parts: list[pa.Array]) -> tuple[np.ndarray, pa.Array]:
    """Node ids for grouped token occurrences, and every node's token.

    Part 0 holds the old tokens (segment 0: all of them, once each), which keep their ids;
    new ids follow in group order. All tokens have one width here, so the new token array
    is one byte matrix filled by row gathers, not a string-by-string take.
    """
    starts = np.cumsum([0] + [len(s) for s in segments])
    seg_of = np.searchsorted(starts, groups.first, side="right") - 1  # segment of each group's first occurrence
    part = np.empty(len(groups), dtype=np.uint8)
    row = np.empty(len(groups), dtype=np.int64)
    for i, seg in enumerate(segments):
        mine = np.flatnonzero(seg_of == i)
        part[mine] = seg.part
        row[mine] = seg.row(groups.first[mine] - starts[i])
    old = part == 0
    n_old = len(parts[0])
    new_id = np.where(old, row, n_old + np.cumsum(~old) - 1)  # old groups: ids 0..n_old-1, each its own
    data = [gr.fixed_width_bytes(p) for p in parts]
    width = next(d.shape[1] for d in data if d is not None)
    out = np.empty((len(groups), width), dtype=np.uint8)
    for i, source in enumerate(data):
        if source is not None:
            mine = np.flatnonzero(part == i)
            out[new_id[mine]] = source[row[mine]]
    return new_id[groups.codes], gr.strings_from_bytes(out)


def _at(index: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    """``index[rows]``, where ``None`` stands for the identity index."""
    return rows if index is None else index[rows]


def _compose(outer: np.ndarray | None, inner: np.ndarray | None) -> np.ndarray | None:
    """``outer[inner]`` for indices where ``None`` stands for the identity."""
    if inner is None:
        return outer
    return inner if outer is None else outer[inner]


def _rows_without(rows: np.ndarray | None, n: int) -> np.ndarray:
    """The rows of ``range(n)`` not in ``rows`` (``None``: all of them are), ascending."""
    if rows is None or len(rows) == n:
        return np.zeros(0, dtype=np.int64)
    mask = np.ones(n, dtype=bool)
    mask[rows] = False
    return np.flatnonzero(mask)


def pair_fingerprints(a_words: np.ndarray, b_rows: np.ndarray | None, b_words: np.ndarray, a_type: np.ndarray,
                      b_type: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fingerprints (m, 2) of the unordered token pair of each row with a b side, and self-links.

    Pair ``j`` joins ``a_words[b_rows[j]]`` (``b_rows`` ``None``: row ``j``) and
    ``b_words[j]``. The pair is oriented by the tokens' first fingerprints so that (a, b)
    and (b, a) meet: column 0 folds the smaller and the larger first fingerprint, column 1
    the two second fingerprints and the two identifier types in that orientation. So a
    token seen with two types fails the group check, and so does a pair of distinct tokens
    sharing a first fingerprint (orientation then depends on arrival): the exact path then
    takes over. ``same[j]`` marks pairs of a token with itself. Computed block by block,
    straight from the token bytes: no per-token array of the whole batch is built.
    """
    m = len(b_words)
    out = np.empty((m, 2), dtype=np.uint64)
    same = np.empty(m, dtype=bool)
    for lo in range(0, m, gr.BLOCK_ROWS):
        hi = min(m, lo + gr.BLOCK_ROWS)
        rows: slice | np.ndarray = slice(lo, hi) if b_rows is None else b_rows[lo:hi]
        fa = gr.fingerprint_block(a_words[rows])
        fb = gr.fingerprint_block(b_words[lo:hi])
        a1, a2, b1, b2 = fa[:, 0], fa[:, 1], fb[:, 0], fb[:, 1]
        same[lo:hi] = (a1 == b1) & (a2 == b2)
        swap = a1 > b1
        out[lo:hi, 0] = gr.fold_columns([np.minimum(a1, b1), np.maximum(a1, b1)], 3)
        ta, tb = a_type[rows].astype(np.uint16), b_type[rows].astype(np.uint16)
        types = np.where(swap, (tb << 8) | ta, (ta << 8) | tb).astype(np.uint64)
        out[lo:hi, 1] = gr.fold_columns([np.where(swap, b2, a2), np.where(swap, a2, b2), types], 4)
    return out, same


@dataclass(frozen=True)
class LinkStats:
    """Per group of link observations: first and last time, count, and the row first seen.

    The row first seen is the earliest; among rows of the same millisecond, the one with the
    smallest event id, then the smallest row.
    """

    pick: np.ndarray
    first: np.ndarray
    last: np.ndarray
    count: np.ndarray
    #: Each group's smallest row (its first row in input order, not in time).
    anchor: np.ndarray


def link_stats(parts: Iterator[gr.Part], first: np.ndarray, last: np.ndarray | None, count: np.ndarray | None,
               events_of: Callable[[np.ndarray], list[str]]) -> LinkStats:
    """:class:`LinkStats` of grouped rows, reduced part by part (each part's arrays stay in cache).

    Row ``r`` was seen ``count[r]`` times from ``first[r]`` to ``last[r]`` (``None``: once, at
    ``first[r]``). ``events_of(rows)`` gives event ids, asked only where rows tie on time.
    """
    picks: list[np.ndarray] = []
    firsts: list[np.ndarray] = []
    lasts: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    tie_groups: list[np.ndarray] = []
    tie_rows: list[np.ndarray] = []
    anchors: list[np.ndarray] = []
    for part in parts:
        k, codes = len(part), part.codes
        anchors.append(part.rows[part.first])
        t = first[part.rows]
        gmin = np.full(k, _I64MAX, dtype=np.int64)
        np.minimum.at(gmin, codes, t)
        at_min = np.flatnonzero(t == gmin[codes])
        pos = np.full(k, _I64MAX, dtype=np.int64)
        np.minimum.at(pos, codes[at_min], at_min)  # rows are ascending within a part
        picks.append(part.rows[pos])
        n_at_min = np.bincount(codes[at_min], minlength=k)
        if (n_at_min > 1).any():
            cand = at_min[n_at_min[codes[at_min]] > 1]
            tie_groups.append(codes[cand] + part.offset)
            tie_rows.append(part.rows[cand])
        gmax = np.full(k, _I64MIN, dtype=np.int64)
        np.maximum.at(gmax, codes, t if last is None else last[part.rows])
        if count is None:
            c = np.bincount(codes, minlength=k).astype(np.int64)
        else:
            c = np.zeros(k, dtype=np.int64)
            np.add.at(c, codes, count[part.rows])
        firsts.append(gmin)
        lasts.append(gmax)
        counts.append(c)
    empty = np.zeros(0, dtype=np.int64)
    pick = np.concatenate(picks) if picks else empty
    if tie_groups:
        _break_first_ties(pick, np.concatenate(tie_groups), np.concatenate(tie_rows), events_of)
    return LinkStats(pick=pick, first=np.concatenate(firsts) if firsts else empty,
                     last=np.concatenate(lasts) if lasts else empty, count=np.concatenate(counts) if counts else empty,
                     anchor=np.concatenate(anchors) if anchors else empty)


def _break_first_ties(pick: np.ndarray, groups: np.ndarray, rows: np.ndarray,
                      events_of: Callable[[np.ndarray], list[str]]) -> None:
    """Groups first seen by several rows in one millisecond: the smallest event id, then row, wins."""
    best: dict[int, tuple[str, int]] = {}
    for grp, ev, r in zip(groups.tolist(), events_of(rows), rows.tolist()):
        if grp not in best or (ev, r) < best[grp]:
            best[grp] = (ev, r)
    for grp, (_, r) in best.items():
        pick[grp] = r
