"""The OneID resolver: keeps the identity graph, resolves it, names profiles, logs changes.

Why it keeps every link, used or not: rules change. A link refused today (a value later
found to be a test number, a shared tablet) must be able to merge again if the rule is
relaxed, and a link used today must be able to split off when a rule tightens. So the state
is the graph of distinct links (first/last seen, count), never just the clusters; clusters
are recomputed from it, which is also what makes the result independent of arrival order
and batching (see :mod:`lastmile.identity.graph`).

Why OneIDs are names, not counters: a OneID is derived from the earliest-seen identifier of
its profile (the strongest one on a tie). When two profiles merge the older name survives;
when a profile splits, the part holding the old earliest identifier keeps the name. Every
name ever handed out stays in the OneID map with the name that now stands for it, so
downstream tables can always remap, and the change log lists each merge and split.

Scale: ``add`` and ``resolve`` are vectorised over arrays; a resolve re-evaluates the whole
graph (seconds for ten million links), so call it per batch, not per event. ``add`` folds a
batch into distinct links before numbering its tokens (:mod:`lastmile.identity.observations`),
so its cost follows the distinct pairs more than the raw observations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from lastmile.identity import graph as g
from lastmile.identity import grouping as gr
from lastmile.identity import observations as obs
from lastmile.identity.identifiers import TYPE_NAMES
from lastmile.identity.links import Link
from lastmile.identity.rules import STATUS_REASONS, USED, Rules

_I64MAX = np.iinfo(np.int64).max

#: Columns of a bulk link frame accepted by :meth:`IdentityResolver.add`.
LINK_COLUMNS = ("a_type", "a_token", "b_type", "b_token", "occurred_at_ms", "event_id", "event_type")


@dataclass(frozen=True)
class Change:
    """One line of the change log: identifiers moved from one OneID to another.

    ``kind``: ``merge`` (``from_oneid`` now lives on as ``to_oneid``), ``split`` (part of
    ``from_oneid`` became ``to_oneid``; ``from_oneid`` lives on), ``removed`` (the profile is
    gone: all its identifiers forgotten or blocked; ``to_oneid`` is empty).
    """

    kind: str
    from_oneid: str
    to_oneid: str
    identifiers: int
    run: int


@dataclass
class ResolveReport:
    """What a resolve did: profile count, links used and refused (by reason), changes."""

    run: int
    profiles: int
    identifiers: int
    links: int
    used: int
    refused: dict[str, int]
    changes: list[Change] = field(default_factory=list)

    def remap(self) -> dict[str, str]:
        """old OneID -> surviving OneID for the merges of this run (splits keep their name)."""
        return {c.from_oneid: c.to_oneid for c in self.changes if c.kind == "merge"}


@dataclass(frozen=True)
class Forgotten:
    """What :meth:`IdentityResolver.forget` removed, for the warehouse to delete likewise."""

    tokens: list[str]
    links: int
    refusals: int
    report: ResolveReport


def _concat_strings(a: pa.Array, b: pa.Array) -> pa.Array:
    """Two string arrays end to end (without a copy when one is empty)."""
    if not len(a):
        return b
    if not len(b):
        return a
    return pa.concat_arrays([a, b])


class IdentityResolver:
    """Stateful, incremental, order-independent OneID resolution over keyed-hash tokens.

    >>> r = IdentityResolver(Rules.default())              # doctest: +SKIP
    >>> r.add(extract_links(event, hasher)); report = r.resolve()

    ``blocked_tokens`` are tokens of values blocked by value (``rules.blocked_tokens(hasher)``);
    the resolver never sees raw values, so it cannot hash them itself.
    """

    def __init__(self, rules: Rules | None = None, blocked_tokens: Iterable[str] = ()) -> None:
        self.rules = rules or Rules.default()
        self.blocked_tokens = frozenset(blocked_tokens)
        self.run = 0
        # identifiers (nodes), aligned by node id
        self._tok = pa.array([], type=pa.string())
        self._type = np.zeros(0, dtype=np.int8)
        self._first = np.zeros(0, dtype=np.int64)
        self._last = np.zeros(0, dtype=np.int64)
        self._oidc = np.zeros(0, dtype=np.int64)  # OneID code the node belongs to (-1: none)
        self._named = np.zeros(0, dtype=np.int64)  # OneID code named after this node (-1: never)
        self._shared = np.zeros(0, dtype=bool)
        # distinct links, u < v
        self._u = np.zeros(0, dtype=np.int64)
        self._v = np.zeros(0, dtype=np.int64)
        self._efirst = np.zeros(0, dtype=np.int64)
        self._elast = np.zeros(0, dtype=np.int64)
        self._ecount = np.zeros(0, dtype=np.int64)
        self._eevent = pa.array([], type=pa.string())
        self._eetype = pa.array([], type=pa.string())
        self._status = np.zeros(0, dtype=np.int8)
        # every OneID ever handed out: name, origin token, and the code that stands for it now
        self._oid_names: list[str] = []
        self._oid_origin: list[str] = []
        self._oid_surv = np.zeros(0, dtype=np.int64)
        self._retired: dict[str, int] = {}  # names whose origin was forgotten -> code
        self._refusals: list[dict[str, Any]] = []
        self._forgotten_members: dict[int, int] = {}  # OneID code -> identifiers forgotten since last resolve
        self.changes: list[Change] = []

    # -- input ------------------------------------------------------------------------------

    def add(self, links: Iterable[Link] | pd.DataFrame | pa.Table) -> int:
        """Add observations (from :func:`extract_links`, or a frame with :data:`LINK_COLUMNS`).

        Only updates the graph; call :meth:`resolve` to recompute profiles. Returns the number
        of rows taken in. Adding the same observations again changes no profile (counts grow).
        """
        if isinstance(links, (pd.DataFrame, pa.Table)):
            return self._add_columns(links)
        rows = list(links)
        refused = [l for l in rows if l.reason is not None]
        for l in refused:
            self._refusals.append({
                "event_id": l.event_id, "event_type": l.event_type, "occurred_at_ms": l.occurred_at_ms,
                "role": l.role, "id_type": l.a_type, "token": l.a_token, "reason": l.reason, "detail": l.detail or "",
            })
        usable = [l for l in rows if l.reason is None]
        # self-links still show the identifier exists: keep it as a sighting
        usable += [Link(l.a_type, l.a_token, None, None, l.occurred_at_ms, l.event_id, l.event_type, l.role)
                   for l in refused if l.reason == "self_link" and l.a_token]
        if usable:
            frame = pd.DataFrame({c: [getattr(l, c) for l in usable] for c in LINK_COLUMNS})
            self._add_columns(frame)
        return len(rows)

    def _add_columns(self, table: pd.DataFrame | pa.Table) -> int:
        cols = obs.LinkColumns.read(table)
        if cols.rows == 0:
            return 0
        n_old = len(self._tok)
        batch = obs.reduce_batch(cols, self._tok)
        self._grow_nodes(batch.tokens, n_old)
        self._see_nodes(batch)
        self._refuse_self_links(cols, batch.self_links)
        self._merge_links(batch, cols.events, cols.etypes)
        return cols.rows

    def _see_nodes(self, batch: obs.Batch) -> None:
        """Record sightings: each node's type (checked to be unique) and first/last seen."""
        for seen in batch.sightings:
            fresh = self._type[seen.node] < 0
            self._type[seen.node[fresh]] = seen.node_type[fresh]
        for seen in batch.sightings:
            if not np.array_equal(self._type[seen.node], seen.node_type):
                raise ValueError("a token appears with two identifier types; tokens must include the type")
            np.minimum.at(self._first, seen.node, seen.first)
            np.maximum.at(self._last, seen.node, seen.last)

    def _refuse_self_links(self, cols: obs.LinkColumns, rows: np.ndarray) -> None:
        """A link of an identifier with itself merges nothing; the audit says so."""
        for r in rows.tolist():
            self._refusals.append({
                "event_id": cols.events[r].as_py(), "event_type": cols.etypes[r].as_py(),
                "occurred_at_ms": int(cols.t[r]), "role": "", "id_type": TYPE_NAMES[int(cols.a_type[r])],
                "token": cols.a_tok[r].as_py(), "reason": "self_link", "detail": "",
            })

    def _grow_nodes(self, uniques: pa.Array, n_old: int) -> None:
        extra = len(uniques) - n_old
        if extra <= 0:
            return
        self._tok = uniques
        self._type = np.concatenate([self._type, np.full(extra, -1, dtype=np.int8)])
        self._first = np.concatenate([self._first, np.full(extra, _I64MAX, dtype=np.int64)])
        self._last = np.concatenate([self._last, np.full(extra, np.iinfo(np.int64).min, dtype=np.int64)])
        self._oidc = np.concatenate([self._oidc, np.full(extra, -1, dtype=np.int64)])
        self._named = np.concatenate([self._named, np.full(extra, -1, dtype=np.int64)])
        self._shared = np.concatenate([self._shared, np.zeros(extra, dtype=bool)])

    def _merge_links(self, batch: obs.Batch, events: pa.Array, etypes: pa.Array) -> None:
        """Fold the batch's links into the distinct-link table (order-independent).

        Each distinct link keeps its earliest time (its first event being the smallest event
        id among those at that millisecond), its latest time and its count. Strings are
        gathered once, at the end, for the observations that end up first.

        Links already in the table keep their positions and new ones are appended in batch
        order, as nodes are: a run's new evidence then changes only the rows it touches, so a
        kept state writes those rows and no others (:func:`lastmile.identity.state.changed_since`).
        Positions carry no meaning for resolution, which is order-independent.
        """
        n_old = len(self._u)
        if not n_old and batch.distinct:
            self._u, self._v = batch.u, batch.v
            self._efirst, self._elast, self._ecount = batch.first, batch.last, batch.count
            self._eevent = gr.take_strings(events, batch.event_row)
            self._eetype = gr.take_strings(etypes, batch.event_row)
            self._status = np.zeros(len(batch.u), dtype=np.int8)
            return
        n = max(len(self._tok), 1)
        keys = np.concatenate([self._u * n + self._v, batch.u * n + batch.v])

        def events_of(rows: np.ndarray) -> list[str]:
            return [self._eevent[r].as_py() if r < n_old else events[int(batch.event_row[r - n_old])].as_py()
                    for r in rows.tolist()]

        stats = obs.link_stats(gr.group_parts(keys), np.concatenate([self._efirst, batch.first]),
                               np.concatenate([self._elast, batch.last]), np.concatenate([self._ecount, batch.count]),
                               events_of)
        k = len(stats.pick)
        # A group's smallest row is its old row if it has one (old links are distinct and come
        # first), so ordering groups by it keeps old links in place and appends the new ones.
        out = np.argsort(stats.anchor, kind="stable")
        pick = stats.pick[out]
        self._u, self._v = np.divmod(keys[pick], n)
        self._efirst, self._elast, self._ecount = stats.first[out], stats.last[out], stats.count[out]
        # The first event's strings: from the old table where an old row is still first, else from the batch.
        from_old = pick < n_old
        n_from_old = int(from_old.sum())
        where = np.empty(k, dtype=np.int64)  # position of each link's strings in old + new
        where[from_old] = np.arange(n_from_old, dtype=np.int64)
        where[~from_old] = np.arange(n_from_old, k, dtype=np.int64)
        old_rows, new_rows = pick[from_old], batch.event_row[pick[~from_old] - n_old]
        in_place = bool(from_old[:n_from_old].all())  # the usual case: every old link is still first by an old row
        for name, new_strings in (("_eevent", events), ("_eetype", etypes)):
            both = _concat_strings(gr.take_strings(getattr(self, name), old_rows), gr.take_strings(new_strings, new_rows))
            setattr(self, name, both if in_place else gr.take_strings(both, where))
        self._status = np.zeros(k, dtype=np.int8)

    # -- resolution -----------------------------------------------------------------------

    def resolve(self) -> ResolveReport:
        """Recompute all profiles from the graph under the current rules; log what changed."""
        self.run += 1
        blocked = g.blocked_mask(self._tok, self.blocked_tokens)
        res = g.resolve_graph(self._type.astype(np.int64), self._first, self._tok, blocked,
                              self._u, self._v, self._efirst, self.rules)
        self._status = res.edge_status
        self._shared = res.shared
        new_oidc = self._name_clusters(res.rep)
        changes = self._diff(self._oidc, new_oidc, res.rep)
        self._oidc = new_oidc
        self.changes.extend(changes)
        reasons = np.bincount(res.edge_status, minlength=5)
        return ResolveReport(
            run=self.run, profiles=res.clusters, identifiers=int((res.rep >= 0).sum()), links=len(self._u),
            used=int(reasons[USED]), refused={STATUS_REASONS[c]: int(reasons[c]) for c in STATUS_REASONS if reasons[c]},
            changes=changes,
        )

    def rebuild(self, rules: Rules | None = None, blocked_tokens: Iterable[str] | None = None) -> ResolveReport:
        """Re-resolve every kept link under new rules (and/or blocklist); merges AND splits are logged."""
        if rules is not None:
            self.rules = rules
        if blocked_tokens is not None:
            self.blocked_tokens = frozenset(blocked_tokens)
        return self.resolve()

    def _name_clusters(self, rep: np.ndarray) -> np.ndarray:
        """OneID code per node: the code named after its cluster's representative."""
        live = rep >= 0
        is_rep = np.zeros(len(rep), dtype=bool)
        is_rep[rep[live]] = True
        reps = np.flatnonzero(is_rep)
        unnamed = reps[self._named[reps] < 0]
        if len(unnamed):
            tokens = gr.take_strings(self._tok, unnamed)
            names = g.oneid_names(tokens)
            start = len(self._oid_names)
            codes = np.arange(start, start + len(unnamed), dtype=np.int64)
            if self._retired:
                # a forgotten identifier seen again: it gets its old name (and code) back
                for i, name in enumerate(names):
                    old = self._retired.pop(name, None)
                    if old is not None:
                        codes[i] = old
            fresh = codes >= start
            if fresh.all():
                self._oid_names.extend(names)
                self._oid_origin.extend(gr.to_pylist(tokens))
            else:
                self._oid_names.extend(n for n, f in zip(names, fresh.tolist()) if f)
                self._oid_origin.extend(gr.to_pylist(tokens.filter(pa.array(fresh))))
            codes[fresh] = np.arange(start, start + int(fresh.sum()), dtype=np.int64)
            self._oid_surv = np.concatenate([self._oid_surv, np.full(int(fresh.sum()), -1, dtype=np.int64)])
            self._named[unnamed] = codes
        out = np.full(len(rep), -1, dtype=np.int64)
        out[live] = self._named[rep[live]]
        return out

    def _diff(self, old: np.ndarray, new: np.ndarray, rep: np.ndarray) -> list[Change]:
        """Survivor of every OneID ever named, and the merges/splits between old and new."""
        r = len(self._oid_names)
        prev_surv = self._oid_surv.copy()
        surv = np.full(r, -1, dtype=np.int64)
        # 1. a name whose origin identifier is in a profile: that profile's name stands for it
        origin = np.flatnonzero(self._named >= 0)
        placed = origin[new[origin] >= 0]
        surv[self._named[placed]] = new[placed]
        # 2. origin gone or blocked: where most of its old identifiers went, by naming order
        both = (old >= 0) & (new >= 0)
        orphan = np.zeros(r, dtype=bool)
        orphan[old[both]] = True
        orphan &= surv < 0
        if orphan.any():
            nodes = np.flatnonzero(both & orphan[np.maximum(old, 0)])
            key = g.naming_key(self._type.astype(np.int64)[nodes], self._first[nodes], self.rules)
            grp, uniq = pd.factorize(old[nodes])
            _, first = g.group_first_min(grp, len(uniq), key)
            surv[uniq] = new[nodes[first]]
        # 3. names already merged before: follow what their survivor became
        for _ in range(64):
            todo = (surv < 0) & (prev_surv >= 0) & (prev_surv != np.arange(r))
            follow = np.where(todo, surv[np.maximum(prev_surv, 0)], -1)
            if not (todo & (follow >= 0) & (surv != follow)).any():
                break
            surv = np.where(todo & (follow >= 0), follow, surv)
        self._oid_surv = surv

        changes: list[Change] = []
        moved = both & (old != new)
        if moved.any():
            pairs = pd.DataFrame({"a": old[moved], "b": new[moved]}).value_counts().sort_index()
            for (a, b), count in pairs.items():
                kind = "merge" if surv[a] == b else "split"
                changes.append(Change(kind, self._oid_names[a], self._oid_names[b], int(count), self.run))
        was_alive = np.zeros(r, dtype=bool)
        was_alive[old[old >= 0]] = True
        forgotten = self._forgotten_members
        self._forgotten_members = {}
        for c in forgotten:
            was_alive[c] = True
        for c in np.flatnonzero(was_alive & (surv < 0)).tolist():
            changes.append(Change("removed", self._oid_names[c], "", int((old == c).sum()) + forgotten.get(c, 0), self.run))
        changes.sort(key=lambda c: (c.kind, c.from_oneid, c.to_oneid))
        return changes

    # -- erasure ----------------------------------------------------------------------------

    def forget(self, tokens: Iterable[str]) -> Forgotten:
        """Erase identifiers (a person's right to be forgotten): their links, refusals and tokens.

        Profiles that lose identifiers are re-resolved at once; the returned report says which
        OneIDs split or disappeared. A OneID named after a forgotten identifier keeps pointing
        at what is left of its profile (or nowhere).
        """
        wanted = set(tokens)
        mask = g.blocked_mask(self._tok, frozenset(wanted))
        found = self._tok.filter(pa.array(mask)).to_pylist()
        drop_links = mask[self._u] | mask[self._v] if len(self._u) else np.zeros(0, dtype=bool)
        before = len(self._refusals)
        self._refusals = [row for row in self._refusals if row["token"] not in wanted]
        lost = self._oidc[mask]
        for code, count in zip(*np.unique(lost[lost >= 0], return_counts=True)):
            self._forgotten_members[int(code)] = self._forgotten_members.get(int(code), 0) + int(count)
        for code in self._named[mask][self._named[mask] >= 0].tolist():
            self._retired[self._oid_names[code]] = code
            self._oid_origin[code] = ""
        keep = ~mask
        remap = np.cumsum(keep) - 1
        keep_links = ~drop_links
        self._u, self._v = remap[self._u[keep_links]], remap[self._v[keep_links]]
        for name in ("_efirst", "_elast", "_ecount", "_status"):
            setattr(self, name, getattr(self, name)[keep_links])
        self._eevent = self._eevent.filter(pa.array(keep_links))
        self._eetype = self._eetype.filter(pa.array(keep_links))
        # nodes: the old OneID assignment of forgotten nodes is dropped with them
        self._tok = self._tok.filter(pa.array(keep))
        for name in ("_type", "_first", "_last", "_oidc", "_named", "_shared"):
            setattr(self, name, getattr(self, name)[keep])
        report = self.resolve()
        return Forgotten(tokens=sorted(found), links=int(drop_links.sum()), refusals=before - len(self._refusals),
                         report=report)

    def forget_profile(self, oneid: str) -> Forgotten:
        """Erase every identifier currently in the profile ``oneid``."""
        return self.forget(self.tokens_of(oneid))

    # -- lookups ----------------------------------------------------------------------------

    def oneid_of(self, token: str) -> str | None:
        """Current OneID of a token (None: unknown or blocked)."""
        hit = np.flatnonzero(g.blocked_mask(self._tok, frozenset([token])))
        if not len(hit) or self._oidc[hit[0]] < 0:
            return None
        return self._oid_names[int(self._oidc[hit[0]])]

    def tokens_of(self, oneid: str) -> list[str]:
        """Tokens currently in the profile ``oneid``."""
        try:
            code = self._oid_names.index(oneid)
        except ValueError:
            return []
        return self._tok.filter(pa.array(self._oidc == code)).to_pylist()

    def survivor(self, oneid: str) -> str | None:
        """The OneID that stands for ``oneid`` now (itself if alive; None if gone or unknown)."""
        try:
            code = self._oid_names.index(oneid)
        except ValueError:
            return None
        s = int(self._oid_surv[code]) if code < len(self._oid_surv) else -1
        return self._oid_names[s] if s >= 0 else None

    def clusters(self) -> dict[str, frozenset[str]]:
        """OneID -> its tokens (for tests and small graphs)."""
        out: dict[str, set[str]] = {}
        for token, code in zip(self._tok.to_pylist(), self._oidc.tolist()):
            if code >= 0:
                out.setdefault(self._oid_names[code], set()).add(token)
        return {k: frozenset(v) for k, v in out.items()}

    def partition(self) -> frozenset[frozenset[str]]:
        """The clusters without their names (compare groupings across runs)."""
        return frozenset(self.clusters().values())

    @property
    def refusals(self) -> Sequence[dict[str, Any]]:
        return tuple(self._refusals)
