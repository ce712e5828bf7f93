{#- Everything that moved or observed a front warehouse's stock of one SKU, as one stream per
    community and SKU: receipts, write-offs and stock counts (stg_lastmile__inventory) and the
    units order lines took (int_order_lines_enriched: a sale leaves the shelf when the order is
    placed). A write-off is valued at the unit cost of the receipt of its batch.

    `step` orders the events of one instant the way the shelf sees them: receipts first, then
    sales and write-offs, then counts (a count sees what the moment left, so a sold-out count
    written at the instant of the last sale reads 0 after that sale). -#}

with movements as (
    select * from {{ ref('stg_lastmile__inventory') }}
),

receipt_costs as (
    select community_id, sku, batch_id, any(unit_cost_cny) as batch_unit_cost_cny
    from movements
    where movement = 'receipt' and unit_cost_cny is not null
    group by community_id, sku, batch_id
),

inventory as (
    select
        movements.community_id as community_id,
        movements.sku as sku,
        cast(movements.warehouse_id as Nullable(String)) as warehouse_id,
        movements.event_id as event_key,
        movements.movement as kind,
        movements.moved_at as at,
        toUInt8(multiIf(movements.movement = 'receipt', 0, movements.movement = 'write_off', 1, 2)) as step,
        if(movements.movement = 'receipt', movements.qty, 0) as received,
        if(movements.movement = 'write_off', movements.qty, 0) as written_off,
        toDecimal64(if(movements.movement = 'write_off',
                       coalesce(movements.qty * receipt_costs.batch_unit_cost_cny, 0), 0), 2) as written_off_cny,
        toInt64(0) as sold,
        if(movements.movement = 'stock_count', movements.qty, cast(null as Nullable(Int64))) as counted,
        movements._ingested_at as _ingested_at
    from movements
    left join receipt_costs
        on receipt_costs.community_id = movements.community_id
       and receipt_costs.sku = movements.sku
       and receipt_costs.batch_id = movements.batch_id
),

sales as (
    select
        community_id,
        sku,
        cast(null as Nullable(String)) as warehouse_id,
        order_line_id as event_key,
        'sale' as kind,
        ordered_at as at,
        toUInt8(1) as step,
        toInt64(0) as received,
        toInt64(0) as written_off,
        toDecimal64(0, 2) as written_off_cny,
        toInt64(qty) as sold,
        cast(null as Nullable(Int64)) as counted,
        _ingested_at
    from {{ ref('int_order_lines_enriched') }}
)

select * from inventory
union all
select * from sales
