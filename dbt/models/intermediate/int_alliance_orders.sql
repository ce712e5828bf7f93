-- Orders seen from the local merchant alliance of their community: is the fulfilling
-- merchant in that alliance, how fresh was the stock (batch date to slot), how long until
-- the goods were collected.
-- A view: int_customer_orders already holds every column, and the joins are to two small
-- reference tables. alliance_health_index reads it four times, which costs ~0.15 s more than
-- reading a table; writing the 1M-row table cost ~1 s on every build.
{{ config(materialized='view') }}

with orders as (
    select * from {{ ref('int_customer_orders') }}
),

communities as (
    select community_id, alliance_id from {{ ref('stg_reference__communities') }}
),

merchants as (
    select merchant_id, alliance_id from {{ ref('stg_reference__merchants') }}
),

final as (
    select
        orders.order_id as order_id,
        orders.oneid as oneid,
        orders.order_week as order_week,
        orders.community_id as community_id,
        assumeNotNull(communities.alliance_id) as alliance_id,
        orders.merchant_id as merchant_id,
        merchants.alliance_id = communities.alliance_id as is_in_alliance,
        orders.total_amount_cny as total_amount_cny,
        orders.hours_to_pickup as hours_to_pickup,
        orders.batch_life_used as batch_life_used
    from orders
    inner join communities on communities.community_id = orders.community_id
    left join merchants on merchants.merchant_id = orders.merchant_id
    where communities.alliance_id is not null
)

select * from final
