-- Dense customer x business day grid, from each person's first order day to the observation
-- end (int_observation_window), with that day's activity (zeros on quiet days). Every daily
-- customer feature history (marts/features) is a window over it, and every measure here is
-- the one the customer marts use: an order is a row of int_customer_orders, spend is what the
-- buyer paid (total_amount_cny, as in dim_customer and customer_rfm), basket value is what the
-- lines add up to (the base of the impulse, healthy and category shares, as in
-- spending_health), late night is the macro is_late_night, and the home community is the one
-- most of the person's orders so far went to (int_customer_profile's rule, as of each day).
{{ config(materialized='table', engine='MergeTree()', order_by='(oneid, activity_date)', tags=['features']) }}

{%- set categories = var('feature_categories') %}

with observation as (
    select * from {{ ref('int_observation_window') }}
),

orders as (
    select * from {{ ref('int_customer_orders') }}
),

daily as (
    select
        oneid,
        {{ business_date('ordered_at') }} as activity_date,
        count() as orders,
        sum(toFloat64(total_amount_cny)) as spend_cny,
        sum(toFloat64(line_amount_cny)) as basket_cny,
        sum(lines) as lines,
        sum(units) as units,
        countIf({{ is_late_night('ordered_at') }}) as late_night_orders,
        countIf(channel = 'mini_program') as mini_program_orders,
        countIf(channel = 'group_chat') as group_chat_orders,
        sum(toFloat64(impulse_amount_cny)) as impulse_cny,
        sum(toFloat64(healthy_amount_cny)) as healthy_cny,
        argMax(community_id, ordered_at) as community_id,
        argMax(locker_id, ordered_at) as locker_id,
        sumMap(categories, category_amounts_cny) as category_spend,
        {%- for c in categories %}
        toFloat64(arrayFirst((amount, category) -> category = '{{ c }}', category_spend.2, category_spend.1)) as cat_{{ c }}_cny{{ "," if not loop.last }}
        {%- endfor %}
    from orders
    group by oneid, activity_date
),

grid as (
    select oneid, toDate(arrayJoin(range(toUInt32(min(activity_date)), toUInt32((select as_of_date from observation)) + 1))) as activity_date
    from daily
    group by oneid
),

place_days as (
    -- per person, place (community, building) and day: orders, and the latest of them
    select
        oneid,
        community_id,
        building_id,
        {{ business_date('ordered_at') }} as activity_date,
        count() as place_orders,
        max(ordered_at) as place_last_order_at
    from orders
    group by oneid, community_id, building_id, activity_date
),

place_running as (
    -- every day of the grid for every place of the person, with the orders so far
    select
        grid.oneid as oneid,
        grid.activity_date as activity_date,
        places.community_id as community_id,
        sum(place_days.place_orders) over w as place_orders_so_far,
        max(place_days.place_last_order_at) over w as place_last_order_so_far
    from grid
    inner join (select distinct oneid, community_id, building_id from place_days) as places on places.oneid = grid.oneid
    left join place_days
        on place_days.oneid = grid.oneid and place_days.community_id = places.community_id
        and place_days.building_id = places.building_id and place_days.activity_date = grid.activity_date
    window w as (partition by grid.oneid, places.community_id, places.building_id order by grid.activity_date
                 rows between unbounded preceding and current row)
    settings join_use_nulls = 0
),

homes as (
    select oneid, activity_date, argMax(community_id, (place_orders_so_far, place_last_order_so_far)) as home_community_id
    from place_running
    where place_orders_so_far > 0
    group by oneid, activity_date
),

final as (
    select
        grid.oneid as oneid,
        grid.activity_date as activity_date,
        daily.* except (oneid, activity_date, category_spend),
        homes.home_community_id as home_community_id
    from grid
    left join daily on daily.oneid = grid.oneid and daily.activity_date = grid.activity_date
    left join homes on homes.oneid = grid.oneid and homes.activity_date = grid.activity_date
    settings join_use_nulls = 0
)

select * from final
