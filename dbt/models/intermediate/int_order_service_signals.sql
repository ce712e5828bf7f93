{#- One row per order with every signal the service-temperature index aggregates: lines that
    are traceable, pickup in the chosen slot, review stars and complaints, claims and their
    cold-chain decisions, packaging brought back. Grain keys: community, leader, locker, week.

    Incremental (delete+insert on order_id): a build rewrites only the orders
      * int_orders_enriched rewrote since this table's watermark (its newest `_orders_ingested_at`,
        minus vars.lookback_minutes): int_orders_enriched rewrites an order whenever the order, a
        pickup, a claim or a review of it arrives, so that covers the reviews too;
      * int_order_line_rollup rewrote since the watermark of `_lines_ingested_at`;
      * whose cold-chain decision or attributed packaging returns differ from what this table
        holds: both inputs are small (one row per decision, per packaging return) and can change
        without any new event about the order (the cold-chain job decides later; a late order
        moves a packaging return's ASOF attribution), so they are compared whole.
    The pre-hook collects those orders into `<this>__scope` (macros/order_service_signals.sql).
    Orders never leave int_orders_enriched, so no row ever has to go. Rows that come out as held are
    not rewritten. Same rows as a full refresh. -#}
{{ config(
    materialized='incremental',
    unique_key='order_id',
    engine='MergeTree()',
    order_by='(community_id, order_week, order_id)',
    incremental_scope='order', scope_rules='order_service_scope_rules', test_slice_key='order_id',
) }}

{#- The orders an incremental build rewrites: a table the pre-hook fills (macros/order_service_signals.sql). -#}
{%- set in_scope = "order_id in (select order_id from " ~ scope_relation() ~ ")" %}
{%- set scoped = "where " ~ in_scope if is_incremental() else "" %}

with

small_signals as (
    -- cold-chain decisions and attributed packaging returns (macros/order_service_signals.sql)
    {{ order_small_signals() }}
),

orders as (
    select * from {{ ref('int_orders_enriched') }}
    {{ scoped }}
),

lines as (
    select order_id, lines, traceable_lines, _ingested_at from {{ ref('int_order_line_rollup') }}
    {{ scoped }}
),

reviews as (
    select order_id, argMin(stars, reviewed_at) as stars, argMin(is_negative, reviewed_at) as is_negative
    from {{ ref('int_reviews_enriched') }}
    {{ scoped }}
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
        small_signals.has_claim_decision as has_claim_decision,
        small_signals.is_claim_resolved as is_claim_resolved,
        small_signals.packaging_returns as packaging_returns,
        orders._source_ingested_at as _orders_ingested_at,
        lines._ingested_at as _lines_ingested_at
    from orders
    left join lines on lines.order_id = orders.order_id
    left join reviews on reviews.order_id = orders.order_id
    left join small_signals on small_signals.order_id = orders.order_id
)

select * from final
{{ only_changed_rows('order_id', 'cityHash64(toString(tuple(*)))', within=in_scope) }}
