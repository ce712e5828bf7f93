{#- Every row of raw_inventory as ingested, re-sent copies included (no FINAL): where the stock
    facts find the community and SKU series with movements ingested after their watermark (see
    stg_lastmile__order_versions). -#}
with source as (
    select event_id, community_id, sku, _ingested_at from {{ source('lastmile', 'raw_inventory') }}
)

select * from source
