with source as (
    select * from {{ source('reference', 'ref_leaders') }}
),

renamed as (
    select
        leader_id,
        community_id,
        building_id,
        retired_teacher as is_retired_teacher,
        neighbours
    from source
)

select * from renamed
