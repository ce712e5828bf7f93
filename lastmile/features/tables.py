"""Feature tables in the warehouse: the offline side of the Feast repository (``feature_store/``).

Every feature view reads one ``feat_*`` table built here from the raw events, ``event_oneid``
and the reference catalogue (``ref_skus``), plus the dbt mart ``neighbor_credit_score`` when
dbt has built it. Tables are *snapshots at business-day close*: a row for day D holds what was
known when day D ended in Asia/Shanghai, and its ``event_timestamp`` is that moment (D+1 00:00
+08:00, stored in UTC). That is what makes Feast's point-in-time join correct: a training row
at time T only ever sees rows whose day had closed by T.

Why our own SQL rather than only the dbt marts: the marts (``customer_rfm``,
``spending_health``, ...) are one row per person *as of now*. Training needs the value a
feature had at each past moment, so the customer views here are dense daily histories
(one row per customer and day from their first order to the observation end). Credit score
has no history in dbt; its view carries the mart's single snapshot, stamped at the
observation end, so training rows before that see it as missing (never a leak).

Everything is rebuilt with ``CREATE OR REPLACE`` (atomic swap), so a build is idempotent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from lastmile.warehouse import Warehouse

#: Business time zone: days close at local midnight.
TZ = "Asia/Shanghai"

#: Catalogue categories, in a fixed order: the category-affinity view has one column each.
#: An unknown category in an order counts in the totals but in no affinity column.
CATEGORIES: tuple[str, ...] = (
    "vegetables", "fruit", "meat", "seafood", "dairy", "dessert", "eggs", "tofu", "ready_meal",
    "frozen_food", "tea", "grain", "snacks", "drinks", "bakery",
)

#: Days-close timestamp of a Date column ``d`` (UTC DateTime64).
def _close(d: str) -> str:
    return f"toTimeZone(toDateTime64({d} + 1, 3, '{TZ}'), 'UTC')"


_LINES = f"""
CREATE OR REPLACE TABLE feat__order_lines ENGINE = MergeTree ORDER BY (oneid, day)
COMMENT 'Feature-build intermediate: one row per order line with the buyer OneID (rebuilt by lastmile.features.tables).'
AS SELECT
    e.oneid AS oneid, o.order_id AS order_id, o.occurred_at AS occurred_at,
    toDate(o.occurred_at, '{TZ}') AS day, o.community_id AS community_id, o.locker_id AS locker_id,
    toString(o.channel) AS channel,
    (toHour(o.occurred_at, '{TZ}') >= 23 OR toHour(o.occurred_at, '{TZ}') < 5) AS late_night,
    tupleElement(it, 'sku') AS sku, tupleElement(it, 'category') AS category, tupleElement(it, 'qty') AS qty,
    toFloat64(tupleElement(it, 'unit_price')) * tupleElement(it, 'qty') AS amount,
    coalesce(s.is_impulse, false) AS is_impulse, coalesce(s.is_healthy, false) AS is_healthy
FROM raw_order AS o FINAL
ARRAY JOIN o.items AS it
INNER JOIN (SELECT event_id, oneid FROM event_oneid WHERE event_type = 'order' AND oneid != '') AS e ON e.event_id = o.event_id
LEFT JOIN ref_skus AS s ON s.sku = tupleElement(it, 'sku')
SETTINGS join_use_nulls = 1
"""

_cat_daily = ",\n    ".join(f"sumIf(amount, category = '{c}') AS cat_{c}" for c in CATEGORIES)

_CUSTOMER_DAILY = f"""
CREATE OR REPLACE TABLE feat__customer_daily ENGINE = MergeTree ORDER BY (oneid, day)
COMMENT 'Feature-build intermediate: dense customer x day grid with that day''s activity (zeros on quiet days).'
AS WITH
    (SELECT max(day) FROM feat__order_lines) AS as_of_day,
    daily AS (
        SELECT oneid, day,
            uniqExact(order_id) AS orders, sum(amount) AS spend, count() AS lines, sum(qty) AS units,
            uniqExactIf(order_id, late_night) AS late_night_orders,
            uniqExactIf(order_id, channel = 'mini_program') AS mp_orders,
            uniqExactIf(order_id, channel = 'group_chat') AS gc_orders,
            sumIf(amount, is_impulse) AS impulse_amount, sumIf(amount, is_healthy) AS healthy_amount,
            argMax(community_id, occurred_at) AS community_id, argMax(locker_id, occurred_at) AS locker_id,
            {_cat_daily}
        FROM feat__order_lines GROUP BY oneid, day
    ),
    grid AS (
        SELECT oneid, toDate(arrayJoin(range(toUInt32(min(day)), toUInt32(as_of_day) + 1))) AS day
        FROM feat__order_lines GROUP BY oneid
    )
