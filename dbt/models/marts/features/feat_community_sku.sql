-- Feast view community_bestsellers: units, orders, rank and share per community x SKU over
-- 7 and 28 days, with a trend; a dense community x SKU x day grid, stamped at each day's close.
{{ config(order_by='(community_id, sku, event_timestamp)') }}

with observation as (
    select * from {{ ref('int_observation_window') }}
),

lines as (
    select * from {{ ref('int_customer_order_lines') }}
),

daily as (
    select community_id, sku, order_date, sum(qty) as units, uniqExact(order_id) as orders
    from lines
    group by community_id, sku, order_date
),

grid as (
    select communities.community_id as community_id, skus.sku as sku, communities.order_date as order_date
    from (
        select community_id, toDate(arrayJoin(range(toUInt32(min(order_date)), toUInt32((select as_of_date from observation)) + 1))) as order_date
        from lines
        group by community_id
    ) as communities
    cross join (select distinct sku from lines) as skus
),

rolled as (
    select
        grid.community_id as community_id,
        grid.sku as sku,
        grid.order_date as order_date,
        sum(daily.units) over w28 as units_28,
        sum(daily.units) over w7 as units_7,
        sum(daily.orders) over w28 as orders_28
    from grid
    left join daily on daily.community_id = grid.community_id and daily.sku = grid.sku and daily.order_date = grid.order_date
    window
        w28 as (partition by grid.community_id, grid.sku order by grid.order_date rows between 27 preceding and current row),
        w7 as (partition by grid.community_id, grid.sku order by grid.order_date rows between 6 preceding and current row)
    settings join_use_nulls = 0
),

final as (
    select
        community_id,
        sku,
        {{ business_day_close('order_date') }} as event_timestamp,
        toInt64(units_28) as cb_units_28d,
        toInt64(units_7) as cb_units_7d,
        toInt64(orders_28) as cb_orders_28d,
        toInt64(rank() over (partition by community_id, order_date order by units_28 desc)) as cb_rank_28d,
        round(units_28 / greatest(sum(units_28) over (partition by community_id, order_date), 1), 5) as cb_share_28d,
        round((units_7 + 1) / (units_28 / 4 + 1), 4) as cb_trend
    from rolled
)

select * from final
