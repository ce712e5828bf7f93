-- Feast view customer_profile: orders, spend, recency, tenure, rhythm and channels per OneID,
-- one row per business-day close (a snapshot of what was known when the day ended, stamped
-- at that moment: Feast's point-in-time join never sees a day early).
-- orders_total and spend_total_cny on the observation end's row equal dim_customer's orders
-- and total_spend_cny, home_community_id its home_community_id; days_since_last_order there
-- equals customer_rfm's days_since_last_purchase.
{{ config(order_by='(oneid, event_timestamp)') }}

with daily as (
    select * from {{ ref('int_customer_daily_activity') }}
),

windowed as (
    select
        oneid,
        activity_date,
        sum(orders) over w_all as orders_all,
        sum(spend_cny) over w_all as spend_all,
        sum(orders) over w28 as orders_28,
        sum(spend_cny) over w28 as spend_28,
        sum(orders) over w7 as orders_7,
        sum(spend_cny) over w7 as spend_7,
        sum(orders > 0) over w_all as purchase_days,
        count() over w_all as tenure_days,
        max(if(orders > 0, activity_date, toDate(0))) over w_all as last_order_date,
        sum(lines) over w_all as lines_all,
        sum(mini_program_orders) over w_all as mini_program_all,
        sum(group_chat_orders) over w_all as group_chat_all,
        home_community_id,
        argMax(locker_id, if(orders > 0, toUInt32(activity_date), 0)) over w_all as home_locker_id
    from daily
    window
        w_all as (partition by oneid order by activity_date rows between unbounded preceding and current row),
        w28 as (partition by oneid order by activity_date rows between 27 preceding and current row),
        w7 as (partition by oneid order by activity_date rows between 6 preceding and current row)
),

final as (
    select
        oneid,
        {{ business_day_close('activity_date') }} as event_timestamp,
        toInt64(orders_all) as orders_total,
        round(spend_all, 2) as spend_total_cny,
        round(spend_all / greatest(orders_all, 1), 2) as avg_basket_cny,
        toInt64(orders_28) as orders_28d,
        round(spend_28, 2) as spend_28d_cny,
        toInt64(orders_7) as orders_7d,
        round(spend_7, 2) as spend_7d_cny,
        toInt64(purchase_days) as purchase_days,
        toInt64(tenure_days) as tenure_days,
        toInt64(activity_date - last_order_date) as days_since_last_order,
        toInt64(toUnixTimestamp({{ business_day_close('last_order_date') }})) as last_order_day_close_ts,
        round(if(purchase_days > 1, (tenure_days - 1 - (activity_date - last_order_date)) / (purchase_days - 1), 0), 3)
            as mean_days_between_purchases,
        round(lines_all / greatest(orders_all, 1), 3) as lines_per_order,
        round(mini_program_all / greatest(orders_all, 1), 4) as mini_program_share,
        round(group_chat_all / greatest(orders_all, 1), 4) as group_chat_share,
        home_community_id,
        home_locker_id
    from windowed
)

select * from final
