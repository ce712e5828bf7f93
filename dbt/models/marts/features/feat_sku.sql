-- Feast view sku_catalog: catalogue attributes per SKU (master data, valid from 2000-01-01).
{{ config(order_by='sku') }}

with skus as (
    select * from {{ ref('stg_reference__skus') }}
),

final as (
    select
        sku,
        toDateTime64('2000-01-01 00:00:00', 3, 'UTC') as event_timestamp,
        category as sku_category,
        product_class as sku_product_class,
        toFloat64(list_price_cny) as sku_unit_price,
        is_impulse as sku_is_impulse,
        is_healthy as sku_is_healthy
    from skus
)

select * from final
