{#- Every row of raw_pickup as ingested, re-sent copies included (no FINAL): what the incremental
    models look up to find the pickups ingested after their watermark (see
    stg_lastmile__order_versions). -#}
with source as (
    select event_id, order_id, _ingested_at from {{ source('lastmile', 'raw_pickup') }}
)

select * from source
