{#- One row per order: what its lines add up to (line and traceable counts, batch age, spend
    split by impulse / healthy flags and by category). int_order_service_signals and
    int_customer_orders (hence int_alliance_orders and spending_health) read this instead of
    aggregating or joining the 3.4M lines of a 1M-order warehouse on every build.

    Incremental: an order's lines never change after the order (int_order_lines_enriched only ever
    brings lines of orders ingested after its watermark), so a build re-aggregates only the
    orders with a line ingested after this table's watermark (minus vars.lookback_minutes),
    from all their lines; re-read orders that come out as held are not rewritten. -#}
{{ config(
    materialized='incremental',
    unique_key='order_id',
    test_slice_key='order_id',
    engine='MergeTree()',
    order_by='order_id',
) }}

with lines as (
    select * from {{ ref('int_order_lines_enriched') }}
    {%- if is_incremental() %}
    where order_id in (select order_id from {{ ref('int_order_lines_enriched') }} where _ingested_at > {{ incremental_watermark() }})
    {%- endif %}
),

final as (
    select
        order_id,
        count() as lines,
        countIf(is_traceable) as traceable_lines,
        -- How much of its shelf life a line's batch had used when it was ordered: days from the
        -- batch date (parsed from the batch id) to the order over the SKU's shelf life, 0..1,
        -- averaged over the lines with a batch date and a catalogued SKU. A share, not days:
        -- a day-old lettuce is at the end of its life, a day-old frozen dumpling is not.
        if(countIf(batch_date is not null and shelf_life_days > 0) = 0, NULL,
           avgIf(least(1, greatest(0, dateDiff('day', batch_date, toDate(ordered_at, '{{ var("business_tz") }}'))) / shelf_life_days),
                 batch_date is not null and shelf_life_days > 0)) as batch_life_used,
        sum(amount) as line_amount_cny,
        sumIf(amount, is_impulse) as impulse_amount_cny,
        sumIf(amount, is_healthy) as healthy_amount_cny,
        -- Spend per category (as sent), categories sorted; parallel arrays.
        sumMap([category], [amount]) as category_spend,
        category_spend.1 as categories,
        category_spend.2 as category_amounts_cny,
        max(_ingested_at) as _ingested_at
    from (select *, line_amount_cny as amount from lines)
    group by order_id
)

select * except (category_spend) from final
{{ only_changed_rows('order_id', '_ingested_at') }}
