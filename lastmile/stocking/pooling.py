"""Neighbouring front warehouses covering each other's shortfall from surplus stock.

Communities a few kilometres apart are served by the same morning van. When one front
warehouse holds more good units of a SKU than its own target for the next selling period and
a neighbour within ``LASTMILE_POOL_KM`` is short of it, the van moves the surplus over at the
delivery instead of the supplier sending more: the short warehouse orders that much less and
its plan names where the units come from (``pool_from``). Surplus that would otherwise expire
on one shelf sells on the other.

Each short warehouse takes from one neighbour (the nearest that has a surplus; the plan
names a single source), and the shortest distances are served first so the van's detours stay
short. A neighbour never gives below its own target.

Moving a unit costs its handling (``LASTMILE_POOL_UNIT_COST``: picking, the van's detour) and
saves buying a fresh one, so a SKU's surplus moves only when the handling is below its unit
cost; the stocking replay counts the handling of every unit moved.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from lastmile.stocking.newsvendor import Decision


@dataclass(frozen=True)
class Transfer:
    """Units of one SKU moved between two front warehouses at a delivery."""

    sku: str
    from_community: str
    to_community: str
    qty: int
    km: float


def neighbours_within(distances: Iterable[Mapping[str, object]], max_km: float) -> dict[str, list[tuple[float, str]]]:
    """community_id -> [(km, neighbour_id)] nearest first, for pairs at most ``max_km`` apart.

    Rows are ``{"community_id", "neighbour_id", "km"}`` (``reference/community_distances.jsonl``);
    a pair listed one way only counts both ways. Pooling is off when ``max_km`` is 0.
    """
    near: dict[str, dict[str, float]] = defaultdict(dict)
    if max_km <= 0:
        return {}
    for row in distances:
        a, b, km = str(row["community_id"]), str(row["neighbour_id"]), float(row["km"])  # type: ignore[arg-type]
        if a == b or not km <= max_km:
            continue
        near[a][b] = min(km, near[a].get(b, km))
        near[b][a] = min(km, near[b].get(a, km))
    return {c: sorted((km, n) for n, km in found.items()) for c, found in near.items()}


def pool(decisions: Sequence[Decision], neighbours: Mapping[str, list[tuple[float, str]]],
         unit_cost: Mapping[str, float] | None = None, handling: float = 0.0) -> list[Transfer]:
    """Cover shortfalls from neighbours' surplus, changing ``decisions`` in place.

    ``decisions``: one per community for the same delivery (any mix of SKUs). A covered
    warehouse's ``order_qty`` drops by what it takes, with ``pool_from`` and ``pooled_qty``
    set; the giver's decision notes what it gives. ``handling``: CNY to move a unit; SKUs whose
    ``unit_cost`` (CNY) is not above it are not moved. Returns the transfers made.
    """
    if not neighbours:
        return []
    costs = unit_cost or {}
    by_sku: dict[str, dict[str, Decision]] = defaultdict(dict)
    for d in decisions:
        by_sku[d.sku][d.community_id] = d
    transfers: list[Transfer] = []
    for sku, here in sorted(by_sku.items()):
        if handling > 0 and not costs.get(sku, float("inf")) > handling:
            continue  # buying a fresh unit is cheaper than moving one
        spare = {c: d.surplus for c, d in here.items() if d.surplus > 0}
        if not spare:
            continue
        # Every (short warehouse, neighbour with surplus) pair, shortest first.
        pairs = sorted((km, c, n) for c, d in here.items() if d.order_qty > 0
                       for km, n in neighbours.get(c, ()) if spare.get(n, 0) > 0)
        for km, c, n in pairs:
            d = here[c]
            if d.pool_from is not None or spare.get(n, 0) <= 0 or d.order_qty <= 0:
                continue
            qty = min(spare[n], d.order_qty)
            spare[n] -= qty
            d.order_qty -= qty
            d.pooled_qty, d.pool_from = qty, n
            here[n].notes.append(f"{qty} spare to neighbour {c} ({km:.1f} km)")
            transfers.append(Transfer(sku, n, c, qty, km))
    return transfers
