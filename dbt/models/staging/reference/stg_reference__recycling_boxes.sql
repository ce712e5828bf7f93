with source as (
    select * from {{ source('reference', 'ref_recycling_boxes') }}
),

renamed as (
    select
        box_id,
        community_id,
        location as box_location,
        accepts as accepted_packaging
    from source
)

select * from renamed
