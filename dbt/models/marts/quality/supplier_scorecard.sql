{#- Per merchant and origin: what procurement and the operations board read about a supplier.
    Bad reviews and quality claims are counted as the batch-quality alerts count them
    (int_order_feedback); an order counts for every (merchant, origin) of its lines. -#}
{{ config(materialized='table', order_by='(merchant_id, origin)') }}

with lines as (
    select distinct order_id, merchant_id, origin, batch_id
    from {{ ref('int_order_lines_enriched') }}
    where merchant_id != ''
),

orders as (
    select order_id, is_collected, is_picked_up_in_slot
    from {{ ref('int_orders_enriched') }}
),

feedback as (
    select * from {{ ref('int_order_feedback') }}
),

batches as (
    select batch_id, is_alerted from {{ ref('fct_batch_quality') }}
),

per_order as (
    select distinct order_id, merchant_id, origin from lines
),

scored as (
    select
        per_order.merchant_id as merchant_id,
        per_order.origin as origin,
        count() as orders,
        toUInt64(sum(feedback.reviews)) as reviews,
        toUInt64(sum(feedback.bad_reviews)) as bad_reviews,
        toUInt64(sum(feedback.quality_claims)) as quality_claims,
        toUInt64(sum(feedback.temperature_claims)) as temperature_incidents,
        countIf(orders.is_collected) as collected_orders,
        countIf(orders.is_picked_up_in_slot) as in_slot_orders
    from per_order
    left join feedback on feedback.order_id = per_order.order_id
    left join orders on orders.order_id = per_order.order_id
    group by per_order.merchant_id, per_order.origin
),

alerted as (
    select lines.merchant_id as merchant_id, lines.origin as origin,
           uniqExact(lines.batch_id) as batches, uniqExactIf(lines.batch_id, batches.is_alerted) as alerted_batches
    from lines
    left join batches on batches.batch_id = lines.batch_id
    group by lines.merchant_id, lines.origin
),

final as (
    select
        scored.merchant_id as merchant_id,
        scored.origin as origin,
        scored.orders as orders,
        scored.reviews as reviews,
        scored.bad_reviews as bad_reviews,
        if(scored.reviews = 0, NULL, scored.bad_reviews / scored.reviews) as bad_review_rate,
        scored.quality_claims as quality_claims,
        scored.quality_claims / scored.orders as claim_rate,
        scored.temperature_incidents as temperature_incidents,
        if(scored.collected_orders = 0, NULL, scored.in_slot_orders / scored.collected_orders) as on_time_share,
        alerted.batches as batches,
        alerted.alerted_batches as alerted_batches
    from scored
    left join alerted on alerted.merchant_id = scored.merchant_id and alerted.origin = scored.origin
)

select * from final
