-- One row per order line: the order's items array unnested.
with source as (
    select * from {{ source('lastmile', 'raw_order') }} FINAL
),

unnested as (
    select
        concat(order_id, '#', toString(line_number)) as order_line_id,
        event_id,
        order_id,
        line_number,
        occurred_at as ordered_at,
        community_id,
        leader_id,
        merchant_id,
        locker_id,
        item.sku as sku,
        item.category as category,
        item.qty as qty,
        item.unit_price as unit_price_cny,
        toDecimal64(item.qty * item.unit_price, 2) as line_amount_cny,
        item.origin as origin,
        item.batch_id as batch_id,
        _ingested_at
    from source
    array join items as item, arrayEnumerate(items) as line_number
)

select * from unnested
