-- Feast view customer_credit: the neighbor_credit_score snapshot, stamped at the close of the
-- observation end (dbt keeps no credit history, so training rows before it see the score as
-- missing: never a leak).
{{ config(order_by='(oneid, event_timestamp)') }}

with observation as (
    select * from {{ ref('int_observation_window') }}
),

credit as (
    select * from {{ ref('neighbor_credit_score') }}
),

final as (
    select
        oneid,
        {{ business_day_close('assumeNotNull((select as_of_date from observation))') }} as event_timestamp,
        toInt64(credit_score) as credit_score,
        credit_tier,
        toFloat64(community_rank_share) as credit_rank_share
    from credit
)

select * from final
