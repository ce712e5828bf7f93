# This is the lastmile feature repository, laid out like Feast's own templates
# (`feast init`): feature_store.yaml configures the stores, this file declares the objects,
# test_workflow.py runs the whole loop. `feast apply` in this directory registers everything
# below; `lastmile features apply` does the same from Python (lastmile/features/store.py).
#
# Offline, every feature view reads a `feat_*` table in the ClickHouse warehouse (embedded
# chDB or a server, chosen in feature_store.yaml). The dbt models in dbt/models/marts/features
# build those tables from the same intermediates as the customer marts: daily snapshots stamped
# at the business-day close (LASTMILE_BUSINESS_TZ), so point-in-time joins never see the future.

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, PushSource, ValueType
from feast.infra.offline_stores.contrib.clickhouse_offline_store.clickhouse_source import ClickhouseSource
from feast.types import Bool, Float64, Int64, String

from lastmile.features.tables import CATEGORIES

# Entities: the keys features hang off. A customer is a OneID (the resolved person, never a
# raw identifier); community, locker and SKU are the ids the events carry.
customer = Entity(name="customer", join_keys=["oneid"], value_type=ValueType.STRING,
                  description="A person, as resolved by OneID (lastmile.identity).")
community = Entity(name="community", join_keys=["community_id"], value_type=ValueType.STRING,
                   description="A residential community (小区) served by one group-buying operation.")
locker = Entity(name="locker", join_keys=["locker_id"], value_type=ValueType.STRING,
                description="A cold-chain smart pickup locker.")
sku = Entity(name="sku", join_keys=["sku"], value_type=ValueType.STRING, description="A catalogue SKU.")


def _source(table: str) -> ClickhouseSource:
    return ClickhouseSource(name=table, table=table, timestamp_field="event_timestamp")


# Profile and RFM: order counts and spend (all time, 28 and 7 days), recency, tenure, rhythm,
# channels, home community and locker. One row per customer and business day.
customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    ttl=timedelta(days=3),
    schema=[
        Field(name="orders_total", dtype=Int64), Field(name="spend_total_cny", dtype=Float64),
        Field(name="avg_basket_cny", dtype=Float64), Field(name="orders_28d", dtype=Int64),
        Field(name="spend_28d_cny", dtype=Float64), Field(name="orders_7d", dtype=Int64),
        Field(name="spend_7d_cny", dtype=Float64), Field(name="purchase_days", dtype=Int64),
        Field(name="tenure_days", dtype=Int64), Field(name="days_since_last_order", dtype=Int64),
        Field(name="last_order_day_close_ts", dtype=Int64),
        Field(name="mean_days_between_purchases", dtype=Float64), Field(name="lines_per_order", dtype=Float64),
        Field(name="mini_program_share", dtype=Float64), Field(name="group_chat_share", dtype=Float64),
        Field(name="home_community_id", dtype=String), Field(name="home_locker_id", dtype=String),
    ],
    source=_source("feat_customer_profile"),
    tags={"team": "ml", "grain": "customer x business day"},
)

# Neighbour credit score and tier (dbt mart neighbor_credit_score). dbt keeps no history, so
# this view holds one snapshot stamped at the observation end: older training rows see NULL.
customer_credit = FeatureView(
    name="customer_credit",
    entities=[customer],
    ttl=timedelta(days=40),
    schema=[Field(name="credit_score", dtype=Int64), Field(name="credit_tier", dtype=String),
            Field(name="credit_rank_share", dtype=Float64)],
    source=_source("feat_customer_credit"),
    tags={"team": "ml", "upstream": "dbt:neighbor_credit_score"},
)

