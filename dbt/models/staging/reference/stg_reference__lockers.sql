with source as (
    select * from {{ source('reference', 'ref_lockers') }}
),

renamed as (
    select
        locker_id,
        community_id,
        has_battery,
        length(compartments) as compartment_count
    from source
)

select * from renamed
