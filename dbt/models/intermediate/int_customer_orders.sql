-- Orders with the *current* OneID of their buyer. fct_orders keeps the OneID as of the
-- build that last wrote the row; OneIDs merge and split as evidence arrives, so every
-- customer mart re-joins the current assignment here instead.
-- A table: half a dozen customer models read it, and a view would redo the join each time.
{{ config(materialized='table', engine='MergeTree()', order_by='(oneid, ordered_at, order_id)') }}

with orders as (
    select * from {{ ref('fct_orders') }}
),

oneids as (
    select event_id, oneid from {{ ref('stg_identity__event_oneid') }} where event_type = 'order'
),

final as (
    select
        oneids.oneid as oneid,
        orders.* except (oneid)
    from orders
    inner join oneids on oneids.event_id = orders.event_id
)

select * from final
