-- Feast view sku_forecast: per community x SKU and plan, the next day's forecast demand and
-- the shelf it meets (units that would expire, days of cover), stamped when the plan was made.
-- The recommender favours SKUs whose stock would otherwise expire and stops pushing SKUs
-- about to sell out (lastmile/models/stock_aware.py).
{{ config(order_by='(community_id, sku, event_timestamp)') }}

with plan as (
    select * from {{ ref('stg_stocking__plan') }}
),

forecast as (
    select * from {{ ref('stg_stocking__demand_forecast') }}
),

next_day as (
    select
        plan.community_id as community_id,
        plan.sku as sku,
        plan.plan_made_at as plan_made_at,
        sum(forecast.p50_units) as p50_24h,
        sum(forecast.p90_units) as p90_24h
    from plan
    inner join forecast
        on forecast.community_id = plan.community_id and forecast.sku = plan.sku
    where forecast.forecast_hour >= plan.delivery_at and forecast.forecast_hour < plan.delivery_at + interval 24 hour
    group by plan.community_id, plan.sku, plan.plan_made_at
),

final as (
    select
        plan.community_id as community_id,
        plan.sku as sku,
        plan.plan_made_at as event_timestamp,
        round(ifNull(next_day.p50_24h, 0), 3) as sf_p50_24h,
        round(ifNull(next_day.p90_24h, 0), 3) as sf_p90_24h,
        plan.on_hand as sf_on_hand,
        plan.expiring_units as sf_expiring_units,
        plan.order_qty as sf_order_qty,
        plan.on_hand - plan.expiring_before_delivery + plan.order_qty + plan.pooled_qty as sf_stock_after_delivery,
        if(ifNull(next_day.p50_24h, 0) > 0,
           round((plan.on_hand - plan.expiring_before_delivery + plan.order_qty + plan.pooled_qty) / next_day.p50_24h, 3),
           NULL) as sf_days_of_cover
    from plan
    left join next_day on next_day.community_id = plan.community_id and next_day.sku = plan.sku
        and next_day.plan_made_at = plan.plan_made_at
    settings join_use_nulls = 1
)

select * from final