# Spending health: impulse and healthy spend shares, late-night ordering, spend velocity
# against the person's own baseline, basket growth and category balance (28 days).
spending_health = FeatureView(
    name="spending_health",
    entities=[customer],
    ttl=timedelta(days=3),
    schema=[
        Field(name="sh_impulse_share_28d", dtype=Float64), Field(name="sh_healthy_share_28d", dtype=Float64),
        Field(name="sh_impulse_share_all", dtype=Float64), Field(name="sh_late_night_share_28d", dtype=Float64),
        Field(name="sh_orders_per_week_28d", dtype=Float64), Field(name="sh_units_per_order_28d", dtype=Float64),
        Field(name="sh_weekly_spend_28d_cny", dtype=Float64), Field(name="sh_spend_velocity", dtype=Float64),
        Field(name="sh_basket_growth", dtype=Float64), Field(name="sh_category_balance_28d", dtype=Float64),
    ],
    source=_source("feat_spending_health"),
    tags={"team": "ml"},
)

# Category affinity: each customer's share of spend per catalogue category (one column per
# category, so one online read returns the whole vector) and how balanced it is.
category_affinity = FeatureView(
    name="category_affinity",
    entities=[customer],
    ttl=timedelta(days=3),
    schema=[Field(name=f"aff_{c}", dtype=Float64) for c in CATEGORIES]
    + [Field(name="aff_category_balance", dtype=Float64)],
    source=_source("feat_category_affinity"),
    tags={"team": "ml"},
)

# Next purchase due, per customer x SKU: how often they buy it, the typical interval, its
# spread and the weekday habit ("avocados every Monday"). Days until due is computed at
# request time from np_last_purchase_ts and the interval (lastmile/models/derive.py).
next_purchase = FeatureView(
    name="next_purchase",
    entities=[customer, sku],
    ttl=timedelta(days=120),
    schema=[
        Field(name="np_purchases", dtype=Int64), Field(name="np_units_total", dtype=Int64),
        Field(name="np_last_purchase_ts", dtype=Int64), Field(name="np_mean_interval_days", dtype=Float64),
        Field(name="np_interval_std_days", dtype=Float64), Field(name="np_same_weekday_share", dtype=Float64),
    ],
    source=_source("feat_customer_sku"),
    tags={"team": "ml", "grain": "customer x sku x purchase day"},
)

# Community best-sellers: units, orders, rank and share per community x SKU, with a trend.
community_bestsellers = FeatureView(
    name="community_bestsellers",
    entities=[community, sku],
    ttl=timedelta(days=3),
    schema=[
        Field(name="cb_units_28d", dtype=Int64), Field(name="cb_units_7d", dtype=Int64),
        Field(name="cb_orders_28d", dtype=Int64), Field(name="cb_rank_28d", dtype=Int64),
        Field(name="cb_share_28d", dtype=Float64), Field(name="cb_trend", dtype=Float64),
    ],
    source=_source("feat_community_sku"),
    tags={"team": "ml"},
)

# Demand forecast and stock per community x SKU (lastmile stocking plan): the next day's
# forecast, units that would expire, days of cover. The recommender favours SKUs that would
# otherwise expire and stops pushing those about to sell out (lastmile.models.stock_aware).
sku_forecast = FeatureView(
    name="sku_forecast",
    entities=[community, sku],
    ttl=timedelta(days=2),
    schema=[
        Field(name="sf_p50_24h", dtype=Float64), Field(name="sf_p90_24h", dtype=Float64),
        Field(name="sf_on_hand", dtype=Int64), Field(name="sf_expiring_units", dtype=Int64),
        Field(name="sf_order_qty", dtype=Int64), Field(name="sf_stock_after_delivery", dtype=Int64),
        Field(name="sf_days_of_cover", dtype=Float64),
    ],
    source=_source("feat_sku_forecast"),
    tags={"team": "ops"},
)

