-- 服务温度指数: six 0-100 dimensions and their weighted total, weekly, per community,
-- group leader and locker. Formulas: docs/indices.md (doc block `service_temperature_index`).
{{ config(order_by='(grain, grain_id, week_start)') }}

{%- set w = var('sti_weights') %}

with signals as (
    select * from {{ ref('int_order_service_signals') }}
),

compliance as (
    select * from {{ ref('int_compartment_weekly_compliance') }}
),

order_grains as (
    select
        grain_key.1 as grain,
        grain_key.2 as grain_id,
        order_week as week_start,
        community_id,
        count() as orders,
        sum(lines) as lines,
        sum(traceable_lines) as traceable_lines,
        countIf(is_collected) as collected_orders,
        countIf(is_picked_up_in_slot) as in_slot_pickups,
        countIf(is_reviewed) as reviews,
        avgIf(review_stars, is_reviewed) as avg_stars,
        countIf(is_reviewed and is_negative_review) as negative_reviews,
        sum(claims) as claims,
        countIf(has_claim_decision) as claim_decisions,
        countIf(has_claim_decision and is_claim_resolved) as claims_resolved,
        countIf(is_cold and is_collected) as cold_collected_orders,
        sumIf(packaging_returns, is_cold) as packaging_returns
    from signals
    array join [('community', community_id), ('leader', leader_id), ('locker', locker_id)] as grain_key
    group by grain, grain_id, week_start, community_id
),

cold_by_place as (
    -- Communities and lockers: every reading of every cold compartment counts.
    select grain_key.1 as grain, grain_key.2 as grain_id, week_start,
           sum(readings_in_range) / sum(readings) as in_range_share
    from compliance
    array join [('community', community_id), ('locker', locker_id)] as grain_key
    group by grain, grain_id, week_start
),

cold_by_leader as (
    -- A leader is judged on the compartments their orders actually sat in, order-weighted.
    select 'leader' as grain, signals.leader_id as grain_id, signals.order_week as week_start,
           avg(compliance.in_range_share) as in_range_share
    from signals
    inner join compliance
        on compliance.compartment_id = signals.compartment_id and compliance.week_start = signals.order_week
    where signals.is_cold
    group by grain, grain_id, week_start
),

cold as (
    select * from cold_by_place
    union all
    select * from cold_by_leader
),

scored as (
    select
        order_grains.grain as grain,
        order_grains.grain_id as grain_id,
        order_grains.week_start as week_start,
        order_grains.community_id as community_id,
        order_grains.orders as orders,
        order_grains.reviews as reviews,
        order_grains.claims as claims,
        if(cold.grain = '', NULL, cold.in_range_share) as cold_in_range_share,
        if(order_grains.lines = 0, NULL, round(100 * order_grains.traceable_lines / order_grains.lines, 2)) as traceability_score,
        if(cold.grain = '', NULL, {{ linear_score('cold.in_range_share', 0.95, 1.0) }}) as cold_chain_score,
        if(order_grains.collected_orders = 0, NULL, round(100 * order_grains.in_slot_pickups / order_grains.collected_orders, 2)) as punctuality_score,
        if(order_grains.reviews = 0, NULL,
           round(0.7 * (order_grains.avg_stars - 1) / 4 * 100 + 0.3 * 100 * (1 - order_grains.negative_reviews / order_grains.reviews), 2)) as communication_score,
        if(order_grains.collected_orders = 0, NULL,
           if(order_grains.claim_decisions = 0,
              {{ linear_score('order_grains.claims / order_grains.collected_orders', 0.10, 0.0) }},
              round(0.5 * {{ linear_score('order_grains.claims / order_grains.collected_orders', 0.10, 0.0) }}
                    + 0.5 * 100 * order_grains.claims_resolved / order_grains.claim_decisions, 2))) as after_sales_score,
        if(order_grains.cold_collected_orders = 0, NULL,
           {{ linear_score('order_grains.packaging_returns / order_grains.cold_collected_orders', 0.0, 0.30) }}) as packaging_score
    from order_grains
    left join cold
        on cold.grain = order_grains.grain and cold.grain_id = order_grains.grain_id and cold.week_start = order_grains.week_start
),

final as (
    select
        *,
        {{ weighted_available({
            'traceability_score': w['traceability'], 'cold_chain_score': w['cold_chain'],
            'punctuality_score': w['punctuality'], 'communication_score': w['communication'],
            'after_sales_score': w['after_sales'], 'packaging_score': w['packaging']}) }} as service_temperature
    from scored
)

select * from final
