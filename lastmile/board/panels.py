"""The board's panels: each one's SQL, and how its rows become the JSON the page draws.

A panel is a few named statements (:class:`Query`) plus a function that shapes their rows.
Every statement takes the same parameters: the window of :mod:`lastmile.board.clock`
(``day_start``, ``day_end``, ``week7_start``, ``now``, ``wall_now``, ``week_start``, ``tz``)
and ``community`` (empty: every community). What each figure means is written once, here,
beside the SQL that computes it; the page and the OpenAPI schema repeat these definitions.

Raw event tables are read without ``FINAL``: each statement groups by the event's own key
(``order_id``, ``event_id``, the compartment) so an event ingested twice still counts once,
and ``FINAL`` over millions of telemetry rows costs a second where the grouping costs
milliseconds. The cold-chain and claim tables are small and are read with ``FINAL``.

A statement whose tables are not in the warehouse is not run: its panel reports it under
``absent`` (a forecast before forecasting exists, the marts before the first dbt build), so
nothing is ever shown as zero that is really unknown.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from lastmile.board.clock import CLOCK_TABLES, BoardWindow
from lastmile.coldchain.config import ColdChainConfig
from lastmile.config import Settings

DT = "DateTime64(3, 'UTC')"
#: Orders are placed at most a couple of days before their pickup slot (next-day pickup);
#: how far back the statements look for the orders whose slot falls in the day.
ORDER_LOOKBACK_DAYS = 3
#: A reason whose quarantined payloads in the last hour reach this many, and exceed
#: :data:`SPIKE_FACTOR` times its hourly average over the 24 hours before, is a spike.
SPIKE_MIN = 10
SPIKE_FACTOR = 3.0
#: Tables that would feed the alerts from journeys and batch quality, when those exist.
OPTIONAL_FEEDS: dict[str, tuple[str, ...]] = {
    "journeys": ("journey_sends", "journey_refusals"),
    "batch_quality": ("batch_quality_alerts",),
}
#: Tables whose name says they hold a demand forecast.
FORECAST_TABLES = ("demand_forecast", "fct_demand_forecast", "forecast_orders_hourly", "forecast_daily_orders")
STI_DIMENSIONS = ("traceability_score", "cold_chain_score", "punctuality_score", "communication_score",
                  "after_sales_score", "packaging_score")
RAW_TABLES = ("raw_order", "raw_pickup", "raw_locker_telemetry", "raw_review", "raw_return", "raw_identify")

COMMUNITY = "({community:String} = '' OR community_id = {community:String})"


def p(name: str, kind: str = DT) -> str:
    """A query parameter placeholder (server-side binding: no value is ever pasted into SQL)."""
    return "{" + name + ":" + kind + "}"


@dataclass(frozen=True)
class Query:
    """One statement of a panel, and the tables it reads (absent tables: not run)."""

    name: str
    sql: str
    requires: tuple[str, ...]


@dataclass
class Context:
    """What a panel's shaping function may look at besides its rows."""

    window: BoardWindow
    community: str
    cfg: Settings
    tables: frozenset[str]


Rows = list[dict[str, Any]]
Shaper = Callable[[dict[str, Rows], Context], dict[str, Any]]


@dataclass(frozen=True)
class Panel:
    name: str
    title_en: str
    title_zh: str
    #: Where its figures come from, in words shown on the page.
    source: str
    queries: tuple[Query, ...]
    shape: Shaper
    definitions: dict[str, str] = field(default_factory=dict)


# --- pickups today -----------------------------------------------------------------------

PICKUPS_SQL = f"""
WITH ready AS (
    SELECT order_id, community_id AS order_community_id, locker_id AS order_locker_id,
           delivery_slot_start AS slot_start, delivery_slot_end AS slot_end
    FROM raw_order
    WHERE occurred_at >= {p('day_start')} - INTERVAL {ORDER_LOOKBACK_DAYS} DAY AND occurred_at <= {p('now')}
      AND delivery_slot_start >= {p('day_start')} AND delivery_slot_start < {p('day_end')}
      AND delivery_slot_start <= {p('now')} AND {COMMUNITY}
    LIMIT 1 BY order_id
),
collected AS (
    -- Every pickup of the last days, not only the ready orders': a CTE named twice is computed
    -- twice, and these few days of pickups cost less than reading the orders again.
    SELECT order_id, min(occurred_at) AS picked_up_at, toUInt8(1) AS hit
    FROM raw_pickup
    WHERE occurred_at >= {p('day_start')} - INTERVAL {ORDER_LOOKBACK_DAYS} DAY AND occurred_at <= {p('now')}
    GROUP BY order_id
)
SELECT ready.order_community_id AS community_id, ifNull(ready.order_locker_id, '') AS locker_id,
       grouping(community_id, locker_id) AS level,
       count() AS ready, countIf(collected.hit = 1) AS collected,
       countIf(collected.hit = 0 AND ready.slot_end < {p('now')}) AS overdue,
       quantileExactInclusiveIf(0.5)(greatest(0, dateDiff('second', ready.slot_start, collected.picked_up_at)), collected.hit = 1)
           AS median_ready_to_pickup_s
FROM ready LEFT JOIN collected ON collected.order_id = ready.order_id
GROUP BY GROUPING SETS ((community_id, locker_id), (community_id), ())
ORDER BY level DESC, community_id, locker_id
"""


