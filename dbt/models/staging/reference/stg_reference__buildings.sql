with source as (
    select * from {{ source('reference', 'ref_buildings') }}
),

renamed as (
    select
        building_id,
        community_id,
        name as building_name,
        leader_id,
        households,
        residents,
        home_locker_id,
        box_id
    from source
)

select * from renamed
