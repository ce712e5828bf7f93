with source as (
    select * from {{ source('reference', 'ref_skus') }}
),

renamed as (
    select
        sku,
        name as sku_name,
        name_en as sku_name_en,
        category,
        origin as catalogue_origin,
        unit_price as list_price_cny,
        product_class,
        is_impulse,
        is_healthy,
        shelf_life_days,
        unit_cost as unit_cost_cny,
        available_from,
        available_until,
        launched_on
    from source
)

select * from renamed
