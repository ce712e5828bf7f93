"""Today's counters per customer, kept as orders stream in: the ``customer_realtime`` features.

Marketing automation wants to know *now* that a neighbour has ordered three times today and
spent 400 yuan, mostly on snacks - the batch features only know it after the day closes.
:class:`TodayCounters` keeps, per OneID, the orders of that customer's latest business day
(the business time zone ``LASTMILE_BUSINESS_TZ``, like the batch features and marts) and turns them into the push source's columns
(:data:`lastmile.features.push.COLUMNS`).

Why per order and not running sums: the stream is at-least-once, so the same order arrives
again after a crash; keeping orders by ``event_id`` makes a replay change nothing. And
OneID moves: a later link merges two people. Keeping orders with the identifiers they
named (not with the OneID they had when they arrived) lets :meth:`TodayCounters.set_identities`
re-attribute them, and push the merged customer's counters once.

An order whose identifiers have no OneID yet (a new neighbour: OneID runs behind the stream)
waits, and is counted - and pushed - after the resolution that names its person. One that
is still unnamed after :data:`WAIT_RESOLUTIONS` resolutions never will be (its identifiers
are blocked or forgotten) and is dropped.

What is kept: the orders of the business day of the stream's **watermark** and the day
before (:data:`KEEP_DAYS`). The watermark is the oldest of the partitions' newest event
times - partitions are consumed independently, so one may run days ahead of another
during a replay, and the slowest one says how far the stream surely got. Orders older than
that are nobody's "today" any more; their customers' last pushed values age out of the
online store with the view's one-day TTL.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd

from lastmile.config import settings
#: Resolutions an order may wait for a OneID before it is given up.
WAIT_RESOLUTIONS = 2
#: Business days kept behind the watermark's (the watermark's day and the one before).
KEEP_DAYS = 2


@dataclass(frozen=True)
class OrderFact:
    """What the counters need of one order."""

    event_id: str
    tokens: tuple[str, ...]  # the buyer's identifier tokens, strongest first
    occurred_at_ms: int
    spend: float
    impulse_spend: float
    produced_ms: int | None = None  # when it entered the stream (Kafka timestamp), for freshness
    source: str = ""  # the partition it came from (``kafka:<topic>/<n>``); '' when reloaded from the warehouse

    @cached_property
    def day(self) -> date:
        # Cached: the counters compare it on every add, push and move of the window.
        return business_day(self.occurred_at_ms)


def business_day(ms: int, zone: ZoneInfo | None = None) -> date:
    """The business day (``LASTMILE_BUSINESS_TZ`` unless ``zone`` is given) of a UTC
    epoch-millisecond instant: the day dbt's ``business_date`` macro gives the same instant.
    Computed through the zone's rules, so a zone with daylight saving cuts days right too."""
    return datetime.fromtimestamp(ms / 1000, zone or _zone(settings().business_tz)).date()


@lru_cache(maxsize=8)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def order_fact(row: Mapping, buyer_columns: Iterable[str], impulse_skus: frozenset[str],
               produced_ms: int | None = None) -> OrderFact:
    """An :class:`OrderFact` from a raw_order row as written (identifiers already hashed)."""
    from lastmile.contracts import parse_timestamp

    items = row.get("items") or []
    impulse = sum(float(i["qty"]) * float(i["unit_price"]) for i in items if i.get("sku") in impulse_skus)
    tokens = tuple(row[c] for c in buyer_columns if row.get(c))
    occurred = parse_timestamp(row["occurred_at"])
    return OrderFact(row["event_id"], tokens, int(occurred.timestamp() * 1000), float(row.get("total_amount") or 0.0),
                     round(impulse, 2), produced_ms, row.get("_source") or "")


