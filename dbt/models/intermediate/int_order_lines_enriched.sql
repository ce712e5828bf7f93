{#- One row per order line with its SKU's traits: known SKU, impulse and healthy flags,
    traceability (origin as catalogued, batch id of this SKU) and the batch date. fct_order_lines
    publishes it; int_order_line_rollup adds it up per order.

    Incremental: order lines never change after the order, so only orders ingested after
    the watermark (minus the lookback) are (re)written. -#}
{{ config(
    materialized='incremental',
    unique_key='order_line_id',
    order_by='(community_id, ordered_at, order_line_id)',
    partition_by='toYYYYMM(ordered_at)',
) }}

with lines as (
    select * from {{ ref('stg_lastmile__order_lines') }}
    {{ lookback_filter(ref('stg_lastmile__order_versions')) }}
),

skus as (
    select * from {{ ref('stg_reference__skus') }}
),

final as (
    select
        lines.order_line_id as order_line_id,
        lines.order_id as order_id,
        lines.line_number as line_number,
        lines.ordered_at as ordered_at,
        toDate({{ business_week('lines.ordered_at') }}) as order_week,
        lines.community_id as community_id,
        lines.leader_id as leader_id,
        lines.merchant_id as merchant_id,
        lines.locker_id as locker_id,
        lines.sku as sku,
        lines.category as category,
        lines.qty as qty,
        lines.unit_price_cny as unit_price_cny,
        lines.line_amount_cny as line_amount_cny,
        lines.origin as origin,
        lines.batch_id as batch_id,
        skus.sku != '' as is_known_sku,
        skus.is_impulse as is_impulse,
        skus.is_healthy as is_healthy,
        if(skus.sku = '', NULL, skus.shelf_life_days) as shelf_life_days,
        -- Traceable: origin as catalogued and a batch id of this SKU (SKU-...).
        skus.sku != '' and lines.origin = skus.catalogue_origin and startsWith(lines.batch_id, concat(lines.sku, '-')) as is_traceable,
        -- Batch date from the batch id's last part: a lot received into a front warehouse
        -- (SKU-<community>-YYYYMMDD) or a producer's batch (SKU-MMDD, in the order's year).
        -- Any other form has no date.
        {% set batch_stamp = "splitByChar('-', substring(lines.batch_id, length(lines.sku) + 2))[-1]" %}
        if(not startsWith(lines.batch_id, concat(lines.sku, '-')) or not match({{ batch_stamp }}, '^([0-9]{4}|[0-9]{8})$'), NULL,
           toDateOrNull(if(length({{ batch_stamp }}) = 8,
                           concat(substring({{ batch_stamp }}, 1, 4), '-', substring({{ batch_stamp }}, 5, 2), '-', substring({{ batch_stamp }}, 7, 2)),
                           concat(toString(toYear(lines.ordered_at)), '-', substring({{ batch_stamp }}, 1, 2), '-', substring({{ batch_stamp }}, 3, 2))))) as batch_date,
        lines._ingested_at as _ingested_at
    from lines
    left join skus on skus.sku = lines.sku
)

select * from final
{{ only_changed_rows('order_line_id', '_ingested_at') }}
