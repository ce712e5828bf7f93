-- Claims and packaging returns share a contract; `return_kind` tells them apart.
with source as (
    select * from {{ source('lastmile', 'raw_return') }} FINAL
),

renamed as (
    select
        event_id,
        kind as return_kind,
        occurred_at as returned_at,
        order_id,
        reason as claim_reason,
        amount as claim_amount_cny,
        length(evidence) as evidence_count,
        box_id,
        community_id,
        arraySum(x -> x.qty, packaging_items) as packaging_pieces,
        source as return_source,
        _ingested_at
    from source
)

select * from renamed
