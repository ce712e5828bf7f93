-- Per person and business month, the conduct the neighbour credit score rewards or penalises.
{{ config(materialized='table', engine='MergeTree()', order_by='(oneid, activity_month)') }}

with observation as (
    select * from {{ ref('int_observation_window') }}
),

orders as (
    select
        oneid,
        {{ business_month('ordered_at') }} as activity_month,
        count() as orders,
        countIf(is_collected) as collected_orders,
        countIf(is_picked_up_on_time) as on_time_pickups,
        -- Never collected although the slot ended more than two days before the data ends:
        -- staff had to clear the compartment.
        countIf(not is_collected and toDate(slot_end_at, '{{ var("business_tz") }}') + 2 < (select as_of_date from observation)) as uncollected_orders,
        uniqExact(order_week) as active_weeks
    from {{ ref('int_customer_orders') }}
    group by oneid, activity_month
),

decisions as (
    select order_id, any(decision) as decision from {{ ref('stg_coldchain__claim_decisions') }} group by order_id
),

returns as (
    select
        r.oneid as oneid,
        {{ business_month('r.returned_at') }} as activity_month,
        countIf(r.return_kind = 'packaging') as packaging_returns,
        countIf(r.return_kind = 'claim') as claims,
        -- A claim the cold-chain job confirmed (approved or matched to an incident) is not abuse.
        countIf(r.return_kind = 'claim' and d.decision not in ('auto_approved', 'matched_customer_claim')) as unsubstantiated_claims
    from {{ ref('int_customer_returns') }} as r
    left join decisions as d on d.order_id = r.order_id
    group by oneid, activity_month
),

reviews as (
    select
        oneids.oneid as oneid,
        {{ business_month('reviews.reviewed_at') }} as activity_month,
        count() as reviews_written,
        countIf(length(coalesce(reviews.review_text, '')) > 0) as reviews_with_text
    from {{ ref('fct_reviews') }} as reviews
    inner join (select event_id, oneid from {{ ref('stg_identity__event_oneid') }} where event_type = 'review') as oneids
        on oneids.event_id = reviews.event_id
    group by oneid, activity_month
),

final as (
    -- Every (person, month) with any conduct: full joins on the key, so each rollup above is
    -- computed once (a CTE named twice is computed twice). A side without a row gives zeros.
    select
        oneid,
        activity_month,
        orders.orders as orders,
        orders.collected_orders as collected_orders,
        orders.on_time_pickups as on_time_pickups,
        orders.uncollected_orders as uncollected_orders,
        orders.active_weeks as active_weeks,
        returns.packaging_returns as packaging_returns,
        returns.claims as claims,
        returns.unsubstantiated_claims as unsubstantiated_claims,
        -- Claims beyond one a month or 15% of collected orders, whichever is more.
        toUInt64(greatest(0, toInt64(returns.unsubstantiated_claims) - toInt64(greatest(1, ceil(0.15 * orders.collected_orders))))) as excess_claims,
        reviews.reviews_written as reviews_written,
        reviews.reviews_with_text as reviews_with_text
    from orders
    full outer join returns using (oneid, activity_month)
    full outer join reviews using (oneid, activity_month)
)

select * from final
