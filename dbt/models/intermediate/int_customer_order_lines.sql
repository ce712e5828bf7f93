-- Order lines with the buyer's current OneID and the catalogue flags: the input of
-- spending_health (read several times there, hence a table).
{{ config(materialized='table', engine='MergeTree()', order_by='(oneid, ordered_at, order_line_id)') }}

with lines as (
    select * from {{ ref('fct_order_lines') }}
),

orders as (
    select order_id, oneid from {{ ref('int_customer_orders') }}
),

final as (
    select
        orders.oneid as oneid,
        lines.order_line_id as order_line_id,
        lines.order_id as order_id,
        lines.ordered_at as ordered_at,
        lines.category as category,
        toFloat64(lines.line_amount_cny) as line_amount_cny,
        lines.is_impulse as is_impulse,
        lines.is_healthy as is_healthy
    from lines
    inner join orders on orders.order_id = lines.order_id
)

select * from final
