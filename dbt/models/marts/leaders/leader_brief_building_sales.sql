-- What sells in each building, per business day and SKU: the orders placed for the building
-- (fct_orders.building_id), over the var('leader_sales_days') business days up to the
-- observation date (the newest order's day). The leader's brief sums the days of its week;
-- BI can rank any window. Aggregates only: no person is named.
{{ config(order_by='(building_id, sales_date, sku)') }}

with observation as (
    -- the first instant of the window, so the facts' ordered_at index and monthly partitions prune the scan
    select toDateTime(as_of_date - {{ var('leader_sales_days') - 1 }}, '{{ var("business_tz") }}') as window_start
    from {{ ref('int_observation_window') }}
),

orders as (
    select order_id, building_id, community_id, leader_id
    from {{ ref('fct_orders') }}
    where building_id is not null and ordered_at >= (select window_start from observation)
),

lines as (
    select order_id, {{ business_date('ordered_at') }} as sales_date, sku, category, qty, line_amount_cny
    from {{ ref('fct_order_lines') }}
    where ordered_at >= (select window_start from observation)
),

buildings as (
    select building_id, leader_id from {{ ref('stg_reference__buildings') }}
),

skus as (
    select sku, sku_name, sku_name_en from {{ ref('stg_reference__skus') }}
),

daily as (
    select
        orders.building_id as building_id,
        any(orders.community_id) as community_id,
        lines.sales_date as sales_date,
        lines.sku as sku,
        any(lines.category) as category,
        uniqExact(lines.order_id) as orders,
        sum(lines.qty) as units,
        sum(lines.line_amount_cny) as amount_cny
    from lines
    inner join orders on orders.order_id = lines.order_id
    group by building_id, sales_date, sku
),

final as (
    select
        daily.building_id as building_id,
        buildings.leader_id as leader_id,
        daily.community_id as community_id,
        daily.sales_date as sales_date,
        daily.sku as sku,
        skus.sku_name as sku_name,
        skus.sku_name_en as sku_name_en,
        daily.category as category,
        daily.orders as orders,
        daily.units as units,
        daily.amount_cny as amount_cny
    from daily
    left join buildings on buildings.building_id = daily.building_id
    left join skus on skus.sku = daily.sku
)

select * from final
