-- Spending health per person: impulse share, late-night share, spend velocity against the
-- person's own baseline, category balance, and recommendation acceptance (NULL until the
-- recommender writes recommendation_events). See docs/indices.md.
{#- Incremental (delete+insert on oneid): a build recomputes only the people in its scope
    (macros/customer_scope.sql): whose orders int_customer_orders rewrote, whose OneID changed,
    whose recommendation acceptance changed; everyone when the observation date or the
    catalogue changed. People in the scope without orders any more are written as
    placeholders (orders = 0) and deleted by the post-hook. Same rows as a full refresh but
    `_built_at`. -#}
-- depends_on: {{ ref('stg_identity__event_oneid') }}
{{ config(
    materialized='incremental',
    unique_key='oneid',
    engine='MergeTree()',
    order_by='oneid',
    incremental_scope='person', scope_rules='spending_health_scope_rules', placeholders='orders = 0',
) }}

{%- set w = var('spending_weights') %}

with observation as (
    select * from {{ ref('int_observation_window') }}
),

orders as (
    -- Per order of a known person, with lines: spend from its lines, in total, on impulse and
    -- healthy SKUs, and per category (int_customer_orders carries int_order_line_rollup).
    select
        oneid,
        order_id,
        ordered_at,
        toFloat64(line_amount_cny) as amount,
        toFloat64(impulse_amount_cny) as impulse_amount,
        toFloat64(healthy_amount_cny) as healthy_amount,
        categories,
        category_amounts_cny
    from {{ ref('int_customer_orders') }}
    where lines > 0
    {%- if is_incremental() %} and oneid in (select oneid from {{ scope_relation() }}){% endif %}
),

catalogue as (
    select uniqExact(category) as catalogue_categories from {{ ref('stg_reference__skus') }}
),

per_person as (
    -- One pass over the orders (a CTE named twice would be computed twice).
    select
        oneid,
        count() as orders,
        sum(amount) as spend_cny,
        sum(impulse_amount) / nullIf(sum(amount), 0) as impulse_share,
        sum(healthy_amount) / nullIf(sum(amount), 0) as healthy_share,
        countIf({{ is_late_night('ordered_at') }}) / count() as late_night_share,
        -- Velocity: average weekly spend of the last 4 weeks over the average weekly spend of
        -- the weeks before (the person's own baseline); NULL without 2 baseline weeks. Summed in
        -- whole fen: a float sum depends on the order rows arrive in, and a weekly average that
        -- ends in half a fen would round either way between an incremental and a full build.
        sumIf(toInt64(round(amount * 100)), toDate(ordered_at, '{{ var("business_tz") }}') > (select as_of_date from observation) - 28) / 400 as recent_weekly_spend_cny,
        sumIf(toInt64(round(amount * 100)), toDate(ordered_at, '{{ var("business_tz") }}') <= (select as_of_date from observation) - 28) / 100
            / nullIf(dateDiff('day', toDate(min(ordered_at), '{{ var("business_tz") }}'), (select as_of_date from observation) - 28) / 7, 0) as baseline_weekly_spend_cny,
        dateDiff('day', toDate(min(ordered_at), '{{ var("business_tz") }}'), (select as_of_date from observation) - 28) >= 14 as has_baseline,
        -- Spend per category over all the person's orders (exact decimal sums), positive ones only.
        arrayFilter(x -> x > 0, arrayMap(x -> toFloat64(x), sumMap(categories, category_amounts_cny).2)) as category_spend
    from orders
    group by oneid
),

recommendations as (
    select oneid, count() as shown, countIf(is_accepted) as accepted
    from {{ ref('stg_recommender__recommendation_events') }}
    {{ customer_scope_filter() }}
    group by oneid
),

people as (
    -- placeholders (orders = 0) for people of the scope without orders any more
    {{ customer_scope_people('per_person') }}
),

scored as (
    select
        people.oneid as oneid,
        people.orders as orders,
        round(people.spend_cny, 2) as spend_cny,
        round(people.impulse_share, 4) as impulse_share,
        round(people.healthy_share, 4) as healthy_share,
        round(people.late_night_share, 4) as late_night_share,
        round(people.recent_weekly_spend_cny, 2) as recent_weekly_spend_cny,
        if(people.has_baseline, round(people.baseline_weekly_spend_cny, 2), NULL) as baseline_weekly_spend_cny,
        if(people.has_baseline and people.baseline_weekly_spend_cny > 0,
           round(people.recent_weekly_spend_cny / people.baseline_weekly_spend_cny, 4), NULL) as spend_velocity,
        -- Normalised Shannon entropy of spend over categories: 1 = spread evenly over the whole
        -- catalogue's categories, 0 = everything in one category.
        round(abs(arraySum(x -> (x / arraySum(people.category_spend)) * log(x / arraySum(people.category_spend)), people.category_spend))
              / log((select catalogue_categories from catalogue)), 4) as category_balance,
        if(recommendations.oneid = '', NULL, round(recommendations.accepted / recommendations.shown, 4)) as recommendation_acceptance
    from people
    left join recommendations on recommendations.oneid = people.oneid
),

final as (
    select
        *,
        {{ linear_score('impulse_share', 0.5, 0.1) }} as impulse_score,
        {{ linear_score('late_night_share', 0.5, 0.1) }} as late_night_score,
        {{ linear_score('spend_velocity', 3.0, 1.2) }} as velocity_score,
        round(100 * category_balance, 2) as balance_score,
        if(recommendation_acceptance is null, NULL, round(100 * recommendation_acceptance, 2)) as acceptance_score,
        {{ weighted_available({
            'impulse_score': w['impulse'], 'late_night_score': w['late_night'],
            'velocity_score': w['velocity'], 'balance_score': w['balance'],
            'acceptance_score': w['acceptance']}) }} as spending_health_score,
        (select as_of_date from observation) as as_of_date,
        (select catalogue_categories from catalogue) as _catalogue_categories,
        now64(3) as _built_at
    from scored
)

select * from final
