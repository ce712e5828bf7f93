with source as (
    select * from {{ source('reference', 'ref_merchants') }}
),

renamed as (
    select
        merchant_id,
        name as merchant_name,
        category_focus,
        alliance_id,
        alliance_id is not null as is_in_alliance
    from source
)

select * from renamed
