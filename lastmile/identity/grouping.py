"""From tokens to integers: fingerprints, cache-sized grouping, strings of one width.

Why fingerprints: the keyed-hash tokens are 32-character strings; grouping equal tokens by
two 64-bit folds of their bytes (the second one checked within each group) is exact for
hash-like tokens and never needs the strings as Python objects. Tokens that do not fit
(mixed widths, colliding folds) take arrow's exact dictionary encoding instead.

Why partitions: one hash table over millions of keys misses the CPU cache on nearly every
probe. Splitting the keys by a few hash bits (one radix pass) and factorising each part on
its own keeps every table in cache, and lets callers reduce per part (minimum, maximum,
count) in cache too, instead of building whole-batch arrays of group numbers.

Why blocks: element-wise kernels run over blocks of rows, so their temporaries stay in
cache and no whole-column temporary is ever allocated (fresh memory is slow to fault in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa


# -- strings of one width ------------------------------------------------------------------


def as_string_array(values: object) -> pa.Array:
    """Any column of tokens (arrow, numpy, pandas, list) as one arrow ``string`` array."""
    if isinstance(values, pa.ChunkedArray):
        values = values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    if isinstance(values, pa.Array):
        arr = values
    elif isinstance(values, pd.Series):
        arr = pa.array(values.to_numpy(dtype=object), type=pa.string())
    else:
        arr = pa.array(values, type=pa.string())
    if pa.types.is_large_string(arr.type) or pa.types.is_null(arr.type):
        arr = arr.cast(pa.string())  # a column of nothing but nulls comes from arrow as type null
    if arr.null_count:
        raise ValueError("token column has nulls")
    return arr


def fixed_width_bytes(arr: pa.Array) -> np.ndarray | None:
    """The strings as an (n, width) byte matrix (a view) when all have one non-zero width."""
    n = len(arr)
    if n == 0 or arr.null_count:
        return None
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + n + 1]
    width = int(offsets[1] - offsets[0])
    if width == 0 or int(offsets[-1] - offsets[0]) != width * n:
        return None
    step = 1 << 20  # in slices: no whole-column temporaries
    for lo in range(0, n, step):
        if not np.all(np.diff(offsets[lo : lo + step + 1]) == width):
            return None
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return data.reshape(n, width)


def fixed_width_words(arr: pa.Array) -> np.ndarray | None:
    """The tokens as an (n, width/8) uint64 matrix when all have one width divisible by 8."""
    data = fixed_width_bytes(arr)
    if data is None or data.shape[1] % 8:
        return None
    return data.reshape(-1).view("<u8").reshape(len(data), data.shape[1] // 8)


def take_strings(arr: pa.Array, rows: np.ndarray) -> pa.Array:
    """``arr.take(rows)`` as a ``string`` array; fixed-width strings are gathered as a byte matrix.

    Arrow's take builds the result string by string; for one width (tokens, event ids,
    event types) one numpy gather of rows of bytes does it an order of magnitude faster.
    """
    data = fixed_width_bytes(arr)
    if data is None or not len(rows) or data.shape[1] * (len(rows) + 1) >= 2**31:
        return as_string_array(arr.take(pa.array(rows, type=pa.int64())))
    return strings_from_bytes(np.take(data, rows, axis=0))


def strings_from_bytes(data: np.ndarray) -> pa.Array:
    """An (n, width) byte matrix (UTF-8 rows of one width) as an arrow ``string`` array, no copy."""
    n, width = data.shape
    if width * (n + 1) >= 2**31:
        raise ValueError("too many bytes for one arrow string array")
    offsets = np.arange(0, width * (n + 1), width, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data))])


def to_pylist(arr: pa.Array) -> list[str]:
    """A string array as a list of ``str`` (fixed-width ASCII: through numpy, ~10x arrow's to_pylist)."""
    data = fixed_width_bytes(arr)
    if data is None or not len(data) or (data >= 0x80).any() or (data[:, -1] == 0).any():
        return arr.to_pylist()  # numpy's bytes would drop trailing NULs; non-ASCII needs decoding
    return ascii_rows(data)


def ascii_rows(data: np.ndarray) -> list[str]:
    """Rows of an (n, width) matrix of ASCII bytes (no trailing NUL) as ``str`` objects.

    Through ``bytes`` and ``decode``: numpy's unicode arrays would first build a 4-byte per
    character copy of everything.
    """
    return list(map(bytes.decode, np.ascontiguousarray(data).view(f"S{data.shape[1]}").ravel().tolist()))


# -- fingerprints ---------------------------------------------------------------------------

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


def fold_columns(columns: Sequence[np.ndarray], seed: int) -> np.ndarray:
    """A cheap 64-bit fold (multiply-xor) of rows given as columns of 64-bit words; only finds equal rows.

    Multiplied in place: no temporaries beyond the result.
    """
    key = np.bitwise_xor(columns[0], np.uint64(seed), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in columns[1:]:
            key *= _M1
            key ^= column
    return key


#: Rows per block of the element-wise kernels: a block's temporaries stay in the CPU cache
#: instead of streaming whole-column temporaries through memory once per operation.
BLOCK_ROWS = 1 << 15


def token_words(parts: Sequence[pa.Array]) -> list[np.ndarray] | None:
    """Each part's tokens as an (n, width/8) word matrix (views), or ``None``.

    ``None`` unless every token of every non-empty part has the same width, a multiple of 8
    bytes (what :class:`IdentifierHasher` makes); empty parts give empty matrices.
    """
    maybe = [fixed_width_words(p) for p in parts]
    widths = {w.shape[1] for w in maybe if w is not None}
    if len(widths) != 1 or any(w is None and len(p) for w, p in zip(maybe, parts)):
        return None
    width = widths.pop()
    return [w if w is not None else np.zeros((0, width), dtype=np.uint64) for w in maybe]


def fingerprint_block(words: np.ndarray) -> np.ndarray:
    """Two 64-bit folds per token row, of the first and the second half of its words: (n, 2).

    Equal tokens have equal fingerprints; unequal hash-like tokens share both with odds
    ~2^-128, the odds of their 128-bit digests colliding. Callers that group by the first
    fold check the second within each group (:func:`group_fingerprints`), so structured
    tokens that share a fold are caught. Meant for blocks of :data:`BLOCK_ROWS` rows.
    """
    n_words = words.shape[1]
    half = max(1, n_words // 2)
    out = np.empty((len(words), 2), dtype=np.uint64)
    out[:, 0] = fold_columns([words[:, j] for j in range(half)], 1)
    out[:, 1] = fold_columns([words[:, j] for j in (range(half, n_words) if n_words > half else range(n_words))], 2)
    return out


def fingerprints_at(words: np.ndarray, rows: np.ndarray | None, out: np.ndarray) -> None:
    """:func:`fingerprint_block` of ``words[rows]`` (all rows if ``None``) into ``out``, block by block."""
    n = len(out)
    for lo in range(0, n, BLOCK_ROWS):
        hi = min(n, lo + BLOCK_ROWS)
        block = words[lo:hi] if rows is None else np.take(words, rows[lo:hi], axis=0)
        out[lo:hi] = fingerprint_block(block)


def token_fingerprints(parts: Sequence[pa.Array]) -> np.ndarray | None:
    """:func:`fingerprint_block` of the tokens of the parts laid end to end (``None``: see :func:`token_words`)."""
    words = token_words(parts)
    if words is None:
        return None
    out = np.empty((sum(len(w) for w in words), 2), dtype=np.uint64)
    at = 0
    for w in words:
        fingerprints_at(w, None, out[at : at + len(w)])
        at += len(w)
    return out


# -- grouping -------------------------------------------------------------------------------

#: Rows per part of a partitioned factorisation. A hash table of millions of keys misses the
#: CPU cache on nearly every probe; split into parts of this size, each part's table stays in
#: cache, and the split itself is one radix pass. Measured on 20M keys with 3.3M distinct:
#: one pandas factorize ~4s, partitioned ~1.5s.
PART_ROWS = 1 << 16
_MAX_PART_BITS = 8  # numpy's stable argsort of uint8 keys is a single radix pass


@dataclass(frozen=True)
class Part:
    """One cache-sized part of a grouping (see :func:`group_parts`).

    ``rows`` are the part's rows, ascending; ``codes[i]`` is the group of ``rows[i]``,
    numbered within the part by first appearance; ``first[c]`` is the position in ``rows``
    of group ``c``'s first row; the part's groups are numbered ``offset + c`` overall.
    """

    rows: np.ndarray
    codes: np.ndarray
    first: np.ndarray
    offset: int

    def __len__(self) -> int:
        return len(self.first)


class FingerprintCollision(Exception):
    """Rows share a first fingerprint but not the second: the keys are not hash-like."""


@dataclass(frozen=True)
class Groups:
    """Equal keys numbered: ``codes[row]`` (part by part) and ``first[code]``, its first row."""

    codes: np.ndarray
    first: np.ndarray

    def __len__(self) -> int:
        return len(self.first)

    def first_appearance(self) -> tuple[np.ndarray, np.ndarray]:
        """``(codes, first)`` renumbered by first appearance in row order, like ``pd.factorize``.

        The rank of each group's first row among all first rows, by a mark-and-count pass
        (linear) rather than by sorting the first rows.
        """
        mark = np.zeros(len(self.codes), dtype=bool)
        mark[self.first] = True
        new_id = np.cumsum(mark, dtype=np.int64)[self.first] - 1
        first = np.empty_like(self.first)
        first[new_id] = self.first
        return new_id[self.codes], first


def _partition(keys: np.ndarray, part_rows: int, hashed: bool) -> tuple[np.ndarray | None, np.ndarray]:
    """Rows stably grouped by the top bits of ``keys`` (mixed first unless ``hashed``), and part bounds."""
    n = len(keys)
    bits = min(_MAX_PART_BITS, (n // max(1, part_rows)).bit_length())
    if bits == 0:
        return None, np.array([0, n], dtype=np.int64)
    part = np.empty(n, dtype=np.uint8)
    shift = np.uint64(64 - bits)
    with np.errstate(over="ignore"):
        for lo in range(0, n, BLOCK_ROWS):
            block = keys[lo : lo + BLOCK_ROWS].view(np.uint64)
            part[lo : lo + len(block)] = (block >> shift) if hashed else (block * _M1) >> shift
    bounds = np.zeros((1 << bits) + 1, dtype=np.int64)
    np.cumsum(np.bincount(part, minlength=1 << bits), out=bounds[1:])
    return np.argsort(part, kind="stable"), bounds


def group_parts(keys: np.ndarray, part_rows: int | None = None) -> Iterator[Part]:
    """Equal keys grouped exactly, one cache-sized part at a time (see :data:`PART_ROWS`).

    ``keys`` is 1-D (64-bit keys) or an (n, 2) fingerprint matrix: grouped by column 0,
    with column 1 checked equal within every group (raises :class:`FingerprintCollision`);
    both columns travel together through one gather per part. Parts are formed by the top
    bits of the key, so a part's groups are complete, and callers reduce per part in cache
    instead of building whole-batch arrays of group numbers and gathered values.
    """
    fingerprints = keys.ndim == 2
    order, bounds = _partition(keys[:, 0] if fingerprints else keys, PART_ROWS if part_rows is None else part_rows,
                               hashed=fingerprints)
    offset = 0
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        if lo == hi:
            continue
        rows = np.arange(lo, hi, dtype=np.int64) if order is None else order[lo:hi]
        part = keys[lo:hi] if order is None else np.take(keys, rows, axis=0)
        codes, uniq = pd.factorize(np.ascontiguousarray(part[:, 0]) if fingerprints else part)
        first = _first_positions(codes)
        if fingerprints and not np.array_equal(part[:, 1], part[first, 1][codes]):
            raise FingerprintCollision
        yield Part(rows=rows, codes=codes, first=first, offset=offset)
        offset += len(uniq)


def group_keys(keys: np.ndarray, part_rows: int | None = None) -> Groups:
    """Equal 64-bit ``keys`` numbered (exactly), part by part; ``first`` is each group's first row."""
    return _collect(group_parts(keys, part_rows), len(keys))


def group_fingerprints(fingerprints: np.ndarray, part_rows: int | None = None) -> Groups | None:
    """:func:`group_keys` of ``fingerprints[:, 0]``; ``None`` if ``fingerprints[:, 1]`` differs within a group.

    The second column is a second fingerprint of each row that must agree across rows of a
    group: when the first is a hash, it turns a collision into a detected failure instead of
    a silent merge.
    """
    try:
        return _collect(group_parts(fingerprints, part_rows), len(fingerprints))
    except FingerprintCollision:
        return None


def _collect(parts: Iterator[Part], n: int) -> Groups:
    codes = np.empty(n, dtype=np.int64)
    firsts: list[np.ndarray] = []
    for part in parts:
        codes[part.rows] = part.codes + part.offset
        firsts.append(part.rows[part.first])
    return Groups(codes=codes, first=np.concatenate(firsts) if firsts else np.zeros(0, dtype=np.int64))


def _first_positions(codes: np.ndarray) -> np.ndarray:
    """Where each code first appears, for codes numbered by first appearance (0, 1, 2, ...).

    A code appears first exactly where the running maximum grows.
    """
    if not len(codes):
        return np.zeros(0, dtype=np.int64)
    running = np.maximum.accumulate(codes)
    grows = np.empty(len(codes), dtype=bool)
    grows[0] = True
    np.not_equal(running[1:], running[:-1], out=grows[1:])
    return np.flatnonzero(grows)


# -- tokens to integers ---------------------------------------------------------------------


def factorize_tokens(tokens: object) -> tuple[np.ndarray, pa.Array]:
    """``codes`` (int64, first appearance order) and the unique tokens."""
    return factorize_token_parts([as_string_array(tokens)])


def factorize_token_parts(parts: Sequence[pa.Array]) -> tuple[np.ndarray, pa.Array]:
    """:func:`factorize_tokens` of the parts laid end to end, without copying them into one.

    Fast path for fixed-width tokens (what :class:`IdentifierHasher` makes): group a 64-bit
    fold of the first half of the bytes, checking a fold of the second half within every
    group. For hash-like tokens two different tokens would have to collide on both, a
    ~2^-128 event, the same odds as the 128-bit tokens colliding themselves; structured
    tokens that do collide are detected and take the exact path. On a detected collision,
    or for tokens of mixed width, arrow's exact dictionary encoding is used.
    """
    parts = [as_string_array(p) for p in parts]
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    fingerprints = token_fingerprints(parts)
    if fingerprints is not None:
        groups = group_fingerprints(fingerprints)
        if groups is not None:
            codes, first = groups.first_appearance()
            return codes, take_across(parts, sizes, first)
    if not len(parts):
        return np.zeros(0, dtype=np.int64), pa.array([], type=pa.string())
    encoded = pa.concat_arrays(parts).dictionary_encode()
    return np.asarray(encoded.indices, dtype=np.int64), encoded.dictionary


def take_across(parts: Sequence[pa.Array], sizes: np.ndarray, rows: np.ndarray) -> pa.Array:
    """Rows (ascending, numbered across the parts laid end to end) as one arrow array."""
    starts = np.concatenate([[0], np.cumsum(sizes)])
    cut = np.searchsorted(rows, starts)
    pieces = []
    for i, part in enumerate(parts):
        local = rows[cut[i] : cut[i + 1]] - starts[i]
        if len(local) == len(part):
            pieces.append(part)
        elif len(local):
            pieces.append(take_strings(part, local))
    if len(pieces) == 1:
        return pieces[0]
    return pa.concat_arrays(pieces) if pieces else pa.array([], type=pa.string())
