{#- Every telemetry reading as ingested, re-sent versions included (no FINAL): the weekly
    compliance rollup takes the readings ingested since its previous build from here and keeps
    the newest version of each itself (macros/telemetry_batch.sql), instead of merging every
    part of the biggest raw table. -#}
with source as (
    select * from {{ source('lastmile', 'raw_locker_telemetry') }}
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
        _ingested_at
    from source
)

select * from renamed
