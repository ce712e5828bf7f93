-- One row per order. FINAL collapses re-sent copies of an event (same event_id).
with source as (
    select * from {{ source('lastmile', 'raw_order') }} FINAL
),

renamed as (
    select
        event_id,
        order_id,
        occurred_at as ordered_at,
        community_id,
        building_id,
        leader_id,
        merchant_id,
        locker_id,
        compartment_id,
        channel,
        source as order_source,
        total_amount as total_amount_cny,
        delivery_slot_start as slot_start_at,
        delivery_slot_end as slot_end_at,
        length(items) as line_count,
        arraySum(x -> x.qty, items) as units,
        _ingested_at
    from source
)

select * from renamed
