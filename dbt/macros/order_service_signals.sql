{#- Parts of int_order_service_signals that its scope needs too (see the model).

    The orders an incremental build rewrites (`<this>__scope`) are computed once, before the
    model's query, into a small table the model reads three times (macros/incremental_scope.sql):
    as a CTE, ClickHouse recomputed them wherever the model named them (three `in (select ...)`
    filters, three times the cost). -#}

{#- The signals of the small inputs (cold-chain decisions, attributed packaging returns), for
    every order that has any. -#}
{% macro order_small_signals() -%}
    select
        if(decisions.order_id != '', decisions.order_id, assumeNotNull(packaging.order_id)) as order_id,
        decisions.order_id != '' as has_claim_decision,
        decisions.decision in ('auto_approved', 'matched_customer_claim') as is_claim_resolved,
        packaging.packaging_returns as packaging_returns
    from (
        select order_id, any(decision) as decision
        from {{ ref('stg_coldchain__claim_decisions') }}
        group by order_id
    ) as decisions
    full outer join (
        select order_id, count() as packaging_returns
        from {{ ref('int_packaging_returns_attributed') }}
        where order_id is not null
        group by order_id
    ) as packaging on packaging.order_id = decisions.order_id
{%- endmacro %}

{#- The scope rules of int_order_service_signals (incremental_scope='order',
    macros/incremental_scope.sql): the orders to rewrite (see the model for why each). -#}
{% macro order_service_scope_rules() -%}
    {%- set also -%}
    with small_signals as (
        {{ order_small_signals() }}
    ),

    held_small_signals as (
        select order_id, has_claim_decision, is_claim_resolved, packaging_returns from {{ this }}
        where has_claim_decision or packaging_returns > 0
    )

    select order_id from {{ ref('int_orders_enriched') }}
    where _source_ingested_at > {{ incremental_watermark('_orders_ingested_at') }}
    union distinct
    select order_id from {{ ref('int_order_line_rollup') }}
    where _ingested_at > {{ incremental_watermark('_lines_ingested_at') }}
    union distinct
    -- small inputs now and as held: an order on either side that the other lacks
    select order_id from small_signals
    where (order_id, has_claim_decision, is_claim_resolved, packaging_returns) not in (select * from held_small_signals)
    union distinct
    select order_id from held_small_signals
    where (order_id, has_claim_decision, is_claim_resolved, packaging_returns) not in (select * from small_signals)
    {%- endset -%}
    {{ return({'also': also}) }}
{%- endmacro %}
