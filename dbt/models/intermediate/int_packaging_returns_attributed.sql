-- Each packaging return attributed to the order its packaging most likely came with: the
-- same person's latest order collected before the return (ASOF join). That order's leader,
-- locker and week then get the credit in the service-temperature index.
-- A table (small: one row per packaging return): as a view, the ASOF join over every collected
-- order ran twice per build, in int_order_service_signals and again in its unique test.
{{ config(materialized='table', engine='MergeTree()', order_by='event_id') }}

with packaging as (
    select event_id, oneid, returned_at, packaging_pieces, community_id
    from {{ ref('int_customer_returns') }}
    where return_kind = 'packaging'
),

collected as (
    select oneid, order_id, assumeNotNull(first_picked_up_at) as picked_up_at
    from {{ ref('int_customer_orders') }}
    where is_collected
),

final as (
    select
        packaging.event_id as event_id,
        packaging.oneid as oneid,
        packaging.returned_at as returned_at,
        packaging.packaging_pieces as packaging_pieces,
        nullIf(collected.order_id, '') as order_id
    from packaging
    asof left join collected
        on packaging.oneid = collected.oneid and packaging.returned_at >= collected.picked_up_at
)

select * from final
