{#- Per person and business month, the conduct the neighbour credit score rewards or penalises.

    Incremental by person: a build recomputes every month of the people in its scope
    (macros/customer_scope.sql: rewritten orders, changed OneIDs, new or re-resolved returns
    and reviews, claims with a cold-chain decision; everyone when the observation date moved).
    The delete+insert key is the person, so all their old months go and the new ones come in;
    a person left with no activity is written as one placeholder month (1970-01-01) that the
    post-hook deletes. Same rows as a full refresh but `_built_at`. -#}
-- depends_on: {{ ref('stg_identity__event_oneid') }}
{{ config(
    materialized='incremental',
    unique_key='oneid',
    engine='MergeTree()',
    order_by='(oneid, activity_month)',
    incremental_scope='person', scope_rules='monthly_activity_scope_rules', placeholders="activity_month = '1970-01-01'",
) }}

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
    {{ customer_scope_filter() }}
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
    {{ customer_scope_filter('r.oneid') }}
    group by oneid, activity_month
),

reviews as (
    select
        oneids.oneid as oneid,
        {{ business_month('reviews.reviewed_at') }} as activity_month,
        count() as reviews_written,
        countIf(length(coalesce(reviews.review_text, '')) > 0) as reviews_with_text
    from {{ ref('int_reviews_enriched') }} as reviews
    inner join (
        select event_id, oneid from {{ ref('stg_identity__event_oneid') }}
        where event_type = 'review'
        {%- if is_incremental() %} and oneid in (select oneid from {{ scope_relation() }}){% endif %}
    ) as oneids on oneids.event_id = reviews.event_id
    group by oneid, activity_month
),

activity as (
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
),

people as (
    -- a person of the scope without any activity left comes out as one row of the default
    -- month, 1970-01-01: the placeholder
    {{ customer_scope_people('activity') }}
),

final as (
    select
        *,
        (select as_of_date from observation) as _as_of_date,
        now64(3) as _built_at
    from people
)

select * from final