def _pickup_figures(row: dict[str, Any]) -> dict[str, Any]:
    ready, collected = int(row["ready"]), int(row["collected"])
    median_s = row["median_ready_to_pickup_s"]
    return {"ready": ready, "collected": collected, "completion_rate": round(collected / ready, 4) if ready else None,
            "overdue": int(row["overdue"]),
            "median_ready_to_pickup_min": round(float(median_s) / 60, 1) if collected and median_s == median_s else None}


#: ``grouping(community_id, locker_id)`` of each grouping set: a bit set per rolled-up key.
LOCKER_LEVEL, COMMUNITY_LEVEL, TOTAL_LEVEL = 0, 1, 3


def _shape_pickups(rows: dict[str, Rows], ctx: Context) -> dict[str, Any]:
    found = rows["pickups"]
    total = next((r for r in found if r["level"] == TOTAL_LEVEL),
                 {"ready": 0, "collected": 0, "overdue": 0, "median_ready_to_pickup_s": None})
    return {"total": _pickup_figures(total),
            "by_community": [{"community_id": r["community_id"], **_pickup_figures(r)}
                             for r in found if r["level"] == COMMUNITY_LEVEL],
            "by_locker": [{"community_id": r["community_id"], "locker_id": r["locker_id"], **_pickup_figures(r)}
                          for r in found if r["level"] == LOCKER_LEVEL]}


PICKUPS = Panel(
    "pickups", "Pickups today", "今日取货", "raw events (raw_order, raw_pickup), live",
    (Query("pickups", PICKUPS_SQL, ("raw_order", "raw_pickup")),),
    _shape_pickups,
    {"ready": "orders whose pickup slot started today, up to now (the goods are in the locker)",
     "collected": "of those, orders with a pickup event up to now",
     "completion_rate": "collected / ready",
     "overdue": "ready orders past the end of their slot and not collected",
     "median_ready_to_pickup_min": "median minutes from slot start to the first pickup, over collected orders (interpolated)"},
)


# --- satisfaction -------------------------------------------------------------------------

REVIEWS_SQL = f"""
WITH reviews AS (
    SELECT event_id, any(order_id) AS reviewed_order_id, any(stars) AS review_stars, any(occurred_at) AS written_at
    FROM raw_review
    WHERE occurred_at >= {p('week7_start')} AND occurred_at < {p('day_end')} AND occurred_at <= {p('now')}
    GROUP BY event_id
)
SELECT toDate(written_at, {p('tz', 'String')}) AS day, count() AS reviews, sum(review_stars) AS stars_sum
FROM reviews
WHERE {{community:String}} = '' OR reviewed_order_id IN (SELECT order_id FROM raw_order WHERE community_id = {{community:String}})
GROUP BY day
ORDER BY day
"""

STI_SQL = f"""
SELECT grain_id AS community_id, week_start, orders, service_temperature, {', '.join(STI_DIMENSIONS)}
FROM service_temperature_index
WHERE grain = 'community'
  AND week_start = (SELECT max(week_start) FROM service_temperature_index
                    WHERE grain = 'community' AND week_start <= {p('week_start', 'Date')})
  AND ({{community:String}} = '' OR grain_id = {{community:String}})
ORDER BY community_id
"""


def _num(value: Any, digits: int = 2) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if number != number else round(number, digits)


def _weighted(rows: Rows, column: str) -> float | None:
    """Orders-weighted mean of a score over communities (a community without it is left out)."""
    pairs = [(float(r[column]), int(r["orders"])) for r in rows if r[column] is not None and r[column] == r[column]]
    weight = sum(w for _, w in pairs)
    return round(sum(v * w for v, w in pairs) / weight, 2) if weight else None


