"""OneID 360 profiles: one row per person, every property resolved by event time.

Built in ClickHouse from the raw events and ``event_oneid`` after each resolution, and
swapped in atomically (``CREATE OR REPLACE``): a merged-away OneID disappears, a split shows
as two profiles. "Latest" values use ``argMax(value, occurred_at)``, so a late event never
overwrites a newer value, whatever order events arrived in. Identifiers appear only as
keyed hashes. Properties are behavioural facts observed in events, never a persona.
"""

from __future__ import annotations

from lastmile.warehouse import Warehouse

PROFILES_SQL = """
CREATE OR REPLACE TABLE profiles
ENGINE = MergeTree ORDER BY oneid
COMMENT 'OneID 360: one row per person, properties resolved by event time. Rebuilt after each identity resolution.'
AS
WITH
    ids AS (
        SELECT oneid, groupArray((id_type, token)) AS identifiers, countIf(id_type = 'phone') AS phones,
               countIf(id_type IN ('unionid', 'openid')) AS wechat_ids, countIf(id_type = 'member_card') AS member_cards,
               countIf(id_type = 'device_id') AS devices, max(shared) AS has_shared_identifier
        FROM identity_nodes FINAL WHERE oneid != '' GROUP BY oneid
    ),
    orders AS (
        SELECT e.oneid AS oneid, count() AS orders, sum(o.total_amount) AS spend, min(o.occurred_at) AS first_order_at,
               max(o.occurred_at) AS last_order_at, argMax(o.community_id, o.occurred_at) AS community_id,
               argMax(o.building_id, o.occurred_at) AS building_id, argMax(o.leader_id, o.occurred_at) AS leader_id,
               argMax(o.channel, o.occurred_at) AS last_channel,
               topKWeighted(1)(arrayJoin(o.items).category, 1)[1] AS top_category,
               avg(toHour(toTimeZone(o.occurred_at, 'Asia/Shanghai')) >= 21 OR toHour(toTimeZone(o.occurred_at, 'Asia/Shanghai')) < 5) AS late_night_share
        FROM raw_order AS o FINAL INNER JOIN event_oneid AS e ON e.event_id = o.event_id AND e.event_type = 'order'
        GROUP BY e.oneid
    ),
    pickups AS (
        SELECT e.oneid AS oneid, count() AS pickups, max(p.occurred_at) AS last_pickup_at
        FROM raw_pickup AS p FINAL INNER JOIN event_oneid AS e ON e.event_id = p.event_id AND e.event_type = 'pickup'
        GROUP BY e.oneid
    ),
    reviews AS (
        SELECT e.oneid AS oneid, count() AS reviews, avg(r.stars) AS review_avg, max(r.occurred_at) AS last_review_at
        FROM raw_review AS r FINAL INNER JOIN event_oneid AS e ON e.event_id = r.event_id AND e.event_type = 'review'
        GROUP BY e.oneid
    ),
    after_sales AS (
        SELECT e.oneid AS oneid, countIf(r.kind = 'claim') AS claims, sumIf(r.amount, r.kind = 'claim') AS claimed_amount,
               countIf(r.kind = 'packaging') AS packaging_returns
        FROM raw_return AS r FINAL INNER JOIN event_oneid AS e ON e.event_id = r.event_id AND e.event_type = 'return'
        GROUP BY e.oneid
    ),
    seen AS (
        SELECT oneid, min(toDateTime64(occurred_at_ms / 1000, 3, 'UTC')) AS first_seen_at,
               max(toDateTime64(occurred_at_ms / 1000, 3, 'UTC')) AS last_seen_at
        FROM identity_links AS l FINAL INNER JOIN event_oneid AS e ON e.event_id = l.event_id
        GROUP BY oneid
    )
SELECT
    ids.oneid AS oneid, ids.identifiers, ids.phones, ids.wechat_ids, ids.member_cards, ids.devices, ids.has_shared_identifier,
    orders.community_id AS community_id, orders.building_id AS building_id, orders.leader_id AS leader_id,
    seen.first_seen_at AS first_seen_at, seen.last_seen_at AS last_seen_at,
    orders.orders AS orders, orders.spend AS spend, orders.first_order_at AS first_order_at, orders.last_order_at AS last_order_at,
    orders.last_channel AS last_channel, orders.top_category AS top_category, orders.late_night_share AS late_night_share,
    pickups.pickups AS pickups, pickups.last_pickup_at AS last_pickup_at,
    reviews.reviews AS reviews, reviews.review_avg AS review_avg,
    after_sales.claims AS claims, after_sales.claimed_amount AS claimed_amount, after_sales.packaging_returns AS packaging_returns,
    now64(3) AS built_at
FROM ids
LEFT JOIN orders ON orders.oneid = ids.oneid
LEFT JOIN pickups ON pickups.oneid = ids.oneid
LEFT JOIN reviews ON reviews.oneid = ids.oneid
LEFT JOIN after_sales ON after_sales.oneid = ids.oneid
LEFT JOIN seen ON seen.oneid = ids.oneid
SETTINGS join_use_nulls = 1
"""


def build_profiles(warehouse: Warehouse) -> int:
    """Rebuild ``profiles``; returns the number of profiles."""
    warehouse.command(PROFILES_SQL)
    return warehouse.count("profiles", final=False)
