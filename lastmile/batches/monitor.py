"""The state behind batch-quality alerts: which orders carry which batches, and each batch's feedback.

:class:`BatchMonitor` takes orders, reviews and claims (rows as the raw tables hold them, in
any order: feedback about an order not seen yet waits for it) and returns a
:class:`BatchAlert` the moment a batch crosses the rule of :mod:`lastmile.batches.rules`.
The stream worker feeds it each written batch; ``lastmile run`` feeds it the warehouse in
event-time order (:mod:`lastmile.batches.evaluate`). One state machine, one rule.

Counting unit: an *order with feedback* (a review or a claim) of the batch, counted for
every batch of the order; it is *bad* for a batch when a bad signal of the order is blamed on
it. A review names an order, not a line: a tag naming a kind of product (overripe: fruit)
narrows the blame to the order's lines of that category; otherwise every batch of the order
shares it - until one of them alerts. An alerted batch *explains* its bad orders: the other
batches of those orders stop counting them (and signals arriving later on such orders blame
the alerted batch only), so a bad batch does not drag down the good batches sold beside it.
Batches that alerted leave their SKU's baseline, so a run of bad batches cannot make "bad"
look normal.

Replays are harmless: an order or a feedback event (by ``event_id``) is counted once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from lastmile.batches.rules import BatchRules, Signal, Verdict, baseline_rate, claim_signal, judge, review_signal
from lastmile.contracts import read_time

ACTION = "batch_quality_alert"


def epoch_s(value: Any) -> float:
    """Event time (ISO 8601 text with offset, or a datetime; naive means UTC) as epoch seconds."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    return read_time(str(value))[0].timestamp()


def iso_utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def alert_id(batch_id: str) -> str:
    """One alert per batch, whichever process raises it (the stream, a replay): the key of the
    ``batch_quality_alerts`` table and of the ``lastmile.actions`` message."""
    return f"batch_quality:{batch_id}"


@dataclass
class BatchState:
    """Running counts of one batch."""

    batch_id: str
    sku: str
    origin: str = ""
    category: str = ""
    merchants: Counter = field(default_factory=Counter)
    orders: int = 0
    feedback: int = 0
    bad: int = 0
    reviews: int = 0
    bad_reviews: int = 0
    claims: int = 0
    reasons: Counter = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    first_bad_s: float | None = None
    alerted: bool = False
    bad_orders: set[str] = field(default_factory=set)  # orders counted bad for this batch
    explained: set[str] = field(default_factory=set)  # orders whose bad signal an alerted batch explains
    last_s: float = 0.0


@dataclass
class _Order:
    batches: tuple[str, ...]
    placed_s: float
    feedback: bool = False


@dataclass(frozen=True)
class BatchAlert:
    """A batch that crossed the rule: what procurement reads (and the warehouse row)."""

    alert_id: str
    batch_id: str
    sku: str
    origin: str
    merchants: list[str]
    orders: int
    feedback: int
    bad: int
    reviews: int
    bad_reviews: int
    claims: int
    bad_rate: float
    baseline_rate: float
    rate_lower_bound: float
    p_value: float
    reasons: dict[str, int]
    sample_texts: list[str]
    first_bad_at: str
    alert_at: str  # event time of the review or claim that tipped it
    event_id: str
    event_type: str

    def action(self) -> Any:
        """The ``lastmile.actions`` message (same shape as the journeys' sends)."""
        from lastmile.streaming.actions import Action

        details = {k: v for k, v in self.__dict__.items()
                   if k not in ("alert_id", "event_id", "event_type", "alert_at")}
        return Action(action_id=self.alert_id, action=ACTION, event_id=self.event_id, event_type=self.event_type,
                      occurred_at=self.alert_at, person=None, details=details)


