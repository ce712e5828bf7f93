-- OneID 360: one row per person with where they live, how they buy, how they behave, and
-- the scores the other marts compute. The table BI and the feature store start from.
{{ config(order_by='oneid') }}

with profiles as (
    select * from {{ ref('int_customer_profile') }}
),

activity as (
    select
        oneid,
        sum(collected_orders) as collected_orders,
        sum(on_time_pickups) as on_time_pickups,
        sum(uncollected_orders) as uncollected_orders,
        sum(packaging_returns) as packaging_returns,
        sum(claims) as claims,
        sum(reviews_written) as reviews_written
    from {{ ref('int_customer_monthly_activity') }}
    group by oneid
),

stars as (
    select oneid, avg(review_stars) as avg_review_stars
    from {{ ref('int_customer_orders') }}
    where is_reviewed
    group by oneid
),

rfm as (
    select * from {{ ref('customer_rfm') }}
),

credit as (
    select * from {{ ref('neighbor_credit_score') }}
),

spending as (
    select * from {{ ref('spending_health') }}
),

habits as (
    select * from {{ ref('int_customer_habits') }}
),

communities as (
    select community_id, community_name, alliance_id from {{ ref('stg_reference__communities') }}
),

final as (
    select
        profiles.oneid as oneid,
        profiles.home_community_id as home_community_id,
        communities.community_name as home_community_name,
        communities.alliance_id as alliance_id,
        profiles.home_building_id as home_building_id,
        profiles.first_seen_at as first_seen_at,
        profiles.last_seen_at as last_seen_at,
        profiles.phones as phones,
        profiles.unionids as unionids,
        profiles.openids as openids,
        profiles.member_cards as member_cards,
        profiles.devices as devices,
        profiles.shared_identifiers as shared_identifiers,
        profiles.orders as orders,
        profiles.total_spend_cny as total_spend_cny,
        profiles.first_order_at as first_order_at,
        profiles.last_order_at as last_order_at,
        habits.last_channel as last_channel,
        habits.top_category as top_category,
        habits.last_pickup_at as last_pickup_at,
        activity.collected_orders as collected_orders,
        activity.on_time_pickups as on_time_pickups,
        activity.uncollected_orders as uncollected_orders,
        activity.packaging_returns as packaging_returns,
        activity.claims as claims,
        activity.reviews_written as reviews_written,
        if(stars.oneid = '', NULL, round(stars.avg_review_stars, 2)) as avg_review_stars,
        rfm.frequency as frequency,
        rfm.recency_days as recency_days,
        rfm.t_days as t_days,
        rfm.monetary_value_cny as monetary_value_cny,
        rfm.days_since_last_purchase as days_since_last_purchase,
        credit.credit_score as credit_score,
        credit.credit_tier as credit_tier,
        spending.spending_health_score as spending_health_score,
        spending.impulse_share as impulse_share,
        spending.late_night_share as late_night_share
    from profiles
    left join activity on activity.oneid = profiles.oneid
    left join stars on stars.oneid = profiles.oneid
    left join rfm on rfm.oneid = profiles.oneid
    left join credit on credit.oneid = profiles.oneid
    left join spending on spending.oneid = profiles.oneid
    left join habits on habits.oneid = profiles.oneid
    left join communities on communities.community_id = profiles.home_community_id
)

select * from final
