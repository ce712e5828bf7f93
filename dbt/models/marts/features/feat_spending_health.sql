-- Feast view spending_health: over-consumption signals per OneID over the last 28 days and
-- all history, one row per business-day close. Shares are of basket value (what the lines
-- add up to) and late-night orders are is_late_night, as in the spending_health mart; on the
-- observation end's row sh_impulse_share_all equals spending_health.impulse_share and
-- sh_spend_velocity its spend_velocity (1 where the mart has none: no two baseline weeks).
{{ config(order_by='(oneid, event_timestamp)') }}

{%- set categories = var('feature_categories') %}

with daily as (
    select * from {{ ref('int_customer_daily_activity') }}
),

windowed as (
    select
        oneid,
        activity_date,
        sum(basket_cny) over w28 as basket_28,
        sum(basket_cny) over w_all as basket_all,
        sum(impulse_cny) over w28 as impulse_28,
        sum(impulse_cny) over w_all as impulse_all,
        sum(healthy_cny) over w28 as healthy_28,
        sum(late_night_orders) over w28 as late_28,
        sum(orders) over w28 as orders_28,
        sum(units) over w28 as units_28,
        sum(units) over w_all - sum(units) over w28 as units_before_28,
        sum(orders) over w_all - sum(orders) over w28 as orders_before_28,
        -- days before the last 28 (spending_health's baseline: first order day to as-of - 28)
        count() over w_all - 29 as baseline_days,
        {%- for c in categories %}
        sum(cat_{{ c }}_cny) over w28 as cat_{{ c }}_28{{ "," if not loop.last }}
        {%- endfor %}
    from daily
    window
        w_all as (partition by oneid order by activity_date rows between unbounded preceding and current row),
        w28 as (partition by oneid order by activity_date rows between 27 preceding and current row)
),

final as (
    select
        oneid,
        {{ business_day_close('activity_date') }} as event_timestamp,
        round(impulse_28 / greatest(basket_28, 0.01), 4) as sh_impulse_share_28d,
        round(healthy_28 / greatest(basket_28, 0.01), 4) as sh_healthy_share_28d,
        round(impulse_all / greatest(basket_all, 0.01), 4) as sh_impulse_share_all,
        round(late_28 / greatest(orders_28, 1), 4) as sh_late_night_share_28d,
        round(orders_28 / 4, 3) as sh_orders_per_week_28d,
        round(units_28 / greatest(orders_28, 1), 3) as sh_units_per_order_28d,
        round(basket_28 / 4, 2) as sh_weekly_spend_28d_cny,
        -- Velocity against the person's own baseline, as spending_health.spend_velocity.
        round(if(baseline_days >= 14 and basket_all - basket_28 > 0,
                 (basket_28 / 4) / ((basket_all - basket_28) / (baseline_days / 7)), 1), 4) as sh_spend_velocity,
        round(if(orders_before_28 > 0, (units_28 / greatest(orders_28, 1)) / (units_before_28 / orders_before_28), 1), 4)
            as sh_basket_growth,
        {{ category_balance(categories, '_28', 'basket_28') }} as sh_category_balance_28d
    from windowed
)

select * from final
