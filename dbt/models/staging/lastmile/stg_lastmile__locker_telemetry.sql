-- The bulk of the volume: kept as a view so only the weekly rollup ever scans it.
with source as (
    select * from {{ source('lastmile', 'raw_locker_telemetry') }} FINAL
),

renamed as (
    select
        event_id,
        occurred_at as read_at,
        locker_id,
        compartment_id,
        community_id,
        product_class,
        temperature_c,
        humidity_pct,
        door = 'open' as is_door_open,
        power as power_state,
        _ingested_at
    from source
)

select * from renamed
