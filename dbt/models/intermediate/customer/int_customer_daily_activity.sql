-- Dense customer x business day grid, from each person's first order day to the observation
-- end (int_observation_window), with that day's activity (zeros on quiet days). Every daily
-- customer feature history (marts/features) is a window over it, and every measure here is
-- the one the customer marts use: an order is a row of int_customer_orders, spend is what the
-- buyer paid (total_amount_cny, as in dim_customer and customer_rfm), basket value is what the
-- lines add up to (the base of the impulse, healthy and category shares, as in
-- spending_health), late night is the macro is_late_night.
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

final as (
    select grid.oneid as oneid, grid.activity_date as activity_date, daily.* except (oneid, activity_date, category_spend)
    from grid
    left join daily on daily.oneid = grid.oneid and daily.activity_date = grid.activity_date
    settings join_use_nulls = 0
)

select * from final
