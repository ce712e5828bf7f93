with source as (
    select * from {{ source('reference', 'ref_communities') }}
),

renamed as (
    select
        community_id,
        name as community_name,
        city,
        district,
        alliance_id,
        building_count,
        locker_count
    from source
)

select * from renamed
