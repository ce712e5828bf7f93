-- One row: the end of the observed data. Customer metrics are computed "as of" this date
-- (the newest order's business date), not now(), so a rebuild of the same data gives the
-- same numbers and old simulations stay meaningful.
with orders as (
    select ordered_at from {{ ref('int_orders_enriched') }}
),

final as (
    select
        toDate(max(ordered_at), '{{ var("business_tz") }}') as as_of_date,
        toStartOfMonth(toDate(max(ordered_at), '{{ var("business_tz") }}')) as as_of_month,
        toDate(min(ordered_at), '{{ var("business_tz") }}') as first_date
    from orders
)

select * from final
