-- 联盟健康度: weekly, per alliance and community. Formulas: docs/indices.md
-- (doc block `alliance_health_index`).
{{ config(order_by='(alliance_id, community_id, week_start)') }}

{%- set w = var('ahi_weights') %}

with orders as (
    select * from {{ ref('int_alliance_orders') }}
),

weekly as (
    select
        alliance_id,
        community_id,
        order_week as week_start,
        count() as orders,
        sum(total_amount_cny) as gmv_cny,
        sumIf(total_amount_cny, is_in_alliance) as in_alliance_gmv_cny,
        uniqExact(oneid) as customers,
        -- NULL, not NaN, when no order of the week carries the measure (an empty avgIf is NaN,
        -- which linear_score would pass through as a score).
        if(countIf(hours_to_pickup is not null) = 0, NULL,
           quantileExactIf(0.5)(hours_to_pickup, hours_to_pickup is not null)) as median_hours_to_pickup,
        if(countIf(batch_life_used is not null) = 0, NULL, avgIf(batch_life_used, batch_life_used is not null)) as avg_batch_life_used
    from orders
    group by alliance_id, community_id, week_start
),

cross_selling as (
    -- Customers who bought from at least two different alliance merchants that week.
    select alliance_id, community_id, week_start, countIf(merchants >= 2) / count() as cross_selling_rate
    from (
        select alliance_id, community_id, order_week as week_start, oneid, uniqExact(merchant_id) as merchants
        from orders
        where is_in_alliance
        group by alliance_id, community_id, week_start, oneid
    )
    group by alliance_id, community_id, week_start
),

merchant_weeks as (
    -- One row per alliance merchant and week with sales: its GMV, the alliance GMV of that
    -- community-week, and whether the merchant sells again the week after. Concentration and
    -- retention both read it; it is one pass over the orders (window functions instead of the
    -- self-joins, which ran this rollup four times: ClickHouse recomputes a CTE per reference).
    select
        alliance_id,
        community_id,
        week_start,
        merchant_id,
        gmv_cny,
        sum(gmv_cny) over (partition by alliance_id, community_id, week_start) as week_gmv_cny,
        has(groupArray(week_start) over (partition by alliance_id, community_id, merchant_id), week_start + 7) as sells_next_week
    from (
        select alliance_id, community_id, order_week as week_start, merchant_id, sum(total_amount_cny) as gmv_cny
        from orders
        where is_in_alliance
        group by alliance_id, community_id, week_start, merchant_id
    )
),

merchant_scores as (
    -- Per community-week: the Herfindahl-Hirschman index of the alliance merchants' GMV
    -- shares (0..10000, weeks with alliance GMV), and of the merchants active the week
    -- before, the share still active (credited to the later week). Each merchant-week counts
    -- once for its own week and once for the week after, so both come out of one pass.
    select
        alliance_id,
        community_id,
        scored_week as week_start,
        if(countIf(is_own and week_gmv_cny > 0) = 0, NULL,
           round(10000 * sumIf(pow(toFloat64(gmv_cny) / toFloat64(week_gmv_cny), 2), is_own and week_gmv_cny > 0), 1)) as merchant_hhi,
        countIf(is_own and week_gmv_cny > 0) as active_merchants,
        if(countIf(not is_own) = 0, NULL, countIf(not is_own and sells_next_week) / countIf(not is_own)) as merchant_retention
    from (
        select *, role.1 as is_own, role.2 as scored_week
        from merchant_weeks
        array join [(true, week_start), (false, week_start + 7)] as role
    )
    group by alliance_id, community_id, scored_week
),

scored as (
    select
        weekly.alliance_id as alliance_id,
        weekly.community_id as community_id,
        weekly.week_start as week_start,
        weekly.orders as orders,
        weekly.gmv_cny as gmv_cny,
        weekly.customers as customers,
        toFloat64(weekly.in_alliance_gmv_cny) / nullIf(toFloat64(weekly.gmv_cny), 0) as in_alliance_share,
        if(cross_selling.alliance_id = '', NULL, cross_selling.cross_selling_rate) as cross_selling_rate,
        weekly.median_hours_to_pickup as median_hours_to_pickup,
        weekly.avg_batch_life_used as avg_batch_life_used,
        if(merchant_scores.alliance_id = '', NULL, merchant_scores.merchant_hhi) as merchant_hhi,
        merchant_scores.active_merchants as active_merchants,
        if(merchant_scores.alliance_id = '', NULL, merchant_scores.merchant_retention) as merchant_retention
    from weekly
    left join cross_selling using (alliance_id, community_id, week_start)
    left join merchant_scores using (alliance_id, community_id, week_start)
),

final as (
    select
        *,
        round(100 * in_alliance_share, 2) as in_alliance_score,
        {{ linear_score('cross_selling_rate', 0.0, 0.5) }} as cross_selling_score,
        {{ linear_score('median_hours_to_pickup', 48, 12) }} as response_score,
        {{ linear_score('avg_batch_life_used', 0.5, 0.0) }} as turnover_score,
        round(100 * (1 - merchant_hhi / 10000), 2) as concentration_score,
        round(100 * merchant_retention, 2) as retention_score,
        {{ weighted_available({
            'in_alliance_score': w['in_alliance_share'], 'cross_selling_score': w['cross_selling'],
            'response_score': w['response'], 'turnover_score': w['turnover'],
            'concentration_score': w['concentration'], 'retention_score': w['retention']}) }} as alliance_health
    from scored
)

select * from final
