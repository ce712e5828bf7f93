{{ config(tags=['features']) }}
-- Optional source: empty until `lastmile stocking plan` has written stocking_plan. Tagged
-- `features`: rebuilt by the feature build, which runs after the plan is made.
-- FINAL: the newest plan of each warehouse x SKU x delivery.
with source as (
    select * from {{ optional_source('stocking', 'stocking_plan', {
        'warehouse_id': 'String', 'community_id': 'String', 'sku': 'String', 'delivery_at': "DateTime('UTC')",
        'order_qty': 'UInt32', 'on_hand': 'UInt32', 'expiring_before_delivery': 'UInt32', 'expiring_unsold': 'UInt32',
        'pooled_qty': 'UInt32', 'made_at': "DateTime64(3, 'UTC')"}, final=true) }}
),

renamed as (
    select
        assumeNotNull(community_id) as community_id,
        assumeNotNull(warehouse_id) as warehouse_id,
        assumeNotNull(sku) as sku,
        toDateTime(assumeNotNull(delivery_at), 'UTC') as delivery_at,
        toInt64(assumeNotNull(order_qty)) as order_qty,
        toInt64(assumeNotNull(on_hand)) as on_hand,
        toInt64(assumeNotNull(expiring_before_delivery)) as expiring_before_delivery,
        toInt64(assumeNotNull(expiring_before_delivery)) + toInt64(assumeNotNull(expiring_unsold)) as expiring_units,
        toInt64(assumeNotNull(pooled_qty)) as pooled_qty,
        assumeNotNull(made_at) as plan_made_at
    from source
)

select * from renamed
