with source as (
    select * from {{ source('lastmile', 'raw_pickup') }} FINAL
),

renamed as (
    select
        event_id,
        order_id,
        occurred_at as picked_up_at,
        locker_id,
        compartment_id,
        code_verified as is_code_verified,
        collector_role,
        source as pickup_source,
        _ingested_at
    from source
)

select * from renamed
