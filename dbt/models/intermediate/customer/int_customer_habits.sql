-- Per person: how they buy, beyond counts and sums: the channel of their latest order, the
-- category they spend most on (basket value; ties to the first name), and when they last
-- collected an order (the latest first pickup of their orders). Part of the OneID 360
-- (dim_customer).
{{ config(materialized='table', engine='MergeTree()', order_by='oneid') }}

with orders as (
    select * from {{ ref('int_customer_orders') }}
),

per_person as (
    select
        oneid,
        argMax(channel, (ordered_at, order_id)) as last_channel,
        sumMap(categories, category_amounts_cny) as category_spend,
        max(first_picked_up_at) as last_pickup_at
    from orders
    group by oneid
),

final as (
    select
        oneid,
        toString(last_channel) as last_channel,
        if(empty(category_spend.1), NULL,
           arraySort((category, amount) -> (-toFloat64(amount), category), category_spend.1, category_spend.2)[1]) as top_category,
        last_pickup_at
    from per_person
)

select * from final
