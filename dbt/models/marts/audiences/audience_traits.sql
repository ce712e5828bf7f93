-- The per-person view audiences are defined over (lastmile/audiences): one row per OneID with
-- OneID 360's scalar traits (dim_customer: home, behaviour, RFM, credit tier, spending health)
-- and the few traits the shipped audiences need that no other mart keeps per person: the
-- group leader ordered through last, tea buying, and orders that sat in a locker compartment
-- while it was out of its temperature range. Identifier arrays are left out on purpose: an
-- audience selects people by behaviour, never by a phone or an openid.
{{ config(order_by='oneid') }}

with customers as (
    select * from {{ ref('dim_customer') }}
),

orders as (
    select * from {{ ref('fct_orders') }}
    where oneid is not null and oneid != ''
),

leaders as (
    select oneid, argMax(leader_id, ordered_at) as last_leader_id
    from orders
    group by oneid
),

tea as (
    select
        orders.oneid as oneid,
        uniqExact(lines.order_id) as tea_orders,
        max(lines.ordered_at) as last_tea_order_at
    from {{ ref('fct_order_lines') }} as lines
    inner join orders on orders.order_id = lines.order_id
    where lines.category = 'tea'
    group by orders.oneid
),

excursions as (
    select * from {{ ref('fct_cold_chain_incidents') }}
    where incident_kind = 'excursion'
),

-- An order sat in its compartment from the start of its pickup slot until it was collected
-- (or until the slot ended, when it never was); an excursion overlapping that time touched it.
excursion_orders as (
    select orders.oneid as oneid, uniqExact(orders.order_id) as excursion_orders
    from orders
    inner join excursions
        on excursions.locker_id = orders.locker_id and excursions.compartment_id = orders.compartment_id
    where excursions.started_at < coalesce(orders.first_picked_up_at, orders.slot_end_at)
      and coalesce(excursions.ended_at, toDateTime64('2299-12-31 00:00:00', 3, 'UTC')) > orders.slot_start_at
    group by orders.oneid
),

final as (
    select
        customers.oneid as oneid,
        customers.home_community_id as home_community_id,
        customers.home_community_name as home_community_name,
        customers.alliance_id as alliance_id,
        customers.home_building_id as home_building_id,
        nullIf(leaders.last_leader_id, '') as last_leader_id,
        customers.first_seen_at as first_seen_at,
        customers.last_seen_at as last_seen_at,
        customers.orders as orders,
        customers.total_spend_cny as total_spend_cny,
        customers.first_order_at as first_order_at,
        customers.last_order_at as last_order_at,
        customers.last_channel as last_channel,
        customers.top_category as top_category,
        customers.last_pickup_at as last_pickup_at,
        customers.collected_orders as collected_orders,
        customers.on_time_pickups as on_time_pickups,
        customers.uncollected_orders as uncollected_orders,
        customers.packaging_returns as packaging_returns,
        customers.claims as claims,
        customers.reviews_written as reviews_written,
        customers.avg_review_stars as avg_review_stars,
        customers.frequency as frequency,
        customers.recency_days as recency_days,
        customers.monetary_value_cny as monetary_value_cny,
        customers.days_since_last_purchase as days_since_last_purchase,
        customers.credit_score as credit_score,
        customers.credit_tier as credit_tier,
        customers.spending_health_score as spending_health_score,
        customers.impulse_share as impulse_share,
        customers.late_night_share as late_night_share,
        coalesce(tea.tea_orders, 0) as tea_orders,
        if(tea.oneid = '', NULL, tea.last_tea_order_at) as last_tea_order_at,
        coalesce(excursion_orders.excursion_orders, 0) as excursion_orders
    from customers
    left join leaders on leaders.oneid = customers.oneid
    left join tea on tea.oneid = customers.oneid
    left join excursion_orders on excursion_orders.oneid = customers.oneid
)

select * from final
