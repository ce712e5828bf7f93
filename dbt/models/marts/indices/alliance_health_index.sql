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
        quantileExactIf(0.5)(hours_to_pickup, hours_to_pickup is not null) as median_hours_to_pickup,
        avgIf(batch_age_days, batch_age_days is not null) as avg_batch_age_days
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
    select alliance_id, community_id, order_week as week_start, merchant_id, sum(total_amount_cny) as gmv_cny
    from orders
    where is_in_alliance
    group by alliance_id, community_id, week_start, merchant_id
),

concentration as (
    -- Herfindahl-Hirschman index of the alliance merchants' GMV shares, 0..10000.
    select m.alliance_id as alliance_id, m.community_id as community_id, m.week_start as week_start,
           round(10000 * sum(pow(toFloat64(m.gmv_cny) / toFloat64(t.total), 2)), 1) as merchant_hhi,
           count() as active_merchants
    from merchant_weeks as m
    inner join (
        select alliance_id, community_id, week_start, sum(gmv_cny) as total
        from merchant_weeks group by alliance_id, community_id, week_start
    ) as t on t.alliance_id = m.alliance_id and t.community_id = m.community_id and t.week_start = m.week_start
    where t.total > 0
    group by alliance_id, community_id, week_start
),

retention as (
    -- Of the merchants active the week before, the share still active this week.
    select
        prev.alliance_id as alliance_id,
        prev.community_id as community_id,
        prev.week_start + 7 as week_start,
        countIf(cur.merchant_id != '') / count() as merchant_retention
    from merchant_weeks as prev
    left join merchant_weeks as cur
        on cur.alliance_id = prev.alliance_id and cur.community_id = prev.community_id
       and cur.merchant_id = prev.merchant_id and cur.week_start = prev.week_start + 7
    group by alliance_id, community_id, week_start
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
        weekly.avg_batch_age_days as avg_batch_age_days,
        if(concentration.alliance_id = '', NULL, concentration.merchant_hhi) as merchant_hhi,
        concentration.active_merchants as active_merchants,
        if(retention.alliance_id = '', NULL, retention.merchant_retention) as merchant_retention
    from weekly
    left join cross_selling using (alliance_id, community_id, week_start)
    left join concentration using (alliance_id, community_id, week_start)
    left join retention using (alliance_id, community_id, week_start)
),

final as (
    select
        *,
        round(100 * in_alliance_share, 2) as in_alliance_score,
        {{ linear_score('cross_selling_rate', 0.0, 0.5) }} as cross_selling_score,
        {{ linear_score('median_hours_to_pickup', 48, 12) }} as response_score,
        {{ linear_score('avg_batch_age_days', 7, 1) }} as turnover_score,
        round(100 * (1 - merchant_hhi / 10000), 2) as concentration_score,
        round(100 * merchant_retention, 2) as retention_score,
        {{ weighted_available({
            'in_alliance_score': w['in_alliance_share'], 'cross_selling_score': w['cross_selling'],
            'response_score': w['response'], 'turnover_score': w['turnover'],
            'concentration_score': w['concentration'], 'retention_score': w['retention']}) }} as alliance_health
    from scored
)

select * from final
