-- Feast view category_affinity: each customer's share of basket value per catalogue category
-- (all history; one column per category of var feature_categories) and how balanced it is,
-- one row per business-day close.
{{ config(order_by='(oneid, event_timestamp)') }}

{%- set categories = var('feature_categories') %}

with daily as (
    select * from {{ ref('int_customer_daily_activity') }}
),

windowed as (
    select
        oneid,
        activity_date,
        sum(basket_cny) over w_all as basket_all,
        {%- for c in categories %}
        sum(cat_{{ c }}_cny) over w_all as cat_{{ c }}_all{{ "," if not loop.last }}
        {%- endfor %}
    from daily
    window w_all as (partition by oneid order by activity_date rows between unbounded preceding and current row)
),

final as (
    select
        oneid,
        {{ business_day_close('activity_date') }} as event_timestamp,
        {%- for c in categories %}
        round(cat_{{ c }}_all / greatest(basket_all, 0.01), 4) as aff_{{ c }},
        {%- endfor %}
        {{ category_balance(categories, '_all', 'basket_all') }} as aff_category_balance
    from windowed
)

select * from final
