-- One row per order line of a known person: the buyer's current OneID (int_customer_orders),
-- the business day of the order, and the catalogue's impulse / healthy flags of the SKU.
-- The per customer x SKU and per community x SKU feature histories, and the recommender's
-- training data, read it.
{{ config(materialized='table', engine='MergeTree()', order_by='(oneid, order_date, order_id)', tags=['features']) }}

with orders as (
    select oneid, order_id, ordered_at, community_id, locker_id from {{ ref('int_customer_orders') }}
),

lines as (
    select order_id, line_number, sku, category, qty, line_amount_cny from {{ ref('stg_lastmile__order_lines') }}
),

skus as (
    select sku, is_impulse, is_healthy from {{ ref('stg_reference__skus') }}
),

final as (
    select
        orders.oneid as oneid,
        orders.order_id as order_id,
        lines.line_number as line_number,
        orders.ordered_at as ordered_at,
        {{ business_date('orders.ordered_at') }} as order_date,
        orders.community_id as community_id,
        orders.locker_id as locker_id,
        lines.sku as sku,
        lines.category as category,
        lines.qty as qty,
        lines.line_amount_cny as line_amount_cny,
        coalesce(skus.is_impulse, false) as is_impulse,
        coalesce(skus.is_healthy, false) as is_healthy
    from lines
    inner join orders on orders.order_id = lines.order_id
    left join skus on skus.sku = lines.sku
    settings join_use_nulls = 1
)

select * from final
