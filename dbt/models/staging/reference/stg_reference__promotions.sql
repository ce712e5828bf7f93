with source as (
    select * from {{ source('reference', 'ref_promotions') }}
),

renamed as (
    select
        promotion_id,
        kind as promotion_kind,
        sku,
        community_id,
        parseDateTime64BestEffort(starts_at, 3, 'UTC') as starts_at,
        parseDateTime64BestEffort(ends_at, 3, 'UTC') as ends_at,
        discount as discount_share
    from source
)

select * from renamed
