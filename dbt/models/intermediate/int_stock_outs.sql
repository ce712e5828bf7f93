{#- One row per stock-out of a community and SKU: from the stock count of 0 that said it sold
    out (the mini-program's "sold out" signal, or the evening count finding an empty shelf)
    until stock came back (the next receipt of at least one unit, or a count that finds some).
    Further counts of 0 in between belong to the same stock-out. `restocked_at` is NULL while
    the SKU is still sold out. -#}

with signals as (
    select
        community_id,
        sku,
        moved_at as at,
        event_id,
        movement = 'stock_count' and qty = 0 as is_sold_out,
        (movement = 'receipt' or movement = 'stock_count') and qty > 0 as is_restock
    from {{ ref('stg_lastmile__inventory') }}
    where movement in ('receipt', 'stock_count')
),

-- receipts sort before counts of the same instant (int_stock_events: a count sees the moment's receipts)
ordered as (
    select
        *,
        minIfOrNull(at, is_restock) over (
            partition by community_id, sku order by at, is_sold_out, event_id
            rows between 1 following and unbounded following
        ) as restocked_at
    from signals
)

select
    community_id,
    sku,
    min(at) as sold_out_at,
    restocked_at
from ordered
where is_sold_out
group by community_id, sku, restocked_at