@dataclass
class TodayCounters:
    """Per OneID: the orders of their latest business day, and the push frame they make."""

    #: token -> (oneid, shared); an order belongs to the OneID of its strongest unshared token
    #: (the rule of the ``event_oneid`` view), else of its strongest shared one.
    identities: dict[str, tuple[str, bool]] = field(default_factory=dict)
    orders: dict[str, OrderFact] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)  # event_id -> oneid ('' while unresolved)
    by_oneid: dict[str, set[str]] = field(default_factory=dict)
    by_token: dict[str, set[str]] = field(default_factory=dict)  # token -> kept event_ids naming it
    waited: dict[str, int] = field(default_factory=dict)  # unresolved event_id -> resolutions seen
    #: Orders that became counted in the last :meth:`add` or :meth:`update_identities` call.
    counted: list[OrderFact] = field(default_factory=list)
    newest_by_source: dict[str, int] = field(default_factory=dict)  # partition -> newest event time (ms)
    oldest_kept: date | None = None

    def oneid_of(self, fact: OrderFact) -> str:
        shared_choice = ""
        for token in fact.tokens:
            found = self.identities.get(token)
            if found is None:
                continue
            oneid, shared = found
            if not shared:
                return oneid
            shared_choice = shared_choice or oneid
        return shared_choice

    def add(self, facts: Iterable[OrderFact]) -> set[str]:
        """Count new orders (replays are ignored); returns the OneIDs whose counters changed."""
        touched: set[str] = set()
        self.counted = []
        newest = self.newest_by_source
        for fact in facts:
            if fact.source and fact.occurred_at_ms > newest.get(fact.source, 0):
                newest[fact.source] = fact.occurred_at_ms
            if fact.event_id in self.orders or (self.oldest_kept is not None and fact.day < self.oldest_kept):
                continue  # a replay, or too late to be anyone's today
            self.orders[fact.event_id] = fact
            for token in fact.tokens:
                self.by_token.setdefault(token, set()).add(fact.event_id)
            self._attach(fact)
            if self.owner[fact.event_id]:
                touched.add(self.owner[fact.event_id])
                self.counted.append(fact)
        self._advance()
        return touched

    def set_identities(self, identities: dict[str, tuple[str, bool]]) -> set[str]:
        """Adopt a whole new token -> OneID map; returns the OneIDs whose counters changed."""
        changes = {t: v for t, v in identities.items() if self.identities.get(t) != v}
        changes.update({t: ("", False) for t in self.identities if t not in identities})
        return self.update_identities(changes)

    def update_identities(self, changes: dict[str, tuple[str, bool]]) -> set[str]:
        """Adopt the tokens whose OneID changed in a resolution (``''``: no OneID any more).

        Only orders naming a changed token - and those still waiting for a OneID, which
        count this resolution - are re-attributed, so the cost follows the change, not the
        state. Returns the OneIDs whose counters changed (both sides of a merge or split).
        """
        waiting = set(self.by_oneid.get("", ()))
        affected = set(waiting)
        for token, (oneid, shared) in changes.items():
            if oneid:
                self.identities[token] = (oneid, shared)
            else:
                self.identities.pop(token, None)
            affected |= self.by_token.get(token, set())
        touched: set[str] = set()
        for event_id in affected:
            old, new = self.owner[event_id], self.oneid_of(self.orders[event_id])
            if old != new:
                self._detach(event_id)
                self.owner[event_id] = new
                self.by_oneid.setdefault(new, set()).add(event_id)
                touched |= {old, new}
        self.counted = [self.orders[e] for e in waiting if self.owner[e]]
        for event_id in waiting:
            if self.owner[event_id]:
                self.waited.pop(event_id, None)
            else:
                self.waited[event_id] = self.waited.get(event_id, 0) + 1
                if self.waited[event_id] >= WAIT_RESOLUTIONS:
                    self._drop(event_id)
        return touched - {""}

    @property
    def unresolved(self) -> int:
        return len(self.by_oneid.get("", ()))

    def frame(self, oneids: Iterable[str]) -> pd.DataFrame:
        """The push frame (``lastmile.features.push.COLUMNS`` + ``event_timestamp``) for ``oneids``."""
        rows = []
        for oneid in sorted(set(oneids) - {""}):
            facts = [self.orders[e] for e in self.by_oneid.get(oneid, ())]
            if not facts:
                continue
            today = max(f.day for f in facts)
            todays = [f for f in facts if f.day == today]
            last = max(f.occurred_at_ms for f in todays)
            rows.append({"oneid": oneid, "event_timestamp": pd.Timestamp(last, unit="ms", tz="UTC"),
                         "rt_orders_today": len(todays), "rt_spend_today_cny": round(sum(f.spend for f in todays), 2),
                         "rt_impulse_spend_today_cny": round(sum(f.impulse_spend for f in todays), 2),
                         "rt_last_order_ts": last // 1000})
        columns = ["oneid", "event_timestamp", "rt_orders_today", "rt_spend_today_cny", "rt_impulse_spend_today_cny",
                   "rt_last_order_ts"]
        return pd.DataFrame(rows, columns=columns)

    def _attach(self, fact: OrderFact) -> None:
        oneid = self.oneid_of(fact)
        self.owner[fact.event_id] = oneid
        self.by_oneid.setdefault(oneid, set()).add(fact.event_id)

    def _advance(self) -> None:
        """Move the kept window with the watermark, letting go of what falls out of it."""
        if not self.newest_by_source:
            return
        oldest = business_day(min(self.newest_by_source.values())) - timedelta(days=KEEP_DAYS - 1)
        if self.oldest_kept is not None and oldest <= self.oldest_kept:
            return
        self.oldest_kept = oldest
        for event_id in [e for e, f in self.orders.items() if f.day < oldest]:
            self._drop(event_id)

    def _detach(self, event_id: str) -> None:
        oneid = self.owner[event_id]
        events = self.by_oneid.get(oneid)
        if events is not None:
            events.discard(event_id)
            if not events:
                del self.by_oneid[oneid]

    def _drop(self, event_id: str) -> None:
        self._detach(event_id)
        fact = self.orders.pop(event_id)
        self.waited.pop(event_id, None)
        del self.owner[event_id]
        for token in fact.tokens:
            events = self.by_token.get(token)
            if events is not None:
                events.discard(event_id)
                if not events:
                    del self.by_token[token]
