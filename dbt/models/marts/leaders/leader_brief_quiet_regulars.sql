-- Regulars gone quiet, per building: the people a group leader can win back in person
-- ("Mrs Wang used to buy eggs and tofu every week and has not ordered for a month"),
-- rather than a cold push. Read from RFM (customer_rfm), as of its observation date:
--   regular  = at least var('leader_regular_min_purchase_days') purchase days;
--   interval = recency_days / frequency (the mean gap between purchase days, BTYD terms);
--   quiet    = days since the last purchase >= the larger of var('leader_quiet_min_days') and
--              var('leader_quiet_interval_factor') x their own interval, and at most
--              var('leader_quiet_max_days') (longer gone is lost, not quiet).
-- "What they used to buy": their var('leader_usual_skus') SKUs bought on the most orders
-- (ties: more units, then the SKU id). The building is the person's home building
-- (dim_customer), its leader the building's (reference data).
{{ config(order_by='(building_id, oneid)') }}

with rfm as (
    select * from {{ ref('customer_rfm') }}
),

customers as (
    select oneid, home_community_id, home_building_id from {{ ref('dim_customer') }}
),

buildings as (
    select building_id, leader_id from {{ ref('stg_reference__buildings') }}
),

quiet as (
    select
        rfm.oneid as oneid,
        customers.home_community_id as community_id,
        customers.home_building_id as building_id,
        rfm.purchase_days as purchase_days,
        round(rfm.recency_days / rfm.frequency, 1) as mean_interval_days,
        rfm.last_purchase_date as last_purchase_date,
        rfm.days_since_last_purchase as days_since_last_purchase,
        rfm.total_spend_cny as total_spend_cny,
        rfm.as_of_date as as_of_date
    from rfm
    inner join customers on customers.oneid = rfm.oneid
    where rfm.purchase_days >= {{ var('leader_regular_min_purchase_days') }}
      and rfm.frequency > 0
      and rfm.days_since_last_purchase <= {{ var('leader_quiet_max_days') }}
      and rfm.days_since_last_purchase >= greatest(
          {{ var('leader_quiet_min_days') }},
          ceil({{ var('leader_quiet_interval_factor') }} * rfm.recency_days / rfm.frequency))
),

bought as (
    select orders.oneid as oneid, lines.sku as sku, uniqExact(lines.order_id) as sku_orders, sum(lines.qty) as sku_units
    from {{ ref('fct_order_lines') }} as lines
    inner join (
        select order_id, assumeNotNull(oneid) as oneid from {{ ref('fct_orders') }}
        where oneid in (select oneid from quiet)
    ) as orders on orders.order_id = lines.order_id
    group by oneid, sku
),

skus as (
    select sku, sku_name from {{ ref('stg_reference__skus') }}
),

usual as (
    select
        bought.oneid as oneid,
        arraySlice(arraySort(t -> (-t.1, -t.2, t.3),
                             groupArray((bought.sku_orders, bought.sku_units, bought.sku, coalesce(skus.sku_name, '')))),
                   1, {{ var('leader_usual_skus') }}) as top
    from bought
    left join skus on skus.sku = bought.sku
    group by oneid
),

final as (
    select
        quiet.building_id as building_id,
        buildings.leader_id as leader_id,
        quiet.community_id as community_id,
        quiet.oneid as oneid,
        quiet.purchase_days as purchase_days,
        quiet.mean_interval_days as mean_interval_days,
        quiet.last_purchase_date as last_purchase_date,
        quiet.days_since_last_purchase as days_since_last_purchase,
        quiet.total_spend_cny as total_spend_cny,
        arrayMap(t -> t.3, usual.top) as usual_skus,
        arrayMap(t -> t.4, usual.top) as usual_sku_names,
        quiet.as_of_date as as_of_date
    from quiet
    left join buildings on buildings.building_id = quiet.building_id
    left join usual on usual.oneid = quiet.oneid
)

select * from final
