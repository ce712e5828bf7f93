with source as (
    select * from {{ source('reference', 'ref_community_distances') }}
),

renamed as (
    select
        community_id,
        neighbour_id,
        km as distance_km
    from source
)

select * from renamed
