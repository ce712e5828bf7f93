"""Which orders sat in a compartment while it was out of range.

Telemetry knows compartments, claims know orders; this is the bridge. An order is in its
compartment from the moment its goods are loaded until it is picked up:

* loaded at ``delivery_slot_start - loading_lead`` (couriers fill lockers before the slot
  opens), but never before the order was placed;
* out at its pickup, or, if nobody collects it, when staff clear the compartment
  ``uncollected_cleared_after`` after the slot ends.

It is affected by an incident when those intervals overlap: loaded before the incident
ended, and still there after it started. An order picked up before the excursion started,
or loaded after it ended, is not affected, even in the same compartment.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from lastmile.coldchain.config import ColdChainConfig


@dataclass(frozen=True)
class OrderStay:
    """An order's goods in a compartment (from the warehouse's raw_order and raw_pickup)."""

    order_id: str
    compartment_id: str
    placed_at: datetime
    slot_start: datetime
    slot_end: datetime
    total_cny: float
    picked_up_at: datetime | None = None

    def loaded_at(self, cfg: ColdChainConfig) -> datetime:
        return max(self.placed_at, self.slot_start - timedelta(minutes=cfg.loading_lead_minutes))

    def out_at(self, cfg: ColdChainConfig) -> datetime:
        if self.picked_up_at is not None:
            return self.picked_up_at
        return self.slot_end + timedelta(hours=cfg.uncollected_cleared_after_hours)


@dataclass(frozen=True)
class Span:
    """An incident's compartment and time span (ended_at None: still going)."""

    incident_id: str
    compartment_id: str
    started_at: datetime
    ended_at: datetime | None


def affected(span: Span, stays: Iterable[OrderStay], cfg: ColdChainConfig) -> list[OrderStay]:
    """The stays in ``span``'s compartment that overlap it, in order id order."""
    hits = []
    for stay in stays:
        if stay.compartment_id != span.compartment_id:
            continue
        loaded, out = stay.loaded_at(cfg), stay.out_at(cfg)
        if span.ended_at is not None and loaded >= span.ended_at:
            continue  # loaded after the compartment was back in range
        if out <= span.started_at:
            continue  # collected (or cleared) before it went out of range
        hits.append(stay)
    return sorted(hits, key=lambda s: s.order_id)


def link(spans: Iterable[Span], stays: Iterable[OrderStay], cfg: ColdChainConfig) -> dict[str, list[OrderStay]]:
    """incident id -> affected stays, for many incidents at once (indexed by compartment)."""
    by_compartment: dict[str, list[OrderStay]] = defaultdict(list)
    for stay in stays:
        by_compartment[stay.compartment_id].append(stay)
    return {span.incident_id: affected(span, by_compartment.get(span.compartment_id, ()), cfg) for span in spans}