class BatchMonitor:
    """Feed orders, reviews and claims; get the alerts they tip."""

    def __init__(self, rules: BatchRules, alerted: Iterable[str] = ()) -> None:
        self.rules = rules
        self.batches: dict[str, BatchState] = {}
        self.orders: dict[str, _Order] = {}
        #: batch ids alerted before (by the table): counted, never alerted again, out of the baselines.
        self.known_alerts: set[str] = set(alerted)
        self._waiting: dict[str, list[tuple[str, str, float, Signal, str | None]]] = {}
        self._events: dict[str, float] = {}  # feedback event id -> event time (replays count once)
        self._sku: dict[str, list[float]] = {}  # sku -> [bad, feedback] over batches not alerted
        self._all = [0.0, 0.0]
        self.newest_s = 0.0

    # -- input -------------------------------------------------------------------------

    def order(self, row: dict[str, Any]) -> list[BatchAlert]:
        """An order (raw_order row: ``order_id``, ``occurred_at``, ``merchant_id``, ``items``)."""
        order_id = row.get("order_id") or ""
        if not order_id or order_id in self.orders:
            return []
        at = epoch_s(row["occurred_at"])
        self.newest_s = max(self.newest_s, at)
        batches: list[str] = []
        for item in row.get("items") or ():
            batch_id, sku = item.get("batch_id"), item.get("sku")
            if not batch_id or not sku or batch_id in batches:
                continue
            batches.append(batch_id)
            state = self.batches.get(batch_id)
            if state is None:
                state = self.batches[batch_id] = BatchState(batch_id, sku, item.get("origin") or "",
                                                            item.get("category") or "",
                                                            alerted=batch_id in self.known_alerts)
            state.orders += 1
            state.last_s = max(state.last_s, at)
            if row.get("merchant_id"):
                state.merchants[row["merchant_id"]] += 1
        self.orders[order_id] = _Order(tuple(batches), at)
        alerts: list[BatchAlert] = []
        for waiting in self._waiting.pop(order_id, ()):
            alerts += self._apply(order_id, *waiting)
        return alerts

    def review(self, row: dict[str, Any]) -> list[BatchAlert]:
        """A review (raw_review row: ``event_id``, ``order_id``, ``occurred_at``, ``stars``, ``tags``, ``text``)."""
        signal = review_signal(row.get("stars"), row.get("tags"), self.rules)
        return self._feedback(row, "review", signal, row.get("text"))

    def claim(self, row: dict[str, Any]) -> list[BatchAlert]:
        """A return (raw_return row); only ``kind = claim`` is feedback about the goods."""
        if row.get("kind") != "claim":
            return []
        return self._feedback(row, "return", claim_signal(row.get("reason"), self.rules), None)

    def feed(self, table: str, row: dict[str, Any]) -> list[BatchAlert]:
        """Route a raw row by its table (raw_order, raw_review, raw_return)."""
        if table == "raw_order":
            return self.order(row)
        if table == "raw_review":
            return self.review(row)
        if table == "raw_return":
            return self.claim(row)
        return []

    # -- state -------------------------------------------------------------------------

    def _feedback(self, row: dict[str, Any], event_type: str, signal: Signal, text: str | None) -> list[BatchAlert]:
        event_id, order_id = row.get("event_id") or "", row.get("order_id") or ""
        if not event_id or not order_id or event_id in self._events:
            return []
        at = epoch_s(row["occurred_at"])
        self._events[event_id] = at
        self.newest_s = max(self.newest_s, at)
        if order_id not in self.orders:
            self._waiting.setdefault(order_id, []).append((event_id, event_type, at, signal, text))
            return []
        return self._apply(order_id, event_id, event_type, at, signal, text)

    def _count(self, state: BatchState, bad: float, feedback: float) -> None:
        if state.alerted:
            return
        sku = self._sku.setdefault(state.sku, [0.0, 0.0])
        sku[0] += bad
        sku[1] += feedback
        self._all[0] += bad
        self._all[1] += feedback

    def _apply(self, order_id: str, event_id: str, event_type: str, at: float, signal: Signal,
               text: str | None) -> list[BatchAlert]:
        order = self.orders[order_id]
        first_feedback = not order.feedback
        order.feedback = True
        states = [self.batches[b] for b in order.batches]
        for state in states:
            state.last_s = max(state.last_s, at)
            state.reviews += event_type == "review"
            if first_feedback:
                state.feedback += 1
                self._count(state, 0, 1)
        if not signal.bad or not states:
            return []
        blamed = self.culprits(states, signal)
        if blamed[0].alerted:  # the order's alerted batch explains it: unknown for the others
            for state in states:
                if not state.alerted and state in self._candidates(states, signal):
                    self._explain(state, order_id)
        for state in blamed:
            state.reasons.update(signal.reasons)
            if event_type == "review":
                state.bad_reviews += 1
            else:
                state.claims += 1
            if text and len(state.samples) < self.rules.sample_texts:
                state.samples.append(text)
            state.first_bad_s = at if state.first_bad_s is None else min(state.first_bad_s, at)
            if order_id not in state.bad_orders and order_id not in state.explained:
                state.bad_orders.add(order_id)
                state.bad += 1
                self._count(state, 1, 0)
        alerts: list[BatchAlert] = []
        waiting = [s for s in blamed if not s.alerted]
        while waiting:
            verdicts = [(self.verdict(s), s) for s in waiting]
            fired = [(v.p_value, k) for k, (v, _) in enumerate(verdicts) if v.fired]
            if not fired:
                break
            verdict, state = verdicts[min(fired)[1]]
            alerts.append(self._alert(state, verdict, event_id, event_type, at))
            waiting = [s for s in waiting if s is not state and order_id in s.bad_orders]
        return alerts

    def verdict(self, state: BatchState) -> Verdict:
        """The rule on the batch's own evidence. A bad order shared with other blamed batches
        counts for this one in proportion to its suspicion (:meth:`suspicion`) against theirs:
        a good batch sold beside bad ones holds a small share of each of its bad orders and
        waits; a bad batch, bad in all its orders, holds most of them and alerts. Both the
        full counts and the batch's own share must cross."""
        baseline = self.baseline(state)
        feedback = self.feedback(state)
        verdict = judge(state.bad, feedback, baseline, self.rules)
        if not verdict.fired:
            return verdict
        own = self.own_share(state)
        own_bad = int(own + 1e-9)
        if own_bad == state.bad:
            return verdict
        mine_only = judge(own_bad, feedback - (state.bad - own_bad), baseline,
                          replace(self.rules, alpha=self.rules.own_alpha))
        return verdict if mine_only.fired else mine_only

    def own_share(self, state: BatchState, rounds: int = 8) -> float:
        """The batch's share of its bad orders: each shared bad order is split between the
        batches blamed for it in proportion to their suspicion, re-estimated from those shares
        a few rounds (expectation-maximisation over the batches sharing bad orders with it)."""
        near = {state.batch_id: state}
        for order_id in state.bad_orders:
            order = self.orders.get(order_id)
            for b in order.batches if order else ():
                other = self.batches[b]
                if not other.alerted and order_id in other.bad_orders:
                    near[b] = other
        share = {b: float(s.bad) for b, s in near.items()}
        for _ in range(rounds):
            suspicion = {b: self.suspicion(s, share[b]) for b, s in near.items()}
            share = {}
            for b, s in near.items():
                total = 0.0
                for order_id in s.bad_orders:
                    order = self.orders.get(order_id)
                    blamed = [x for x in (order.batches if order else (b,))
                              if x == b or (not self.batches[x].alerted and order_id in self.batches[x].bad_orders)]
                    weights = [suspicion[x] if x in suspicion else self.suspicion(self.batches[x]) for x in blamed]
                    total += (suspicion[b] / sum(weights)) if b in blamed else 0.0
                share[b] = total
        return share[state.batch_id]

    def suspicion(self, state: BatchState, bad: float | None = None) -> float:
        """How many times its baseline the batch's bad share is (``bad``: its share of its bad
        orders; shrunk by ``blame_prior`` orders at the baseline, so one bad order of one is
        not "ten times the baseline")."""
        bad = state.bad if bad is None else bad
        baseline = self.baseline(state)
        prior = self.rules.blame_prior
        feedback = self.feedback(state) - (state.bad - bad)
        return (bad + prior * baseline) / (feedback + prior) / baseline

    def culprits(self, states: list[BatchState], signal: Signal) -> list[BatchState]:
        """The batches of an order a bad signal is blamed on: those of the categories its tags
        name (when the order has any), and of those the alerted ones if there are (they explain
        it), else all."""
        states = self._candidates(states, signal)
        return [s for s in states if s.alerted] or states

    def _candidates(self, states: list[BatchState], signal: Signal) -> list[BatchState]:
        categories = self.rules.categories(signal.reasons)
        if categories:
            return [s for s in states if s.category in categories] or states
        return states

    def feedback(self, state: BatchState) -> int:
        """Orders with feedback that speak about the batch (those an alerted batch explains do not)."""
        return state.feedback - len(state.explained)

    def _explain(self, state: BatchState, order_id: str) -> None:
        """An alerted batch explains ``order_id``'s bad signal: for ``state`` the order is unknown."""
        if order_id in state.explained or order_id not in self.orders or not self.orders[order_id].feedback:
            return
        state.explained.add(order_id)
        bad = order_id in state.bad_orders
        if bad:
            state.bad_orders.discard(order_id)
            state.bad -= 1
        self._count(state, -bad, -1)

    def baseline(self, state: BatchState) -> float:
        """The SKU's baseline for ``state``, its own counts left out."""
        sku_bad, sku_feedback = self._sku.get(state.sku, (0.0, 0.0))
        own_bad, own_feedback = (0, 0) if state.alerted else (state.bad, self.feedback(state))
        return baseline_rate(sku_bad - own_bad, sku_feedback - own_feedback,
                             self._all[0] - own_bad, self._all[1] - own_feedback, self.rules)

    def _alert(self, state: BatchState, verdict: Verdict, event_id: str, event_type: str, at: float) -> BatchAlert:
        """Raise ``state``'s alert: it leaves the baselines and explains its bad orders."""
        self._count(state, -state.bad, -self.feedback(state))
        state.alerted = True
        for order_id in state.bad_orders:
            order = self.orders.get(order_id)
            for other in (self.batches[b] for b in (order.batches if order else ()) if b != state.batch_id):
                if not other.alerted and order_id in other.bad_orders:
                    self._explain(other, order_id)
        return BatchAlert(
            alert_id=alert_id(state.batch_id), batch_id=state.batch_id, sku=state.sku, origin=state.origin,
            merchants=[m for m, _ in state.merchants.most_common()], orders=state.orders, feedback=self.feedback(state),
            bad=state.bad, reviews=state.reviews, bad_reviews=state.bad_reviews, claims=state.claims,
            bad_rate=round(state.bad / max(1, self.feedback(state)), 4), baseline_rate=round(verdict.baseline, 4),
            rate_lower_bound=round(verdict.rate_lower_bound, 4), p_value=verdict.p_value,
            reasons=dict(state.reasons.most_common()), sample_texts=list(state.samples),
            first_bad_at=iso_utc(state.first_bad_s if state.first_bad_s is not None else at), alert_at=iso_utc(at),
            event_id=event_id, event_type=event_type)

    def forget_before(self, seconds: float) -> int:
        """Drop orders placed before ``seconds`` and batches quiet since then (their feedback
        stays in the SKU baselines). Returns how many orders were dropped."""
        old = [k for k, o in self.orders.items() if o.placed_s < seconds]
        for k in old:
            del self.orders[k]
        for k in [k for k, b in self.batches.items() if b.last_s < seconds]:
            del self.batches[k]
        for k in [k for k, waiting in self._waiting.items() if all(w[2] < seconds for w in waiting)]:
            del self._waiting[k]
        for k in [k for k, t in self._events.items() if t < seconds]:
            del self._events[k]
        return len(old)
