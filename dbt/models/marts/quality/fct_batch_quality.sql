{#- One row per production or harvest batch (order line batch_id): its orders, reviews, bad
    reviews and quality claims, counted as the batch-quality alerts count them
    (int_order_feedback, from batch_quality.yml), and its alert if it raised one. Counts here give
    every order's feedback to every batch of the order; the alert columns carry the alert's own
    blame-weighed counts at the event that tipped it. -#}
{{ config(materialized='table', order_by='(sku, batch_id)') }}

with lines as (
    select
        batch_id,
        order_id,
        any(sku) as sku,
        any(category) as category,
        any(origin) as origin,
        any(merchant_id) as merchant_id,
        min(ordered_at) as ordered_at
    from {{ ref('int_order_lines_enriched') }}
    where batch_id != ''
    group by batch_id, order_id
),

feedback as (
    select * from {{ ref('int_order_feedback') }}
),

alerts as (
    select * from {{ ref('stg_batches__alerts') }}
),

per_batch as (
    select
        lines.batch_id as batch_id,
        any(lines.sku) as sku,
        any(lines.category) as category,
        any(lines.origin) as origin,
        topK(1)(lines.merchant_id)[1] as merchant_id,
        min(lines.ordered_at) as first_ordered_at,
        count() as orders,
        toUInt64(sum(feedback.reviews)) as reviews,
        toUInt64(sum(feedback.bad_reviews)) as bad_reviews,
        toUInt64(sum(feedback.quality_claims)) as quality_claims,
        countIf(feedback.reviews > 0 or feedback.claims > 0) as orders_with_feedback,
        countIf(feedback.bad_reviews > 0 or feedback.quality_claims > 0) as bad_orders
    from lines
    left join feedback on feedback.order_id = lines.order_id
    group by lines.batch_id
),

final as (
    select
        per_batch.batch_id as batch_id,
        per_batch.sku as sku,
        per_batch.category as category,
        per_batch.origin as origin,
        per_batch.merchant_id as merchant_id,
        per_batch.first_ordered_at as first_ordered_at,
        per_batch.orders as orders,
        per_batch.reviews as reviews,
        per_batch.bad_reviews as bad_reviews,
        per_batch.quality_claims as quality_claims,
        per_batch.orders_with_feedback as orders_with_feedback,
        per_batch.bad_orders as bad_orders,
        if(per_batch.orders_with_feedback = 0, NULL, per_batch.bad_orders / per_batch.orders_with_feedback) as bad_rate,
        alerts.batch_id != '' as is_alerted,
        if(alerts.batch_id = '', NULL, alerts.alerted_at) as alerted_at,
        if(alerts.batch_id = '', NULL, alerts.first_bad_at) as first_bad_at,
        if(alerts.batch_id = '', NULL, alerts.alert_bad) as alert_bad,
        if(alerts.batch_id = '', NULL, alerts.alert_feedback) as alert_feedback,
        if(alerts.batch_id = '', NULL, alerts.alert_baseline_rate) as alert_baseline_rate,
        if(alerts.batch_id = '', NULL, alerts.alert_p_value) as alert_p_value
    from per_batch
    left join alerts on alerts.batch_id = per_batch.batch_id
)

select * from final
