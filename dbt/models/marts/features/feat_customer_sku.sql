-- Feast view next_purchase: per OneID x SKU purchase rhythm (purchases, units, typical
-- interval and its spread, weekday habit), one row per purchase day, stamped at its close.
{{ config(order_by='(oneid, sku, event_timestamp)') }}

with lines as (
    select * from {{ ref('int_customer_order_lines') }}
),

purchase_days as (
    select
        oneid,
        sku,
        order_date,
        sum(qty) as units,
        any(order_date) over (partition by oneid, sku order by order_date rows between 1 preceding and 1 preceding) as previous_date
    from lines
    group by oneid, sku, order_date
),

gaps as (
    select oneid, sku, order_date, units, if(previous_date = toDate(0), 0, order_date - previous_date) as gap_days
    from purchase_days
),

running as (
    select
        oneid,
        sku,
        order_date,
        count() over w as purchases,
        sum(units) over w as units_total,
        min(order_date) over w as first_date,
        sum(gap_days * gap_days) over w as gap_squares,
        groupArray(toDayOfWeek(order_date)) over w as weekdays
    from gaps
    window w as (partition by oneid, sku order by order_date rows between unbounded preceding and current row)
),

final as (
    select
        oneid,
        sku,
        {{ business_day_close('order_date') }} as event_timestamp,
        toInt64(purchases) as np_purchases,
        toInt64(units_total) as np_units_total,
        toInt64(toUnixTimestamp({{ business_day_close('order_date') }})) as np_last_purchase_ts,
        round(if(purchases > 1, (order_date - first_date) / (purchases - 1), 0), 3) as np_mean_interval_days,
        round(if(purchases > 2, sqrt(greatest(gap_squares / (purchases - 1) - pow((order_date - first_date) / (purchases - 1), 2), 0)), 0), 3)
            as np_interval_std_days,
        round(countEqual(weekdays, toDayOfWeek(order_date)) / purchases, 4) as np_same_weekday_share
    from running
)

select * from final
