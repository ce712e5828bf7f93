{#- One row per community, SKU and business day with any row in fct_stock_hourly: the day's units
    sold, received and written off (units and CNY), the units on hand at the end of its last
    hour with a figure, and how many of its hours were censored by a stock-out. The daily
    definitions are the hourly ones added up: one definition of each number.

    Incremental (delete+insert on the series, incremental_scope='series', macros/stock_scope.sql):
    a build rebuilds the series fct_stock_hourly rewrote since this table was last built. -#}
{{ config(
    materialized='incremental',
    unique_key='community_id, sku',
    order_by='(community_id, sku, date)',
    partition_by='toYYYYMM(date)',
    incremental_scope='series', scope_rules='stock_daily_scope_rules',
) }}

with hourly as (
    select * from {{ ref('fct_stock_hourly') }}
    {%- if is_incremental() %}
    where (community_id, sku) in (select community_id, sku from {{ scope_relation() }})
    {%- endif %}
),

final as (
    select
        community_id,
        any(warehouse_id) as warehouse_id,
        sku,
        {{ business_date('hour') }} as date,
        sum(units_sold) as units_sold,
        sum(received) as received,
        sum(written_off) as written_off,
        toDecimal64(sum(written_off_cny), 2) as written_off_cny,
        argMaxIf(on_hand_end, hour, on_hand_end is not null) as on_hand_end,
        toUInt32(countIf(censored)) as censored_hours,
        toBool(countIf(censored) > 0) as had_stock_out,
        max(_ingested_at) as _ingested_at,
        now64(3) as _built_at
    from hourly
    group by community_id, sku, date
)

select * from final
