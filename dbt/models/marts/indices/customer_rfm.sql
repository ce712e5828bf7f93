-- Recency, frequency, monetary value and age per person, with the BTYD definitions of
-- lifetimes.utils.summary_data_from_transaction_data (freq='D'), so the numbers can be fed
-- to BG/NBD or Gamma-Gamma models and checked against that library. See docs/indices.md.
{#- Incremental (delete+insert on oneid): a build recomputes the people in its scope
    (macros/customer_scope.sql: rewritten orders, changed OneIDs), everyone when the
    observation date moved (T and the days since the last purchase count to it). People in
    the scope without orders any more are written as placeholders (purchase_days = 0) and
    deleted by the post-hook. Same rows as a full refresh but `_built_at`. -#}
-- depends_on: {{ ref('stg_identity__event_oneid') }}
{{ config(
    materialized='incremental',
    unique_key='oneid',
    engine='MergeTree()',
    order_by='oneid',
    incremental_scope='person', scope_rules='customer_rfm_scope_rules', placeholders='purchase_days = 0',
) }}

with observation as (
    select * from {{ ref('int_observation_window') }}
),

daily as (
    -- Transactions are bucketed into business days; several orders on one day are one period.
    select oneid, toDate(ordered_at, '{{ var("business_tz") }}') as purchase_date, sum(total_amount_cny) as day_amount_cny
    from {{ ref('int_customer_orders') }}
    {{ customer_scope_filter() }}
    group by oneid, purchase_date
),

per_customer as (
    select
        oneid,
        min(purchase_date) as first_purchase_date,
        max(purchase_date) as last_purchase_date,
        count() as purchase_days,
        sum(day_amount_cny) as total_spend_cny,
        -- Mean value of the repeat periods: the first purchase day is excluded.
        (toFloat64(sum(day_amount_cny)) - toFloat64(argMin(day_amount_cny, purchase_date))) / nullIf(count() - 1, 0) as repeat_mean_cny
    from daily
    group by oneid
),

people as (
    -- placeholders (purchase_days = 0) for people of the scope without orders any more
    {{ customer_scope_people('per_customer') }}
),

final as (
    select
        oneid,
        first_purchase_date,
        last_purchase_date,
        toUInt32(purchase_days - 1) as frequency,
        toUInt32(dateDiff('day', first_purchase_date, last_purchase_date)) as recency_days,
        toUInt32(dateDiff('day', first_purchase_date, (select as_of_date from observation))) as t_days,
        round(coalesce(repeat_mean_cny, 0), 4) as monetary_value_cny,
        toUInt32(dateDiff('day', last_purchase_date, (select as_of_date from observation))) as days_since_last_purchase,
        purchase_days,
        total_spend_cny,
        (select as_of_date from observation) as as_of_date,
        now64(3) as _built_at
    from people
)

select * from final
