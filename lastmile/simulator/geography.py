"""Where the community front warehouses are: coordinates and the distances between them.

Neighbouring front warehouses can cover each other's shortfall (a van across the district),
so the stocking plan needs to know which are close. Each community sits near its district's
centre in Hangzhou, jittered by a seeded draw of its own (the rest of the world is unchanged
by it); distances are great-circle kilometres.
"""

from __future__ import annotations

import math
from typing import Any

from .config import SimulationConfig
from .supply import warehouse_id
from .world import World

#: Approximate centre (lat, lon) of each district.
DISTRICT_CENTRE: dict[str, tuple[float, float]] = {
    "西湖区": (30.259, 120.130), "拱墅区": (30.319, 120.142), "上城区": (30.242, 120.169),
    "滨江区": (30.208, 120.211), "余杭区": (30.419, 120.299), "萧山区": (30.163, 120.264),
}
#: Communities lie within about this many km of their district centre.
SPREAD_KM = 3.0
_KM_PER_DEG_LAT = 111.2
EARTH_RADIUS_KM = 6371.0


def coordinates(world: World, cfg: SimulationConfig) -> list[tuple[float, float]]:
    """(lat, lon) of every community's front warehouse, in community order."""
    rng = cfg.rng("geography")
    out = []
    for c in world.communities:
        lat0, lon0 = DISTRICT_CENTRE[c.district]
        dy, dx = rng.uniform(-SPREAD_KM, SPREAD_KM, 2).tolist()
        lat = lat0 + dy / _KM_PER_DEG_LAT
        lon = lon0 + dx / (_KM_PER_DEG_LAT * math.cos(math.radians(lat0)))
        out.append((round(lat, 5), round(lon, 5)))
    return out


def km_between(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in km (haversine)."""
    (lat1, lon1), (lat2, lon2) = (tuple(map(math.radians, p)) for p in (a, b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))


def geography_rows(world: World, cfg: SimulationConfig) -> dict[str, list[dict[str, Any]]]:
    """reference/front_warehouses.jsonl and reference/community_distances.jsonl (every ordered pair)."""
    where = coordinates(world, cfg)
    ids = [c.community_id for c in world.communities]
    return {
        "front_warehouses": [{"warehouse_id": warehouse_id(cid), "community_id": cid, "lat": lat, "lon": lon}
                             for cid, (lat, lon) in zip(ids, where)],
        "community_distances": [{"community_id": ids[i], "neighbour_id": ids[j],
                                 "km": round(km_between(where[i], where[j]), 3)}
                                for i in range(len(ids)) for j in range(len(ids)) if i != j],
    }
