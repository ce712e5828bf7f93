"""Predictive commerce: who is due to buy their staple again ("avocados every Monday").

A customer has a **rhythm** for a SKU when they bought it on at least
:attr:`Rhythm.min_purchases` business days, at intervals regular enough (coefficient of
variation of the gaps at most :attr:`Rhythm.max_cv`) and not daily noise (mean interval at
least :attr:`Rhythm.min_interval_days`). Their next purchase is **due** on the last purchase
day plus the mean interval, rounded to whole days. It is the same rhythm the
``next_purchase`` feature view serves (``feat_customer_sku``); this module evaluates it
on the raw orders as of a moment, so the streaming worker can nudge on the due day itself
rather than after the next batch feature build.

The nudge goes out from the due day to :attr:`Rhythm.grace_days` after it (``as_of``'s
business day, ``LASTMILE_BUSINESS_TZ``), and only while no purchase of that SKU came after the last one (by
construction: "last" is the latest, so a purchase moves the due day).
Each nudge has a deterministic id - customer, SKU, due day - so re-evaluating the same day
(or replaying after a crash) repeats the id and consumers deduplicate on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from lastmile.config import settings
from lastmile.warehouse import Warehouse


@dataclass(frozen=True)
class Rhythm:
    """How regular a purchase history must be to predict the next one."""

    min_purchases: int = 3
    max_cv: float = 0.35
    min_interval_days: float = 3.0
    history_days: int = 120  # only this much history is read (older habits may have changed)
    grace_days: int = 1  # still nudge this many days after the due day (a quiet morning, a late evaluation)


@dataclass(frozen=True)
class Due:
    """A customer whose next purchase of a SKU is due."""

    oneid: str
    sku: str
    purchases: int
    last_purchase: date
    mean_interval_days: float
    due: date

    @property
    def action_id(self) -> str:
        return f"replenish:{self.oneid}:{self.sku}:{self.due.isoformat()}"


def due_replenishments(warehouse: Warehouse, as_of: datetime, rhythm: Rhythm = Rhythm()) -> list[Due]:
    """Customers whose next purchase of a SKU is due on ``as_of``'s business day (or was, within
    the grace days). Needs ``event_oneid``."""
    if not {"raw_order", "event_oneid"} <= set(warehouse.tables()):
        return []
    tz = settings().business_tz
    rows = warehouse.rows(f"""
        WITH toDate({{as_of:DateTime64(3, 'UTC')}}, '{tz}') AS today
        SELECT oneid, sku, n, last_day, mean_gap, due FROM (
            SELECT oneid, sku, length(days) AS n, days[-1] AS last_day,
                   arrayMap((d, p) -> toFloat64(d - p), arrayPopFront(days), arrayPopBack(days)) AS gaps,
                   arrayAvg(gaps) AS mean_gap,
                   sqrt(arrayAvg(arrayMap(g -> (g - mean_gap) * (g - mean_gap), gaps))) AS sd_gap,
                   last_day + toIntervalDay(toUInt32(round(mean_gap))) AS due
            FROM (
                SELECT e.oneid AS oneid, item.1 AS sku, arraySort(groupUniqArray(toDate(o.occurred_at, '{tz}'))) AS days
                FROM raw_order AS o FINAL
                ARRAY JOIN o.items AS item
                INNER JOIN event_oneid AS e ON e.event_id = o.event_id AND e.event_type = 'order'
                WHERE o.occurred_at <= {{as_of:DateTime64(3, 'UTC')}}
                  AND toDate(o.occurred_at, '{tz}') >= today - {int(rhythm.history_days)}
                GROUP BY oneid, sku
                HAVING length(days) >= {int(rhythm.min_purchases)}
            )
            WHERE mean_gap >= {float(rhythm.min_interval_days)} AND sd_gap <= {float(rhythm.max_cv)} * mean_gap
        )
        WHERE due <= today AND today <= due + {int(rhythm.grace_days)}
        ORDER BY oneid, sku
        """, {"as_of": as_of})
    return [Due(oneid, sku, int(n), last, round(float(gap), 2), due) for oneid, sku, n, last, gap, due in rows]
