{#- One row per community, SKU and local hour that had a sale, a stock movement or a stock-out:
    the units sold (order lines of orders placed in the hour), received and written off (units
    and CNY at the batch's unit cost), the units on hand at the end of the hour, and whether
    the SKU was sold out for at least part of the hour (`censored`: from the stock count of 0
    until the next receipt, int_stock_outs). A censored hour's sales are what stock allowed,
    not what was wanted: the demand forecast treats them as censored, never as low demand.

    On hand: the latest stock count plus what was received and minus what was sold and written
    off since it (never below 0: a sale the count did not see means the count was low); NULL
    before the series' first count. An hour without events inside a stock-out keeps the last
    figure.

    A stock-out with no receipt yet is censored up to the newest event of any series (the hour
    the data reaches).

    Incremental (delete+insert on the series, incremental_scope='series', macros/stock_scope.sql):
    a build rebuilds whole the community and SKU series with movements or order lines ingested
    since its watermark, and the series still sold out at its last hour. Same rows as a full
    refresh. -#}
{{ config(
    materialized='incremental',
    unique_key='community_id, sku',
    order_by='(community_id, sku, hour)',
    partition_by='toYYYYMM(hour)',
    incremental_scope='series', scope_rules='stock_hourly_scope_rules',
) }}

{%- set scoped = "where (community_id, sku) in (select community_id, sku from " ~ scope_relation() ~ ")" if is_incremental() else "" %}
-- depends_on: {{ ref('stg_lastmile__inventory_versions') }}, {{ ref('int_order_lines_enriched') }} (the scope, macros/stock_scope.sql)

with events as (
    select * from {{ ref('int_stock_events') }}
    {{ scoped }}
),

-- the data reaches this instant: the newest event of any series (not only the scope's)
observed as (
    select max(at) as observed_until from {{ ref('int_stock_events') }}
),

-- each count opens a segment; on hand after an event = the segment's count + what moved since
segmented as (
    select
        *,
        count(counted) over (partition by community_id, sku order by at, step, event_key
                             rows between unbounded preceding and current row) as segment,
        row_number() over (partition by community_id, sku order by at, step, event_key) as position
    from events
),

ledger as (
    select
        *,
        if(segment = 0, null,
           greatest(0, first_value(counted) over per_segment
                       + sum(received - sold - written_off) over per_segment)) as on_hand
    from segmented
    window per_segment as (partition by community_id, sku, segment order by position
                           rows between unbounded preceding and current row)
),

hourly_events as (
    select
        community_id,
        sku,
        {{ business_hour('at') }} as hour,
        sum(sold) as units_sold,
        sum(received) as received,
        sum(written_off) as written_off,
        sum(written_off_cny) as written_off_cny,
        argMax(on_hand, position) as on_hand_end,
        max(_ingested_at) as _ingested_at
    from ledger
    group by community_id, sku, hour
),

stock_outs as (
    select * from {{ ref('int_stock_outs') }}
    {{ scoped }}
),

-- every local hour a stock-out touched: [sold out, restocked), an open one through the last observed hour
censored_hours as (
    select
        community_id,
        sku,
        addHours(first_hour, arrayJoin(range(toUInt64(greatest(0, dateDiff('hour', first_hour, end_hour)))))) as hour
    from (
        select
            community_id,
            sku,
            {{ business_hour('sold_out_at') }} as first_hour,
            if(restocked_at is null,
               addHours({{ business_hour('(select observed_until from observed)') }}, 1),
               addHours({{ business_hour('restocked_at - interval 1 millisecond') }}, 1)) as end_hour
        from stock_outs
    )
),

hours as (
    select community_id, sku, hour, units_sold, received, written_off, written_off_cny, on_hand_end,
           false as censored, _ingested_at
    from hourly_events
    union all
    select community_id, sku, hour, 0, 0, 0, toDecimal64(0, 2), cast(null as Nullable(Int64)),
           true, cast(null as Nullable(DateTime64(3, 'UTC')))
    from censored_hours
),

per_hour as (
    select
        community_id,
        sku,
        hour,
        sum(units_sold) as units_sold,
        sum(received) as received,
        sum(written_off) as written_off,
        sum(written_off_cny) as written_off_cny,
        max(on_hand_end) as on_hand_end,
        max(censored) as censored
    from hours
    group by community_id, sku, hour
),

warehouses as (
    select community_id, any(warehouse_id) as front_warehouse_id
    from {{ ref('int_stock_events') }}
    where warehouse_id is not null
    group by community_id
),

series as (
    select community_id, sku, max(_ingested_at) as _ingested_at
    from events
    group by community_id, sku
),

final as (
    select
        per_hour.community_id as community_id,
        -- a community without any movement yet: its front warehouse by the naming rule fw-<community_id>
        if(coalesce(warehouses.front_warehouse_id, '') = '', concat('fw-', per_hour.community_id), assumeNotNull(warehouses.front_warehouse_id)) as warehouse_id,
        per_hour.sku as sku,
        per_hour.hour as hour,
        toInt64(per_hour.units_sold) as units_sold,
        toInt64(per_hour.received) as received,
        toInt64(per_hour.written_off) as written_off,
        toDecimal64(per_hour.written_off_cny, 2) as written_off_cny,
        -- an hour inside a stock-out without events keeps the series' last figure
        anyLast(per_hour.on_hand_end) over (partition by per_hour.community_id, per_hour.sku order by per_hour.hour
                                           rows between unbounded preceding and current row) as on_hand_end,
        per_hour.censored as censored,
        series._ingested_at as _ingested_at,
        now64(3) as _built_at
    from per_hour
    left join warehouses on warehouses.community_id = per_hour.community_id
    left join series on series.community_id = per_hour.community_id and series.sku = per_hour.sku
)

select * from final
