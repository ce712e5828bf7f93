-- Stock movements of the front warehouses (receipts, write-offs, stock counts), one row per event.
with source as (
    select * from {{ source('lastmile', 'raw_inventory') }} FINAL
),

renamed as (
    select
        event_id,
        warehouse_id,
        community_id,
        sku,
        movement,
        qty,
        occurred_at as moved_at,
        batch_id,
        best_before,
        unit_cost as unit_cost_cny,
        reason as write_off_reason,
        merchant_id,
        source as inventory_source,
        _ingested_at
    from source
)

select * from renamed