def _shape_satisfaction(rows: dict[str, Rows], ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "reviews" in rows:
        days = rows["reviews"]
        today = [r for r in days if r["day"] == ctx.window.day]
        n_today = sum(int(r["reviews"]) for r in today)
        n_week = sum(int(r["reviews"]) for r in days)
        out["stars_today"] = round(sum(int(r["stars_sum"]) for r in today) / n_today, 2) if n_today else None
        out["reviews_today"] = n_today
        out["stars_7d"] = round(sum(int(r["stars_sum"]) for r in days) / n_week, 2) if n_week else None
        out["reviews_7d"] = n_week
        out["by_day"] = [{"day": r["day"].isoformat(), "reviews": int(r["reviews"]),
                          "stars": round(int(r["stars_sum"]) / int(r["reviews"]), 2)} for r in days]
    if "sti" in rows:
        found = rows["sti"]
        out["sti_week_start"] = found[0]["week_start"].isoformat() if found else None
        out["sti_by_community"] = [{"community_id": r["community_id"], "orders": int(r["orders"]),
                                    "service_temperature": _num(r["service_temperature"]),
                                    **{d: _num(r[d]) for d in STI_DIMENSIONS}} for r in found]
        out["sti"] = {"service_temperature": _weighted(found, "service_temperature"),
                      **{d: _weighted(found, d) for d in STI_DIMENSIONS}} if found else None
    return out


SATISFACTION = Panel(
    "satisfaction", "Satisfaction", "满意度", "raw reviews (live); service-temperature index from the dbt mart (weekly)",
    (Query("reviews", REVIEWS_SQL, ("raw_review", "raw_order")),
     Query("sti", STI_SQL, ("service_temperature_index",))),
    _shape_satisfaction,
    {"stars_today": "mean stars of reviews written today",
     "stars_7d": "mean stars of reviews written in the 7 business days ending today",
     "sti": "service-temperature index of the business week holding today (or the latest week built before it); "
            "over several communities, each score is the orders-weighted mean of the communities that have it"},
)


# --- cold chain now -----------------------------------------------------------------------

def _in_range_sql(cfg: ColdChainConfig) -> str:
    """1 when a reading is inside its product class's range (the cold-chain job's ranges)."""
    arms = []
    for product_class, (low, high) in sorted(cfg.ranges.items()):
        checks = [f"temperature_c >= {float(low)}" if low is not None else "",
                  f"temperature_c <= {float(high)}" if high is not None else ""]
        cond = " AND ".join(c for c in checks if c) or "1"
        arms.append(f"product_class = '{product_class}', ({cond})")
    return f"toUInt8(multiIf({', '.join(arms)}, 1))"


COLD = ColdChainConfig()
IN_RANGE = _in_range_sql(COLD)
#: How far back "now" looks for each compartment's readings. A compartment quiet for longer is
#: silent many times over (the threshold is minutes), and an excursion older than this shows as
#: "out of range for at least this long". Six hours of readings aggregate in tens of
#: milliseconds on a 1M-order warehouse; a day took ten times as long.
RECENT_READINGS_HOURS = 6

COMPARTMENTS_SQL = f"""
SELECT community_id, locker_id, compartment_id, product_class, latest_temperature_c AS temperature_c,
       latest_humidity_pct AS humidity_pct, latest_door AS door, latest_power AS power, last_reading_at, in_range, last_in_range_at,
       if(in_range = 1, NULL, arrayMin(arrayFilter(t -> t > last_in_range_at, out_times))) AS out_of_range_since
FROM (
    SELECT community_id, locker_id, compartment_id, product_class,
           argMax(temperature_c, occurred_at) AS latest_temperature_c, argMax(humidity_pct, occurred_at) AS latest_humidity_pct,
           argMax(door, occurred_at) AS latest_door, argMax(power, occurred_at) AS latest_power,
           max(occurred_at) AS last_reading_at, argMax({IN_RANGE}, occurred_at) AS in_range,
           maxIf(occurred_at, {IN_RANGE} = 1) AS last_in_range_at,
           groupArrayIf(occurred_at, {IN_RANGE} = 0) AS out_times
    FROM raw_locker_telemetry
    WHERE occurred_at > {p('now')} - INTERVAL {RECENT_READINGS_HOURS} HOUR AND occurred_at <= {p('now')} AND {COMMUNITY}
    GROUP BY community_id, locker_id, compartment_id, product_class
)
ORDER BY community_id, locker_id, compartment_id
"""

INSTALLED_SQL = f"""
SELECT community_id, locker_id, tupleElement(c, 'compartment_id') AS compartment_id, tupleElement(c, 'product_class') AS product_class
FROM ref_lockers
ARRAY JOIN compartments AS c
WHERE {COMMUNITY}
ORDER BY community_id, locker_id, compartment_id
"""

CLAIMS_SQL = f"""
SELECT d.order_id AS order_id, d.decision AS decision, toFloat64(d.compensation_cny) AS compensation_cny,
       d.severity AS severity, d.reason AS reason, i.kind AS kind, i.community_id AS community_id,
       i.locker_id AS locker_id, i.compartment_id AS compartment_id, i.started_at AS started_at
FROM claim_decisions AS d FINAL
INNER JOIN (
    SELECT incident_id, kind, community_id, locker_id, compartment_id, started_at
    FROM cold_chain_incidents FINAL
    WHERE started_at >= {p('day_start')} AND started_at < {p('day_end')} AND started_at <= {p('now')} AND {COMMUNITY}
) AS i ON i.incident_id = d.incident_id
ORDER BY started_at DESC, order_id
"""

INCIDENTS_SQL = f"""
SELECT kind, severity, count() AS incidents
FROM cold_chain_incidents FINAL
WHERE started_at >= {p('day_start')} AND started_at < {p('day_end')} AND started_at <= {p('now')} AND {COMMUNITY}
GROUP BY kind, severity
ORDER BY kind, severity
"""


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return str(value)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def compartment_state(row: dict[str, Any], now: datetime) -> tuple[str, float | None]:
    """(state, minutes out of range) of a compartment's latest reading.

    ``excursion``: out of range for at least the cold-chain job's minimum (an open excursion);
    ``out_of_range``: out of range for less; ``silent``: no reading for longer than the job's
    silence threshold; ``door_open`` / ``on_battery`` / ``power_off``; else ``ok``.
    """
    last = _aware(row["last_reading_at"])
    if (now - last).total_seconds() > COLD.silence_after_s:
        return "silent", None
    if not row["in_range"]:
        since = row["out_of_range_since"]
        minutes = (now - _aware(since)).total_seconds() / 60 if since else None
        if minutes is not None and minutes >= COLD.excursion_min_minutes:
            return "excursion", round(minutes, 1)
        return "out_of_range", round(minutes, 1) if minutes is not None else None
    if row["power"] == "off":
        return "power_off", None
    if row["door"] == "open":
        return "door_open", None
    if row["power"] == "battery":
        return "on_battery", None
    return "ok", None


def _shape_cold_chain(rows: dict[str, Rows], ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "compartments" in rows:
        now = ctx.window.now
        lockers: dict[str, dict[str, Any]] = {}
        states: dict[str, int] = {}
        excursions = []
        for r in rows["compartments"]:
            state, minutes = compartment_state(r, now)
            states[state] = states.get(state, 0) + 1
            low, high = COLD.ranges.get(r["product_class"], (None, None))
            item = {"compartment_id": r["compartment_id"], "product_class": r["product_class"],
                    "temperature_c": _num(r["temperature_c"], 1), "humidity_pct": _num(r["humidity_pct"], 1),
                    "door": r["door"], "power": r["power"], "state": state, "range_c": [low, high],
                    "last_reading_at": _iso(r["last_reading_at"]), "out_of_range_min": minutes,
                    "out_of_range_since": _iso(r["out_of_range_since"])}
            locker = lockers.setdefault(r["locker_id"], {"locker_id": r["locker_id"], "community_id": r["community_id"],
                                                          "compartments": []})
            locker["compartments"].append(item)
            if state == "excursion":
                excursions.append({"locker_id": r["locker_id"], "community_id": r["community_id"], **item})
        seen = {c["compartment_id"] for locker in lockers.values() for c in locker["compartments"]}
        for r in rows.get("installed", []):  # installed, but no reading in the recent window
            if r["compartment_id"] in seen:
                continue
            low, high = COLD.ranges.get(r["product_class"], (None, None))
            states["silent"] = states.get("silent", 0) + 1
            lockers.setdefault(r["locker_id"], {"locker_id": r["locker_id"], "community_id": r["community_id"],
                                                "compartments": []})["compartments"].append(
                {"compartment_id": r["compartment_id"], "product_class": r["product_class"], "temperature_c": None,
                 "humidity_pct": None, "door": None, "power": None, "state": "silent", "range_c": [low, high],
                 "last_reading_at": None, "out_of_range_min": None, "out_of_range_since": None})
        out["lockers"] = sorted(lockers.values(), key=lambda locker: (locker["community_id"], locker["locker_id"]))
        for locker in out["lockers"]:
            locker["compartments"].sort(key=lambda c: c["compartment_id"])
        out["compartments"] = sum(states.values())
        out["states"] = states
        out["open_excursions"] = len(excursions)
        out["excursions"] = sorted(excursions, key=lambda e: -(e["out_of_range_min"] or 0))
    if "claims" in rows:
        approved = [r for r in rows["claims"] if r["decision"] == "auto_approved"]
        out["claims_auto_approved_today"] = len(approved)
        out["compensation_auto_approved_cny"] = round(sum(float(r["compensation_cny"]) for r in approved), 2)
    if "incidents" in rows:
        out["incidents_today"] = [{"kind": r["kind"], "severity": r["severity"], "incidents": int(r["incidents"])}
                                  for r in rows["incidents"]]
    return out


COLD_CHAIN = Panel(
    "cold_chain", "Cold chain now", "冷链实时", "raw locker telemetry (live); incidents and claim decisions from the cold-chain job",
    (Query("compartments", COMPARTMENTS_SQL, ("raw_locker_telemetry",)),
     Query("installed", INSTALLED_SQL, ("ref_lockers",)),
     Query("claims", CLAIMS_SQL, ("claim_decisions", "cold_chain_incidents")),
     Query("incidents", INCIDENTS_SQL, ("cold_chain_incidents",))),
    _shape_cold_chain,
    {"compartments": f"every compartment installed (reference data) or heard from in the {RECENT_READINGS_HOURS} hours up "
                     "to now; each shows its latest reading, or silent when it has none in that window",
     "out_of_range_since": f"first reading of the current out-of-range streak (within the last {RECENT_READINGS_HOURS} hours)",
     "open_excursions": f"compartments whose latest reading is out of range and has been for at least "
                        f"{COLD.excursion_min_minutes} minutes (the cold-chain job's threshold)",
     "claims_auto_approved_today": "claim decisions 'auto_approved' for incidents that started today"},
)


# --- sales today --------------------------------------------------------------------------

ORDERS_TODAY = f"""
    SELECT order_id, any(occurred_at) AS placed_at, any(total_amount) AS order_amount
    FROM raw_order
    WHERE occurred_at >= {p('day_start')} AND occurred_at < {p('day_end')} AND occurred_at <= {p('now')} AND {COMMUNITY}
    GROUP BY order_id"""

HOURLY_SQL = f"""
WITH orders AS ({ORDERS_TODAY})
SELECT toHour(placed_at, {p('tz', 'String')}) AS hour, count() AS orders, sum(order_amount) AS amount
FROM orders
GROUP BY hour
ORDER BY hour
"""

#: One row per order (a re-sent order event counts once): ``LIMIT 1 BY`` keeps the first row
#: it meets, where grouping would copy every order's array of lines through an aggregate.
ORDER_LINES_TODAY = f"""
    SELECT order_id, items AS order_items
    FROM raw_order
    WHERE occurred_at >= {p('day_start')} AND occurred_at < {p('day_end')} AND occurred_at <= {p('now')} AND {COMMUNITY}
    LIMIT 1 BY order_id"""

BEST_SELLERS_SQL = f"""
WITH orders AS ({ORDER_LINES_TODAY})
SELECT tupleElement(item, 'sku') AS sku, any(tupleElement(item, 'category')) AS category,
       sum(tupleElement(item, 'qty')) AS qty, sum(tupleElement(item, 'qty') * tupleElement(item, 'unit_price')) AS amount,
       uniqExact(order_id) AS orders
FROM orders
ARRAY JOIN order_items AS item
GROUP BY sku
ORDER BY qty DESC, sku
LIMIT 10
"""

SKU_NAMES_SQL = "SELECT sku, name, name_en FROM ref_skus"


def _shape_sales(rows: dict[str, Rows], ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    hourly = {int(r["hour"]): r for r in rows.get("hourly", [])}
    out["orders_today"] = sum(int(r["orders"]) for r in hourly.values())
    out["amount_today_cny"] = round(sum(float(r["amount"]) for r in hourly.values()), 2)
    out["by_hour"] = [{"hour": h, "orders": int(hourly[h]["orders"]) if h in hourly else 0,
                       "amount_cny": round(float(hourly[h]["amount"]), 2) if h in hourly else 0.0} for h in range(24)]
    names = {r["sku"]: (r["name"], r["name_en"]) for r in rows.get("sku_names", [])}
    out["best_sellers"] = [{"sku": r["sku"], "name": names.get(r["sku"], (None, None))[0],
                            "name_en": names.get(r["sku"], (None, None))[1], "category": r["category"],
                            "qty": int(r["qty"]), "amount_cny": round(float(r["amount"]), 2), "orders": int(r["orders"])}
                           for r in rows.get("best_sellers", [])]
    forecast = [t for t in FORECAST_TABLES if t in ctx.tables]
    out["forecast"] = {"available": False, "reason": (
        f"forecast table {forecast[0]} found, but the board does not read it yet" if forecast
        else "no forecast table in the warehouse: the line is not drawn")}
    out["stock"] = {"available": False, "reason": "no inventory in the warehouse: surplus and sell-out are not shown"}
    return out


SALES = Panel(
    "sales", "Sales today", "今日销售", "raw orders (live)",
    (Query("hourly", HOURLY_SQL, ("raw_order",)), Query("best_sellers", BEST_SELLERS_SQL, ("raw_order",)),
     Query("sku_names", SKU_NAMES_SQL, ("ref_skus",))),
    _shape_sales,
    {"orders_today": "distinct orders placed today up to now", "by_hour": "orders placed in each business hour",
     "best_sellers": "SKUs by quantity ordered today (top 10)"},
)


# --- alerts -------------------------------------------------------------------------------

QUARANTINE_SQL = f"""
SELECT reason, countIf(received_at >= {p('wall_now')} - INTERVAL 1 HOUR) AS last_hour,
       countIf(received_at < {p('wall_now')} - INTERVAL 1 HOUR) AS previous_24h
FROM quarantine FINAL
WHERE received_at >= {p('wall_now')} - INTERVAL 25 HOUR AND received_at <= {p('wall_now')}
GROUP BY reason
ORDER BY last_hour DESC, reason
"""


BATCH_ALERTS_SQL = f"""
SELECT alert_id, batch_id, sku, origin, bad, feedback, bad_rate, baseline_rate, alert_at
FROM batch_quality_alerts FINAL
WHERE alert_at >= {p('day_start')} AND alert_at < {p('day_end')} AND alert_at <= {p('now')}
ORDER BY alert_at DESC, alert_id
LIMIT 50
"""


def _shape_alerts(rows: dict[str, Rows], ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "compensations" in rows:
        out["compensations"] = [{"order_id": r["order_id"], "decision": r["decision"],
                                 "compensation_cny": round(float(r["compensation_cny"]), 2), "severity": r["severity"],
                                 "kind": r["kind"], "community_id": r["community_id"], "locker_id": r["locker_id"],
                                 "started_at": _iso(r["started_at"]), "reason": r["reason"]} for r in rows["compensations"][:50]]
    if "quarantine" in rows:
        reasons = []
        for r in rows["quarantine"]:
            last, before = int(r["last_hour"]), int(r["previous_24h"])
            hourly = before / 24
            reasons.append({"reason": r["reason"], "last_hour": last, "hourly_before": round(hourly, 2),
                            "spike": last >= SPIKE_MIN and last > SPIKE_FACTOR * hourly})
        out["quarantine"] = reasons
        out["quarantine_spikes"] = [r["reason"] for r in reasons if r["spike"]]
    for feed, tables in OPTIONAL_FEEDS.items():
        present = [t for t in tables if t in ctx.tables]
        out[feed] = {"available": bool(present), "tables": present,
                     "reason": "" if present else f"not in the warehouse yet ({', '.join(tables)})"}
    if "batch_quality" in rows:
        out["batch_quality"]["alerts"] = [{"alert_id": r["alert_id"], "batch_id": r["batch_id"], "sku": r["sku"],
                                           "origin": r["origin"], "bad": int(r["bad"]), "feedback": int(r["feedback"]),
                                           "bad_rate": round(float(r["bad_rate"]), 4),
                                           "baseline_rate": round(float(r["baseline_rate"]), 4),
                                           "alert_at": _iso(r["alert_at"])} for r in rows["batch_quality"]]
    return out


ALERTS = Panel(
    "alerts", "Alerts", "告警", "claim decisions (cold-chain job); quarantine (live, by ingestion time, all communities); "
    "batch-quality alerts (stream worker and lastmile run, all communities)",
    (Query("compensations", CLAIMS_SQL, ("claim_decisions", "cold_chain_incidents")),
     Query("quarantine", QUARANTINE_SQL, ("quarantine",)),
     Query("batch_quality", BATCH_ALERTS_SQL, ("batch_quality_alerts",))),
    _shape_alerts,
    {"compensations": "claim decisions for incidents that started today, newest first",
     "batch_quality": "batches alerted today (all communities: a batch is sold in many), newest first",
     "quarantine": f"payloads quarantined per reason in the last hour (wall clock) against the hourly mean of the "
                   f"24 hours before; a spike is at least {SPIKE_MIN} and more than {SPIKE_FACTOR:g} times that mean"},
)


# --- pipeline health ----------------------------------------------------------------------

def _ingest_arm(table: str) -> str:
    return f"""
    SELECT '{table}' AS table_name,
           countIf(_ingested_at >= {p('wall_now')} - INTERVAL 10 SECOND) AS last_10s,
           countIf(_ingested_at >= {p('wall_now')} - INTERVAL 60 SECOND) AS last_60s,
           count() AS last_hour,
           quantileIf(0.5)(dateDiff('millisecond', occurred_at, _ingested_at),
                           _ingested_at >= {p('wall_now')} - INTERVAL 60 SECOND) AS lag_p50_ms,
           max(_ingested_at) AS newest_ingested_at
    FROM {table}
    WHERE _ingested_at >= {p('wall_now')} - INTERVAL 1 HOUR AND _ingested_at <= {p('wall_now')}
      AND _part IN ({_recent_parts(table)})"""


def _recent_parts(table: str) -> str:
    """The table's parts written (or merged) lately: rows ingested in the last hour are in them.

    ``_ingested_at`` is not in any sorting key, so without this every ingestion figure would
    read the column for every row of every raw table; a part's modification time bounds the
    ingestion times of its rows from above, so the other parts can be skipped unread. The two
    hours leave room for a server clock that differs from the board's.
    """
    return (f"SELECT name FROM system.parts WHERE database = currentDatabase() AND table = '{table}' AND active "
            f"AND modification_time >= {p('wall_now')} - INTERVAL 2 HOUR")


INGEST_SQL = " UNION ALL ".join(_ingest_arm(t) for t in RAW_TABLES) + f"""
UNION ALL
    SELECT 'quarantine' AS table_name,
           countIf(received_at >= {p('wall_now')} - INTERVAL 10 SECOND), countIf(received_at >= {p('wall_now')} - INTERVAL 60 SECOND),
           count(), CAST(NULL AS Nullable(Float64)), max(received_at)
    FROM quarantine
    WHERE received_at >= {p('wall_now')} - INTERVAL 1 HOUR AND received_at <= {p('wall_now')}
      AND _part IN ({_recent_parts('quarantine')})
"""

TOTALS_SQL = " UNION ALL ".join(f"SELECT '{t}' AS table_name, count() AS total_rows FROM {t}" for t in (*RAW_TABLES, "quarantine"))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def last_dbt_build(cfg: Settings) -> dict[str, Any] | None:
    """The last dbt invocation's outcome, from ``run_results.json`` in lastmile's dbt target directory."""
    path = cfg.home / "dbt" / "target" / "run_results.json"
    found = _read_json(path)
    if not isinstance(found, dict):
        return None
    statuses: dict[str, int] = {}
    for result in found.get("results") or []:
        status = str(result.get("status"))
        statuses[status] = statuses.get(status, 0) + 1
    failed = sum(n for s, n in statuses.items() if s in ("error", "fail", "runtime error"))
    args = found.get("args") or {}
    return {"command": args.get("which") or args.get("invocation_command"), "at": (found.get("metadata") or {}).get("generated_at"),
            "elapsed_s": _num(found.get("elapsed_time")), "statuses": statuses, "success": failed == 0}


def last_quality_gate(cfg: Settings) -> dict[str, Any] | None:
    """The quality gate's last checkpoint: the newest validation result great-expectations kept."""
    root = cfg.home / "quality" / "gx" / "uncommitted" / "validations"
    if not root.is_dir():
        return None
    newest: dict[str, tuple[float, Path]] = {}
    for path in root.rglob("*.json"):
        suite = ".".join(path.relative_to(root).parts[:-3])  # <suite path>/<batch>/<run>/<result>.json
        stamp = path.stat().st_mtime
        if suite not in newest or stamp > newest[suite][0]:
            newest[suite] = (stamp, path)
    if not newest:
        return None
    suites, evaluated, failed = {}, 0, 0
    for suite, (_, path) in sorted(newest.items()):
        found = _read_json(path) or {}
        stats = found.get("statistics") or {}
        suites[suite] = bool(found.get("success"))
        evaluated += int(stats.get("evaluated_expectations") or 0)
        failed += int(stats.get("unsuccessful_expectations") or 0)
    at = max(stamp for stamp, _ in newest.values())
    return {"at": datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "success": all(suites.values()), "evaluated": evaluated, "failed": failed, "suites": suites}


def worker_status(cfg: Settings) -> dict[str, Any] | None:
    """The stream worker's status file, when the board shares its data directory."""
    found = _read_json(cfg.home / "stream" / "status.json")
    if not isinstance(found, dict):
        return None
    keep = ("batches", "read", "valid", "quarantined", "committed_batches", "updated_at")
    return {k: found.get(k) for k in keep}


def _shape_pipeline(rows: dict[str, Rows], ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    wall = ctx.window.wall_now
    if "ingest" in rows:
        by_table = {r["table_name"]: r for r in rows["ingest"]}
        raw = [r for t, r in by_table.items() if t != "quarantine"]
        q = by_table.get("quarantine")
        out["events_per_s"] = round((sum(int(r["last_10s"]) for r in by_table.values())) / 10, 1)
        out["events_last_minute"] = sum(int(r["last_60s"]) for r in by_table.values())
        lags = [float(r["lag_p50_ms"]) for r in raw if int(r["last_60s"]) and r["lag_p50_ms"] == r["lag_p50_ms"]]
        out["freshness_p50_s"] = round(max(lags) / 1000, 2) if lags else None
        newest = [_aware(r["newest_ingested_at"]) for r in raw if int(r["last_hour"])]
        out["last_ingest_age_s"] = round((wall - max(newest)).total_seconds(), 1) if newest else None
        raw_hour = sum(int(r["last_hour"]) for r in raw)
        q_hour = int(q["last_hour"]) if q else 0
        out["quarantined_share_last_hour"] = round(q_hour / (raw_hour + q_hour), 4) if raw_hour + q_hour else None
        out["by_table"] = [{"table": t, "last_10s": int(r["last_10s"]), "last_60s": int(r["last_60s"]),
                            "last_hour": int(r["last_hour"]),
                            "lag_p50_ms": _num(r["lag_p50_ms"], 0) if int(r["last_60s"]) else None} for t, r in by_table.items()]
    if "totals" in rows:
        totals = {r["table_name"]: int(r["total_rows"]) for r in rows["totals"]}
        q_all = totals.pop("quarantine", 0)
        out["quarantined_share_all"] = round(q_all / (sum(totals.values()) + q_all), 4) if sum(totals.values()) + q_all else None
    out["dbt"] = last_dbt_build(ctx.cfg)
    out["quality_gate"] = last_quality_gate(ctx.cfg)
    out["worker"] = worker_status(ctx.cfg)
    return out


PIPELINE = Panel(
    "pipeline", "Pipeline health", "数据管道", "ingestion times in the raw tables (wall clock); dbt and quality-gate results",
    (Query("ingest", INGEST_SQL, (*RAW_TABLES, "quarantine")), Query("totals", TOTALS_SQL, (*RAW_TABLES, "quarantine"))),
    _shape_pipeline,
    {"events_per_s": "events written to the warehouse (raw tables and quarantine) in the last 10 s, per second",
     "freshness_p50_s": "median delay from an event's occurred_at to its row in the warehouse, over the last minute "
                        "(the slowest table)",
     "quarantined_share_last_hour": "quarantined / (quarantined + accepted) over the last hour",
     "dbt": "the last dbt command (run_results.json)", "quality_gate": "the quality gate's last checkpoint"},
)

PANELS: dict[str, Panel] = {panel.name: panel for panel in (PICKUPS, SATISFACTION, COLD_CHAIN, SALES, ALERTS, PIPELINE)}


# --- running them -------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    return value


def run_query(warehouse: Any, sql: str, parameters: dict[str, Any]) -> Rows:
    """Rows of a statement as dicts (column name -> value)."""
    result = warehouse.query(sql, parameters)
    names = result.column_names
    return [{n: _plain(v) for n, v in zip(names, row)} for row in result.result_rows]


def parameters_for(window: BoardWindow, community: str) -> dict[str, Any]:
    return {**window.parameters(), "community": community}


def statements(panel: Panel, tables: frozenset[str]) -> list[Query]:
    """The panel's statements whose tables all exist."""
    return [q for q in panel.queries if all(t in tables for t in q.requires)]


def compute_panel(warehouse: Any, panel: Panel, window: BoardWindow, community: str, cfg: Settings,
                  tables: frozenset[str]) -> dict[str, Any]:
    """One panel's JSON: its figures, what is absent and why, and how long it took."""
    started = time.perf_counter()
    params = parameters_for(window, community)
    rows: dict[str, Rows] = {}
    absent = []
    for query in panel.queries:
        missing = [t for t in query.requires if t not in tables]
        if missing:
            absent.append({"query": query.name, "missing_tables": missing})
            continue
        rows[query.name] = run_query(warehouse, query.sql, params)
    ctx = Context(window, community, cfg, tables)
    return {"name": panel.name, "title": {"en": panel.title_en, "zh": panel.title_zh}, "source": panel.source,
            "figures": panel.shape(rows, ctx), "absent": absent, "definitions": panel.definitions,
            "seconds": round(time.perf_counter() - started, 4)}


def warehouse_tables(warehouse: Any) -> frozenset[str]:
    return frozenset(r[0] for r in warehouse.rows("SELECT name FROM system.tables WHERE database = currentDatabase()"))


def newest_events(warehouse: Any, tables: frozenset[str]) -> tuple[datetime | None, datetime | None]:
    """(newest order, newest order, pickup or reading): ``occurred_at`` maxima, answered from
    the parts' min-max index of the partition key rather than by reading the column."""
    present = [t for t in CLOCK_TABLES if t in tables]
    if not present:
        return None, None
    sql = " UNION ALL ".join(f"SELECT '{t}' AS t, max(occurred_at) AS m, count() AS n FROM {t}" for t in present)
    found = {t: _aware(m) for t, m, n in warehouse.rows(sql) if n}
    return found.get("raw_order"), (max(found.values()) if found else None)


def communities(warehouse: Any, tables: frozenset[str]) -> list[dict[str, Any]]:
    """Communities with orders (and their names when the reference data is loaded)."""
    if "raw_order" not in tables:
        return []
    ids = [r[0] for r in warehouse.rows("SELECT DISTINCT community_id FROM raw_order ORDER BY community_id")]
    names: dict[str, str] = {}
    if "ref_communities" in tables:
        names = {c: n for c, n in warehouse.rows("SELECT community_id, name FROM ref_communities")}
    return [{"community_id": c, "name": names.get(c)} for c in ids]


def compute_board(warehouse: Any, cfg: Settings, community: str = "", as_of: date | None = None,
                  names: Sequence[str] | None = None, wall_now: datetime | None = None) -> dict[str, Any]:
    """Every panel (or those in ``names``) for one community (``""``: all), as the page reads it."""
    from lastmile.board.clock import window_for

    started = time.perf_counter()
    tables = warehouse_tables(warehouse)
    window = window_for(*newest_events(warehouse, tables), cfg.business_tz, as_of, wall_now)
    chosen = [PANELS[n] for n in (names or PANELS)]
    panels = {panel.name: compute_panel(warehouse, panel, window, community, cfg, tables) for panel in chosen}
    return {"community_id": community or None, "window": window.as_dict(), "panels": panels,
            "seconds": round(time.perf_counter() - started, 4)}


def plain_statements(window: BoardWindow, community: str, tables: frozenset[str]) -> list[tuple[str, dict[str, Any]]]:
    """Every statement of every panel with its parameters: what the board runs, without the board."""
    params = parameters_for(window, community)
    return [(q.sql, params) for panel in PANELS.values() for q in statements(panel, tables)]


def day_of(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))
