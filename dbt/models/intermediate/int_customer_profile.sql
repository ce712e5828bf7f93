-- Per person: where they live (the community and building most of their orders go to),
-- when we first and last saw them, and how many identifiers of each kind resolve to them.
{{ config(materialized='table', engine='MergeTree()', order_by='oneid') }}

with per_place as (
    -- One pass over the orders (a CTE named twice is computed twice): per person and
    -- (community, building), then per person below.
    select
        oneid,
        community_id,
        building_id,
        count() as place_orders,
        sum(total_amount_cny) as place_spend_cny,
        min(ordered_at) as place_first_order_at,
        max(ordered_at) as place_last_order_at
    from {{ ref('int_customer_orders') }}
    group by oneid, community_id, building_id
),

order_totals as (
    select
        oneid,
        -- home: the community and building most of their orders go to (a tie: the one ordered
        -- to last); int_customer_daily_activity gives the same per day for the features
        argMax(community_id, (place_orders, place_last_order_at)) as home_community_id,
        argMax(building_id, (place_orders, place_last_order_at)) as home_building_id,
        sum(place_orders) as orders,
        sum(place_spend_cny) as total_spend_cny,
        min(place_first_order_at) as first_order_at,
        max(place_last_order_at) as last_order_at
    from per_place
    group by oneid
),

identifiers as (
    select
        oneid,
        min(first_seen_at) as first_seen_at,
        max(last_seen_at) as last_seen_at,
        countIf(id_type = 'phone') as phones,
        countIf(id_type = 'unionid') as unionids,
        countIf(id_type = 'openid') as openids,
        countIf(id_type = 'member_card') as member_cards,
        countIf(id_type = 'device_id') as devices,
        countIf(is_shared) as shared_identifiers
    from {{ ref('stg_identity__identity_nodes') }}
    group by oneid
),

final as (
    select
        order_totals.oneid as oneid,
        order_totals.home_community_id as home_community_id,
        order_totals.home_building_id as home_building_id,
        order_totals.orders as orders,
        order_totals.total_spend_cny as total_spend_cny,
        order_totals.first_order_at as first_order_at,
        order_totals.last_order_at as last_order_at,
        if(identifiers.oneid = '', order_totals.first_order_at, least(identifiers.first_seen_at, order_totals.first_order_at)) as first_seen_at,
        if(identifiers.oneid = '', order_totals.last_order_at, greatest(identifiers.last_seen_at, order_totals.last_order_at)) as last_seen_at,
        identifiers.phones as phones,
        identifiers.unionids as unionids,
        identifiers.openids as openids,
        identifiers.member_cards as member_cards,
        identifiers.devices as devices,
        identifiers.shared_identifiers as shared_identifiers
    from order_totals
    left join identifiers on identifiers.oneid = order_totals.oneid
)

select * from final
