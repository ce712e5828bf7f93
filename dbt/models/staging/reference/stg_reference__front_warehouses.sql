with source as (
    select * from {{ source('reference', 'ref_front_warehouses') }}
),

renamed as (
    select
        warehouse_id,
        community_id,
        lat,
        lon
    from source
)

select * from renamed
