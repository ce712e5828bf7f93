{#- The scope rules of the stock facts (incremental_scope='series', macros/incremental_scope.sql).

    A series (one community and SKU) is rebuilt whole: its on-hand ledger and its stock-outs run
    through its whole history, so a late movement or order changes every later hour of it, and
    nothing of any other series. -#}

{#- fct_stock_hourly: the series with an inventory movement or an order line ingested after the
    table's watermark (its newest `_ingested_at`, minus vars.lookback_minutes), and the series
    still sold out at the table's last hour: an open stock-out is censored up to the newest event
    of any series, so it grows when anything newer arrives. -#}
{% macro stock_hourly_scope_rules() -%}
    {%- set also -%}
    select community_id, sku from {{ ref('stg_lastmile__inventory_versions') }}
    where _ingested_at > {{ incremental_watermark() }}
    union distinct
    select community_id, sku from {{ ref('int_order_lines_enriched') }}
    where _ingested_at > {{ incremental_watermark() }}
    union distinct
    select community_id, sku from {{ this }}
    where censored and hour = (select max(hour) from {{ this }})
    {%- endset -%}
    {{ return({'also': also}) }}
{%- endmacro %}

{#- fct_stock_daily: the series fct_stock_hourly rewrote since this table was last built (minus
    vars.lookback_minutes). -#}
{% macro stock_daily_scope_rules() -%}
    {%- set also -%}
    select distinct community_id, sku from {{ ref('fct_stock_hourly') }}
    where _built_at > (select max(_built_at) - interval {{ var('lookback_minutes') }} minute from {{ this }})
    {%- endset -%}
    {{ return({'also': also}) }}
{%- endmacro %}
