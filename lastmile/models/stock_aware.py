"""Stock-aware re-ranking: push what would otherwise rot, stop pushing what is about to run out.

After the re-ranker has ordered a customer's candidates by how likely they are to buy, the
shelf of the customer's community front warehouse has a say (Feast view ``sku_forecast``,
made from the stocking plan and the demand forecast):

* a SKU with units that will be written off unless they sell sooner than forecast
  (``sf_expiring_units`` > 0) moves up :data:`PROMOTE_POSITIONS` places: a sale now saves a
  write-off, and the customer was already likely to want it;
* a SKU whose stock after the next delivery covers less than :data:`SELLING_OUT_COVER_DAYS`
  of its median demand (``sf_days_of_cover``) goes to the end of the list: recommending it
  turns into lost orders and disappointed neighbours.

Only the order changes; the scores stay the re-ranker's. A SKU without forecast features
(no plan yet, another community) keeps its place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: The Feast view the signals come from, and its features.
VIEW = "sku_forecast"
FEATURES = ("sf_expiring_units", "sf_days_of_cover", "sf_p50_24h")
#: Places a SKU with stock that would expire moves up.
PROMOTE_POSITIONS = 3
#: Below this many days of median demand covered after the next delivery, a SKU is selling out.
SELLING_OUT_COVER_DAYS = 0.5

WOULD_EXPIRE, SELLING_OUT = "would_expire", "selling_out"


def stock_signal(features: Mapping[str, Any]) -> str | None:
    """``would_expire``, ``selling_out`` or None for one SKU's ``sku_forecast`` features."""
    expiring = features.get("sf_expiring_units") or 0
    cover = features.get("sf_days_of_cover")
    demand = features.get("sf_p50_24h") or 0
    if cover is not None and demand > 0 and cover < SELLING_OUT_COVER_DAYS:
        return SELLING_OUT
    if expiring > 0:
        return WOULD_EXPIRE
    return None


def rerank_by_stock(items: Sequence[dict[str, Any]], signals: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``items`` (best first, each with ``sku``) reordered by the stock signals per SKU.

    Each returned item carries ``stock``: the signal that moved it, or None.
    """
    keyed = []
    for position, item in enumerate(items):
        signal = stock_signal(signals.get(item["sku"], {}))
        if signal == WOULD_EXPIRE:
            key = position - PROMOTE_POSITIONS - 0.5  # ahead of the item it lands on
        elif signal == SELLING_OUT:
            key = len(items) + position
        else:
            key = position
        keyed.append((key, position, {**item, "stock": signal}))
    return [item for _, _, item in sorted(keyed, key=lambda k: (k[0], k[1]))]


class StockSignals:
    """Reads ``sku_forecast`` from the online store for one community's candidates.

    A registry without the view (a feature store applied before it existed) gives no
    signals, and the recommendations keep the re-ranker's order.
    """

    def __init__(self, store: Any) -> None:
        from lastmile.features.online import OnlineReader

        try:
            store.get_feature_view(VIEW)
        except Exception:  # noqa: BLE001 - Feast raises its own not-found error types
            self.reader = None
        else:
            self.reader = OnlineReader(store, [f"{VIEW}:{name}" for name in FEATURES])

    def read(self, community_id: str, skus: Sequence[str]) -> dict[str, dict[str, Any]]:
        if self.reader is None or not skus or not community_id:
            return {}
        got = self.reader.read([{"community_id": community_id, "sku": s} for s in skus])
        return {s: {name: got.get(name, [None] * len(skus))[i] for name in FEATURES} for i, s in enumerate(skus)}
