-- One row per locker compartment (unnested from the lockers file).
with source as (
    select * from {{ source('reference', 'ref_lockers') }}
),

unnested as (
    select
        compartment.compartment_id as compartment_id,
        locker_id,
        community_id,
        compartment.product_class as product_class
    from source
    array join compartments as compartment
)

select * from unnested
