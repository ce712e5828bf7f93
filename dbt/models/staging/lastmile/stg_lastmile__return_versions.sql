{#- Every row of raw_return as ingested, re-sent copies included (no FINAL): what the incremental
    models look up to find the claims and packaging returns ingested after their watermark (see
    stg_lastmile__order_versions). -#}
with source as (
    select event_id, kind as return_kind, order_id, _ingested_at from {{ source('lastmile', 'raw_return') }}
)

select * from source