SELECT grid.oneid AS oneid, grid.day AS day, daily.* EXCEPT (oneid, day)
FROM grid LEFT JOIN daily ON daily.oneid = grid.oneid AND daily.day = grid.day
SETTINGS join_use_nulls = 0
"""

_W = """WINDOW
    w_all AS (PARTITION BY oneid ORDER BY day ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
    w28 AS (PARTITION BY oneid ORDER BY day ROWS BETWEEN 27 PRECEDING AND CURRENT ROW),
    w7 AS (PARTITION BY oneid ORDER BY day ROWS BETWEEN 6 PRECEDING AND CURRENT ROW)"""

_PROFILE = f"""
CREATE OR REPLACE TABLE feat_customer_profile ENGINE = MergeTree ORDER BY (oneid, event_timestamp)
COMMENT 'Feast view customer_profile: profile and RFM per OneID, one row per business-day close.'
AS SELECT
    oneid, {_close('day')} AS event_timestamp,
    toInt64(sum(orders) OVER w_all) AS orders_total,
    round(sum(spend) OVER w_all, 2) AS spend_total_cny,
    round(sum(spend) OVER w_all / greatest(sum(orders) OVER w_all, 1), 2) AS avg_basket_cny,
    toInt64(sum(orders) OVER w28) AS orders_28d,
    round(sum(spend) OVER w28, 2) AS spend_28d_cny,
    toInt64(sum(orders) OVER w7) AS orders_7d,
    round(sum(spend) OVER w7, 2) AS spend_7d_cny,
    toInt64(sum(orders > 0) OVER w_all) AS purchase_days,
    toInt64(count() OVER w_all) AS tenure_days,
    toInt64(day - max(if(orders > 0, day, toDate(0))) OVER w_all) AS days_since_last_order,
    toInt64(toUnixTimestamp({_close('max(if(orders > 0, day, toDate(0))) OVER w_all')})) AS last_order_day_close_ts,
    round(if(sum(orders > 0) OVER w_all > 1,
             (count() OVER w_all - 1 - (day - max(if(orders > 0, day, toDate(0))) OVER w_all)) / (sum(orders > 0) OVER w_all - 1),
             0), 3) AS mean_days_between_purchases,
    round(sum(lines) OVER w_all / greatest(sum(orders) OVER w_all, 1), 3) AS lines_per_order,
    round(sum(mp_orders) OVER w_all / greatest(sum(orders) OVER w_all, 1), 4) AS mini_program_share,
    round(sum(gc_orders) OVER w_all / greatest(sum(orders) OVER w_all, 1), 4) AS group_chat_share,
    argMax(community_id, if(orders > 0, toUInt32(day), 0)) OVER w_all AS home_community_id,
    argMax(locker_id, if(orders > 0, toUInt32(day), 0)) OVER w_all AS home_locker_id
FROM feat__customer_daily
{_W}
"""

_entropy = " + ".join(
    f"if(cat_{c}_x > 0, -(cat_{c}_x / tot_x) * log(cat_{c}_x / tot_x), 0)" for c in CATEGORIES
)


def _balance(suffix: str) -> str:
    return _entropy.replace("_x", suffix)


_cat_cum = ",\n        ".join(f"sum(cat_{c}) OVER w_all AS cat_{c}_all, sum(cat_{c}) OVER w28 AS cat_{c}_28" for c in CATEGORIES)

_SPENDING = f"""
CREATE OR REPLACE TABLE feat_spending_health ENGINE = MergeTree ORDER BY (oneid, event_timestamp)
COMMENT 'Feast view spending_health: over-consumption signals per OneID, one row per business-day close.'
AS SELECT
    oneid, event_timestamp,
    round(impulse_28 / greatest(spend_28, 0.01), 4) AS sh_impulse_share_28d,
    round(healthy_28 / greatest(spend_28, 0.01), 4) AS sh_healthy_share_28d,
    round(impulse_all / greatest(spend_all, 0.01), 4) AS sh_impulse_share_all,
    round(late_28 / greatest(orders_28, 1), 4) AS sh_late_night_share_28d,
    round(orders_28 / 4, 3) AS sh_orders_per_week_28d,
    round(units_28 / greatest(orders_28, 1), 3) AS sh_units_per_order_28d,
    round(spend_28 / 4, 2) AS sh_weekly_spend_28d_cny,
    -- Velocity against the person's own baseline (weeks before the last 28 days); 1 without 2 baseline weeks.
    round(if(tenure >= 42 AND spend_all - spend_28 > 0,
             (spend_28 / 4) / ((spend_all - spend_28) / ((tenure - 28) / 7)), 1), 4) AS sh_spend_velocity,
    round(if(orders_prev > 0, (units_28 / greatest(orders_28, 1)) / (units_prev / orders_prev), 1), 4) AS sh_basket_growth,
    round(({_balance('_28')}) / log({len(CATEGORIES)}), 4) AS sh_category_balance_28d
FROM (
    SELECT oneid, {_close('day')} AS event_timestamp,
        sum(spend) OVER w28 AS spend_28, sum(spend) OVER w_all AS spend_all,
        sum(impulse_amount) OVER w28 AS impulse_28, sum(impulse_amount) OVER w_all AS impulse_all,
        sum(healthy_amount) OVER w28 AS healthy_28,
        sum(late_night_orders) OVER w28 AS late_28, sum(orders) OVER w28 AS orders_28,
        sum(units) OVER w28 AS units_28,
        sum(units) OVER w_all - sum(units) OVER w28 AS units_prev,
        sum(orders) OVER w_all - sum(orders) OVER w28 AS orders_prev,
        count() OVER w_all AS tenure,
        {",".join(f"sum(cat_{c}) OVER w28 AS cat_{c}_28" for c in CATEGORIES)},
        sum(spend) OVER w28 AS tot_28
    FROM feat__customer_daily
    {_W}
)
"""

_AFFINITY = f"""
CREATE OR REPLACE TABLE feat_category_affinity ENGINE = MergeTree ORDER BY (oneid, event_timestamp)
COMMENT 'Feast view category_affinity: share of each customer''s spend per category (all history), daily close.'
AS SELECT
    oneid, event_timestamp,
    {", ".join(f"round(cat_{c}_all / greatest(tot_all, 0.01), 4) AS aff_{c}" for c in CATEGORIES)},
    round(({_balance('_all')}) / log({len(CATEGORIES)}), 4) AS aff_category_balance
FROM (
    SELECT oneid, {_close('day')} AS event_timestamp, sum(spend) OVER w_all AS tot_all,
        {_cat_cum}
    FROM feat__customer_daily
    {_W}
)
"""

_CUSTOMER_SKU = f"""
CREATE OR REPLACE TABLE feat_customer_sku ENGINE = MergeTree ORDER BY (oneid, sku, event_timestamp)
COMMENT 'Feast view next_purchase: per OneID x SKU purchase rhythm (typical interval, last purchase), at each purchase day close.'
AS SELECT
    oneid, sku, {_close('day')} AS event_timestamp,
    toInt64(n) AS np_purchases,
    toInt64(units_total) AS np_units_total,
    toInt64(toUnixTimestamp({_close('day')})) AS np_last_purchase_ts,
    round(if(n > 1, (day - first_day) / (n - 1), 0), 3) AS np_mean_interval_days,
    round(if(n > 2, sqrt(greatest(gap2 / (n - 1) - pow((day - first_day) / (n - 1), 2), 0)), 0), 3) AS np_interval_std_days,
    round(countEqual(weekdays, toDayOfWeek(day)) / n, 4) AS np_same_weekday_share
FROM (
    SELECT oneid, sku, day,
        count() OVER w AS n, sum(units) OVER w AS units_total, min(day) OVER w AS first_day,
        sum(gap * gap) OVER w AS gap2, groupArray(toDayOfWeek(day)) OVER w AS weekdays
    FROM (
        SELECT oneid, sku, day, units, if(prev_day = toDate(0), 0, day - prev_day) AS gap
        FROM (
            SELECT oneid, sku, day, sum(qty) AS units,
                any(day) OVER (PARTITION BY oneid, sku ORDER BY day ROWS BETWEEN 1 PRECEDING AND 1 PRECEDING) AS prev_day
            FROM feat__order_lines GROUP BY oneid, sku, day
        )
    )
    WINDOW w AS (PARTITION BY oneid, sku ORDER BY day ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
"""

_COMMUNITY_SKU = f"""
CREATE OR REPLACE TABLE feat_community_sku ENGINE = MergeTree ORDER BY (community_id, sku, event_timestamp)
COMMENT 'Feast view community_bestsellers: units and rank per community x SKU over 7 and 28 days, daily close.'
AS WITH
    (SELECT max(day) FROM feat__order_lines) AS as_of_day,
    daily AS (SELECT community_id, sku, day, sum(qty) AS units, uniqExact(order_id) AS orders
              FROM feat__order_lines GROUP BY community_id, sku, day),
    grid AS (
        SELECT c.community_id AS community_id, s.sku AS sku, c.day AS day
        FROM (SELECT community_id, toDate(arrayJoin(range(toUInt32(min(day)), toUInt32(as_of_day) + 1))) AS day
              FROM feat__order_lines GROUP BY community_id) AS c
        CROSS JOIN (SELECT DISTINCT sku FROM feat__order_lines) AS s
    ),
    rolled AS (
        SELECT grid.community_id AS community_id, grid.sku AS sku, grid.day AS day,
            sum(daily.units) OVER w28 AS units_28, sum(daily.units) OVER w7 AS units_7,
            sum(daily.orders) OVER w28 AS orders_28
        FROM grid LEFT JOIN daily ON daily.community_id = grid.community_id AND daily.sku = grid.sku AND daily.day = grid.day
        WINDOW w28 AS (PARTITION BY grid.community_id, grid.sku ORDER BY grid.day ROWS BETWEEN 27 PRECEDING AND CURRENT ROW),
               w7 AS (PARTITION BY grid.community_id, grid.sku ORDER BY grid.day ROWS BETWEEN 6 PRECEDING AND CURRENT ROW)
    )
SELECT community_id, sku, {_close('day')} AS event_timestamp,
    toInt64(units_28) AS cb_units_28d, toInt64(units_7) AS cb_units_7d, toInt64(orders_28) AS cb_orders_28d,
    toInt64(rank() OVER (PARTITION BY community_id, day ORDER BY units_28 DESC)) AS cb_rank_28d,
    round(units_28 / greatest(sum(units_28) OVER (PARTITION BY community_id, day), 1), 5) AS cb_share_28d,
    round((units_7 + 1) / (units_28 / 4 + 1), 4) AS cb_trend
FROM rolled
SETTINGS join_use_nulls = 0
"""

_LOCKER = f"""
CREATE OR REPLACE TABLE feat_locker_service ENGINE = MergeTree ORDER BY (locker_id, event_timestamp)
COMMENT 'Feast view locker_service: pickup punctuality and cold-chain readings per locker, daily close.'
AS WITH
    (SELECT toDate(max(occurred_at), '{TZ}') FROM raw_order) AS as_of_day,
    orders AS (
        SELECT o.locker_id AS locker_id, toDate(o.occurred_at, '{TZ}') AS day, count() AS orders,
            countIf(p.first_pickup IS NOT NULL) AS collected,
            countIf(p.first_pickup <= o.delivery_slot_end + INTERVAL 2 HOUR) AS on_time,
            sumIf(dateDiff('minute', o.occurred_at, p.first_pickup), p.first_pickup IS NOT NULL) AS minutes_to_pickup
        FROM raw_order AS o FINAL
        LEFT JOIN (SELECT order_id, min(occurred_at) AS first_pickup FROM raw_pickup FINAL GROUP BY order_id) AS p
            ON p.order_id = o.order_id
        GROUP BY locker_id, day
        SETTINGS join_use_nulls = 1
    ),
    telemetry AS (
        SELECT locker_id, toDate(occurred_at, '{TZ}') AS day,
            countIf(product_class != 'ambient') AS cold_readings,
            countIf((product_class = 'chilled' AND temperature_c BETWEEN 0 AND 4)
                    OR (product_class = 'frozen' AND temperature_c <= -18)) AS cold_in_range,
            countIf(door = 'open') AS door_open_readings
        FROM raw_locker_telemetry GROUP BY locker_id, day
    ),
    grid AS (
        SELECT locker_id, toDate(arrayJoin(range(toUInt32(min(day)), toUInt32(as_of_day) + 1))) AS day
        FROM orders GROUP BY locker_id
    ),
    joined AS (
        SELECT grid.locker_id AS locker_id, grid.day AS day, orders.orders AS orders, orders.collected AS collected,
            orders.on_time AS on_time, orders.minutes_to_pickup AS minutes_to_pickup,
            telemetry.cold_readings AS cold_readings, telemetry.cold_in_range AS cold_in_range,
            telemetry.door_open_readings AS door_open_readings
        FROM grid
        LEFT JOIN orders ON orders.locker_id = grid.locker_id AND orders.day = grid.day
        LEFT JOIN telemetry ON telemetry.locker_id = grid.locker_id AND telemetry.day = grid.day
        SETTINGS join_use_nulls = 0
    )
SELECT locker_id, {_close('day')} AS event_timestamp,
    toInt64(sum(orders) OVER w7) AS lk_orders_7d,
    round(sum(collected) OVER w28 / greatest(sum(orders) OVER w28, 1), 4) AS lk_collected_share_28d,
    round(sum(on_time) OVER w28 / greatest(sum(collected) OVER w28, 1), 4) AS lk_on_time_share_28d,
    round(sum(minutes_to_pickup) OVER w28 / greatest(sum(collected) OVER w28, 1) / 60, 3) AS lk_hours_to_pickup_28d,
    round(sum(cold_in_range) OVER w7 / greatest(sum(cold_readings) OVER w7, 1), 5) AS lk_cold_in_range_share_7d,
    toInt64(sum(door_open_readings) OVER w7) AS lk_door_open_readings_7d
FROM joined
WINDOW w7 AS (PARTITION BY locker_id ORDER BY day ROWS BETWEEN 6 PRECEDING AND CURRENT ROW),
       w28 AS (PARTITION BY locker_id ORDER BY day ROWS BETWEEN 27 PRECEDING AND CURRENT ROW)
"""

_SKU = """
CREATE OR REPLACE TABLE feat_sku ENGINE = MergeTree ORDER BY sku
COMMENT 'Feast view sku_catalog: catalogue attributes per SKU (master data; valid from 2000-01-01).'
AS SELECT sku, toDateTime64('2000-01-01 00:00:00', 3, 'UTC') AS event_timestamp,
    category AS sku_category, product_class AS sku_product_class, toFloat64(unit_price) AS sku_unit_price,
    is_impulse AS sku_is_impulse, is_healthy AS sku_is_healthy
FROM ref_skus
"""

_CREDIT_FROM_MART = f"""
CREATE OR REPLACE TABLE feat_customer_credit ENGINE = MergeTree ORDER BY (oneid, event_timestamp)
COMMENT 'Feast view customer_credit: dbt neighbor_credit_score snapshot, stamped at the observation end (no history in dbt).'
AS SELECT oneid, {_close('assumeNotNull((SELECT max(day) FROM feat__order_lines))')} AS event_timestamp,
    toInt64(credit_score) AS credit_score, credit_tier, toFloat64(community_rank_share) AS credit_rank_share
FROM neighbor_credit_score
"""

_CREDIT_EMPTY = """
CREATE OR REPLACE TABLE feat_customer_credit (
    oneid String, event_timestamp DateTime64(3, 'UTC'), credit_score Int64, credit_tier String, credit_rank_share Float64
) ENGINE = MergeTree ORDER BY (oneid, event_timestamp)
COMMENT 'Feast view customer_credit: empty until dbt builds neighbor_credit_score.'
"""

#: The push source's offline table: the streaming worker's real-time counters.
REALTIME_DDL = """
CREATE TABLE IF NOT EXISTS feat_customer_realtime (
    oneid String, event_timestamp DateTime64(3, 'UTC'),
    rt_orders_today Int64, rt_spend_today_cny Float64, rt_impulse_spend_today_cny Float64, rt_last_order_ts Int64,
    _pushed_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'When the online store had the row (freshness).'
) ENGINE = ReplacingMergeTree ORDER BY (oneid, event_timestamp)
COMMENT 'Feast push source customer_realtime_push: counters the streaming worker updates as orders arrive.'
"""

#: Tables created before ``_pushed_at`` existed get it on the worker's start.
REALTIME_UPGRADE = ("ALTER TABLE feat_customer_realtime ADD COLUMN IF NOT EXISTS "
                    "_pushed_at DateTime64(3, 'UTC') DEFAULT now64(3)")

_CONSENT = """
CREATE OR REPLACE TABLE feat_customer_consent ENGINE = MergeTree ORDER BY (oneid, event_timestamp)
COMMENT 'Feast view customer_consent: declared dietary needs (ref_dietary_declarations), valid from the declaration.'
AS SELECT oneid, declared_at AS event_timestamp, dietary_need AS dietary_need_declared
FROM ref_dietary_declarations FINAL
"""

_CONSENT_EMPTY = """
CREATE OR REPLACE TABLE feat_customer_consent (
    oneid String, event_timestamp DateTime64(3, 'UTC'), dietary_need_declared Bool
) ENGINE = MergeTree ORDER BY (oneid, event_timestamp)
COMMENT 'Feast view customer_consent: empty until dietary declarations are loaded (lastmile.models.consent).'
"""

_SKU_FALLBACK = """
CREATE TABLE IF NOT EXISTS ref_skus (
    sku String, name String, name_en String, category String, origin String, unit_price Float64,
    product_class String, is_impulse Bool, is_healthy Bool
) ENGINE = MergeTree ORDER BY sku
"""

#: Feature table -> what it is built from, in build order (intermediates first).
BUILD_ORDER: tuple[tuple[str, str], ...] = (
    ("feat__order_lines", _LINES),
    ("feat__customer_daily", _CUSTOMER_DAILY),
    ("feat_customer_profile", _PROFILE),
    ("feat_spending_health", _SPENDING),
    ("feat_category_affinity", _AFFINITY),
    ("feat_customer_sku", _CUSTOMER_SKU),
    ("feat_community_sku", _COMMUNITY_SKU),
    ("feat_locker_service", _LOCKER),
    ("feat_sku", _SKU),
)

#: Tables Feast reads (a feature view each).
FEATURE_TABLES = ("feat_customer_profile", "feat_spending_health", "feat_category_affinity", "feat_customer_sku",
                  "feat_community_sku", "feat_locker_service", "feat_sku", "feat_customer_credit",
                  "feat_customer_realtime", "feat_customer_consent")


@dataclass
class BuildReport:
    rows: dict[str, int]
    seconds: dict[str, float]
    credit_source: str

    def summary(self) -> str:
        return ", ".join(f"{t} {n:,}" for t, n in self.rows.items()) + f" (credit: {self.credit_source})"


def build_feature_tables(warehouse: Warehouse) -> BuildReport:
    """(Re)build every ``feat_*`` table; returns row counts and timings per table.

    Needs the raw tables, ``event_oneid`` and ``ref_skus`` (loaded by ``lastmile transform``;
    without it the catalogue flags read as false and ``feat_sku`` is empty).
    """
    tables = set(warehouse.tables())
    if "ref_skus" not in tables:
        warehouse.command(_SKU_FALLBACK)
    rows: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for name, sql in BUILD_ORDER:
        t0 = time.perf_counter()
        warehouse.command(sql)
        seconds[name] = round(time.perf_counter() - t0, 3)
        rows[name] = warehouse.count(name, final=False)
    t0 = time.perf_counter()
    credit_source = "neighbor_credit_score" if "neighbor_credit_score" in tables else "none (dbt not built)"
    warehouse.command(_CREDIT_FROM_MART if "neighbor_credit_score" in tables else _CREDIT_EMPTY)
    seconds["feat_customer_credit"] = round(time.perf_counter() - t0, 3)
    rows["feat_customer_credit"] = warehouse.count("feat_customer_credit", final=False)
    warehouse.command(_CONSENT if "ref_dietary_declarations" in tables else _CONSENT_EMPTY)
    rows["feat_customer_consent"] = warehouse.count("feat_customer_consent", final=False)
    warehouse.command(REALTIME_DDL)
    rows["feat_customer_realtime"] = warehouse.count("feat_customer_realtime", final=False)
    return BuildReport(rows=rows, seconds=seconds, credit_source=credit_source)
