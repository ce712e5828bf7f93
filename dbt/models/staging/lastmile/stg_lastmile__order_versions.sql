{#- Every row of raw_order as ingested, re-sent copies included (no FINAL): the incremental
    models find the orders ingested after their watermark here. raw_order is a ReplacingMergeTree
    versioned by `_ingested_at`, so an event has a row newer than a watermark exactly when its
    deduplicated row is, and reading without FINAL costs a scan of two columns instead of a merge
    of every part. -#}
with source as (
    select event_id, order_id, _ingested_at from {{ source('lastmile', 'raw_order') }}
)

select * from source
