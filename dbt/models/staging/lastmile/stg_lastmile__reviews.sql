with source as (
    select * from {{ source('lastmile', 'raw_review') }} FINAL
),

renamed as (
    select
        event_id,
        order_id,
        occurred_at as reviewed_at,
        stars,
        text as review_text,
        tags,
        source as review_source,
        _ingested_at
    from source
)

select * from renamed
