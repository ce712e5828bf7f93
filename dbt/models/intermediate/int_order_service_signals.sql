-- One row per order with every signal the service-temperature index aggregates: lines that
-- are traceable, pickup in the chosen slot, review stars and complaints, claims and their
-- cold-chain decisions, packaging brought back. Grain keys: community, leader, locker, week.
{{ config(materialized='table', engine='MergeTree()', order_by='(community_id, order_week, order_id)') }}

with orders as (
    select * from {{ ref('fct_orders') }}
),

lines as (
    select order_id, lines, traceable_lines from {{ ref('int_order_line_rollup') }}
),

reviews as (
    select order_id, argMin(stars, reviewed_at) as stars, argMin(is_negative, reviewed_at) as is_negative
    from {{ ref('fct_reviews') }}
    group by order_id
),

decisions as (
    select order_id, any(decision) as decision
    from {{ ref('stg_coldchain__claim_decisions') }}
    group by order_id
),

packaging as (
    select order_id, count() as packaging_returns
    from {{ ref('int_packaging_returns_attributed') }}
    where order_id is not null
    group by order_id
),

final as (
    select
        orders.order_id as order_id,
        orders.order_week as order_week,
        orders.community_id as community_id,
        orders.leader_id as leader_id,
        orders.locker_id as locker_id,
        orders.compartment_id as compartment_id,
        orders.product_class in ('chilled', 'frozen') as is_cold,
        orders.is_collected as is_collected,
        orders.is_picked_up_in_slot as is_picked_up_in_slot,
        lines.lines as lines,
        lines.traceable_lines as traceable_lines,
        reviews.order_id != '' as is_reviewed,
        if(reviews.order_id = '', NULL, reviews.stars) as review_stars,
        if(reviews.order_id = '', NULL, reviews.is_negative) as is_negative_review,
        orders.claim_count as claims,
        decisions.order_id != '' as has_claim_decision,
        decisions.decision in ('auto_approved', 'matched_customer_claim') as is_claim_resolved,
        packaging.packaging_returns as packaging_returns
    from orders
    left join lines on lines.order_id = orders.order_id
    left join reviews on reviews.order_id = orders.order_id
    left join decisions on decisions.order_id = orders.order_id
    left join packaging on packaging.order_id = orders.order_id
)

select * from final
