"""Stocking policies: how many units a front warehouse orders for its next 05:00 delivery.

:func:`last_week_plus_margin` is what a small operator does without a forecast: look at what
sold on the same weekday last week, add a margin, and order what the shelf is short of. It
is the simulator's default policy (so the simulated sales, stock-outs and write-offs come
from it) and the baseline the stocking replay compares a plan with, on the same true demand.

It only ever sees SALES, which stock-outs censor: a day that sold out reports what was on
the shelf, not what was wanted, so the policy chases its own shortfalls. That is the point
of comparing a forecast-driven plan with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .ledger import ShelfStock

#: Margin over last week's same-day sales: 0.55 orders 55 % more than sold (calibrated so the
#: simulated default policy fills about three in four fresh units and writes off about a sixth).
DEFAULT_MARGIN = 0.55
#: Units every listed SKU is stocked to however little it sold (a facing on the shelf).
DEFAULT_MIN_FACING = 2


def last_week_plus_margin(sales: Sequence[float], day: int, usable_on_hand: int, *, opening: float,
                          first_day: int = 0, margin: float = DEFAULT_MARGIN,
                          min_facing: int = DEFAULT_MIN_FACING) -> int:
    """Units to order (the evening before) for delivery on day index ``day``.

    ``sales[d]`` are the units sold on day ``d`` (censored, as seen at the till), for days
    before ``day``; ``first_day`` is the first day the SKU was on sale (its launch, or the
    window start). The base is last week's same-day sales; without a full week of history
    (the first week, a new SKU) it is the mean daily sales so far, and with no history at all
    ``opening`` (the supplier's suggested daily quantity). The order tops the shelf up to
    ``max(min_facing, ceil(base * (1 + margin)))`` given the ``usable_on_hand`` units that will
    still be good after the delivery arrives.
    """
    if day < 0 or first_day < 0:
        raise ValueError("day and first_day must be >= 0")
    if margin < 0 or min_facing < 0 or opening < 0 or usable_on_hand < 0:
        raise ValueError("margin, min_facing, opening and usable_on_hand must be >= 0")
    if day - 7 >= first_day:
        base = float(sales[day - 7])
    elif day > first_day:
        seen = sales[first_day:day]
        base = float(sum(seen)) / len(seen)
    else:
        base = opening
    target = max(min_facing, math.ceil(base * (1.0 + margin) - 1e-9))
    return max(0, target - usable_on_hand)


def sellable_on_hand(stock: ShelfStock, close: float) -> int:
    """The ``usable_on_hand`` the operator counts in the evening: units on the shelf that will
    still be good at the close of the delivery day (``close``), so stock that expires during
    that day is not relied on."""
    return stock.on_hand - stock.expiring_by(close)
