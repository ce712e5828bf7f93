{#- The order fact: one row per order with its pickup, claims and review (int_orders_enriched,
    which builds it). A table of its own for analysts and the feature store, written
    incrementally: each build adds the orders int_orders_enriched rewrote. -#}
{{ config(
    materialized='incremental',
    unique_key='order_id',
    test_slice_key='order_id',
    order_by='(community_id, ordered_at, order_id)',
    partition_by='toYYYYMM(ordered_at)',
) }}

{#- the OneID aside: it is the one of the build that wrote the row -#}
{{ published_rows(ref('int_orders_enriched'), 'order_id', '_source_ingested_at',
                  version='cityHash64(toString(tuple(* except (oneid))))') }}
