{#- The order line fact: one row per line with its SKU's traits (int_order_lines_enriched, which
    builds it), written incrementally: each build adds the lines int_order_lines_enriched wrote. -#}
{{ config(
    materialized='incremental',
    unique_key='order_line_id',
    test_slice_key='order_line_id',
    order_by='(community_id, ordered_at, order_line_id)',
    partition_by='toYYYYMM(ordered_at)',
) }}

{{ published_rows(ref('int_order_lines_enriched'), 'order_line_id') }}