# Locker / compartment service: pickup punctuality and cold-chain readings per locker.
locker_service = FeatureView(
    name="locker_service",
    entities=[locker],
    ttl=timedelta(days=3),
    schema=[
        Field(name="lk_orders_7d", dtype=Int64), Field(name="lk_collected_share_28d", dtype=Float64),
        Field(name="lk_on_time_share_28d", dtype=Float64), Field(name="lk_hours_to_pickup_28d", dtype=Float64),
        Field(name="lk_cold_in_range_share_7d", dtype=Float64), Field(name="lk_door_open_readings_7d", dtype=Int64),
    ],
    source=_source("feat_locker_service"),
    tags={"team": "ops"},
)

# Catalogue attributes per SKU (master data, valid since 2000-01-01, never expires).
sku_catalog = FeatureView(
    name="sku_catalog",
    entities=[sku],
    ttl=timedelta(days=0),
    schema=[
        Field(name="sku_category", dtype=String), Field(name="sku_product_class", dtype=String),
        Field(name="sku_unit_price", dtype=Float64), Field(name="sku_is_impulse", dtype=Bool),
        Field(name="sku_is_healthy", dtype=Bool),
    ],
    source=_source("feat_sku"),
    tags={"team": "ml"},
)

# Declared dietary needs (health-declaration form, loaded into ref_dietary_declarations):
# the medical exception to the spending-health recommendation cap. Never expires.
customer_consent = FeatureView(
    name="customer_consent",
    entities=[customer],
    ttl=timedelta(days=0),
    schema=[Field(name="dietary_need_declared", dtype=Bool)],
    source=_source("feat_customer_consent"),
    tags={"team": "ml", "pii": "health declaration"},
)

# Real time: the streaming worker pushes today's counters as orders arrive
# (lastmile.features.push.push). The batch source is where the same rows land offline.
customer_realtime_push = PushSource(name="customer_realtime_push", batch_source=_source("feat_customer_realtime"))

customer_realtime = FeatureView(
    name="customer_realtime",
    entities=[customer],
    ttl=timedelta(days=1),
    schema=[
        Field(name="rt_orders_today", dtype=Int64), Field(name="rt_spend_today_cny", dtype=Float64),
        Field(name="rt_impulse_spend_today_cny", dtype=Float64), Field(name="rt_last_order_ts", dtype=Int64),
    ],
    source=customer_realtime_push,
    online=True,
    tags={"team": "ml", "freshness": "streaming"},
)

# Feature services: the versioned feature sets models are trained and served with. A model
# records the service it was trained on; changing a service's features means a new version.
recommendation_v1 = FeatureService(
    name="recommendation_v1",
    features=[
        customer_profile[["orders_total", "spend_total_cny", "avg_basket_cny", "orders_28d", "spend_28d_cny",
                          "orders_7d", "purchase_days", "tenure_days", "days_since_last_order",
                          "mean_days_between_purchases", "lines_per_order", "home_community_id"]],
        customer_credit[["credit_score", "credit_tier"]],
        spending_health[["sh_impulse_share_28d", "sh_healthy_share_28d", "sh_late_night_share_28d",
                         "sh_spend_velocity", "sh_category_balance_28d"]],
        category_affinity,
        next_purchase,
        community_bestsellers[["cb_units_28d", "cb_units_7d", "cb_rank_28d", "cb_share_28d", "cb_trend"]],
        sku_catalog,
    ],
    description="Features for re-ranking recommendation candidates (customer x community x candidate SKU).",
    tags={"model": "recommender", "version": "1"},
)

spending_health_v1 = FeatureService(
    name="spending_health_v1",
    features=[
        spending_health,
        customer_profile[["orders_total", "orders_28d", "orders_7d", "spend_28d_cny", "spend_7d_cny",
                          "avg_basket_cny", "tenure_days", "lines_per_order"]],
        category_affinity[["aff_category_balance", "aff_snacks", "aff_ready_meal", "aff_drinks", "aff_dessert",
                           "aff_vegetables"]],
        customer_realtime,
        customer_consent,
    ],
    description="Features for the over-consumption risk score and its reasons.",
    tags={"model": "spending_health", "version": "1"},
)
