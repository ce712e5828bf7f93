{#- Small SQL helpers shared by the marts; each index formula stays readable in its model. -#}

{% macro business_week(ts) -%}
    toMonday({{ ts }}, '{{ var("business_tz") }}')
{%- endmacro %}

{% macro business_month(ts) -%}
    toStartOfMonth({{ ts }}, '{{ var("business_tz") }}')
{%- endmacro %}

{% macro local_hour(ts) -%}
    toHour(toTimeZone({{ ts }}, '{{ var("business_tz") }}'))
{%- endmacro %}

{#- Linear 0-100 score: `zero_at` maps to 0, `full_at` to 100, clamped. Works both ways
    (full_at < zero_at for "lower is better"). NULL in, NULL out. -#}
{% macro linear_score(x, zero_at, full_at) -%}
    {#- The explicit NULL branch matters: ClickHouse's least/greatest skip NULL arguments,
        so least(1, NULL) is 1 and a missing measure would silently score 100. -#}
    if(({{ x }}) IS NULL, NULL, round(100 * greatest(0, least(1, (({{ x }}) - ({{ zero_at }})) / (({{ full_at }}) - ({{ zero_at }})))), 2) + 0)
{%- endmacro %}

{#- Weighted mean of the non-NULL scores, re-normalising the weights over what is present:
    a dimension without data neither counts as 0 nor as 100. `parts` is a dict column -> weight. -#}
{% macro weighted_available(parts) -%}
    round(
        ({% for col, w in parts.items() %}coalesce({{ col }}, 0) * {{ w }}{% if not loop.last %} + {% endif %}{% endfor %})
        / nullIf({% for col, w in parts.items() %}if({{ col }} IS NULL, 0, {{ w }}){% if not loop.last %} + {% endif %}{% endfor %}, 0),
    2)
{%- endmacro %}

{#- The incremental window of an event fact: every row ingested after the fact's watermark
    (the newest `_ingested_at` it holds) minus the lookback, whatever its event time. Late
    events are therefore never missed; the lookback only covers inserts that were in flight
    while the previous build read. -#}
{% macro incremental_watermark(watermark_column='_ingested_at') -%}
    (SELECT max({{ watermark_column }}) - INTERVAL {{ var('lookback_minutes') }} MINUTE FROM {{ this }})
{%- endmacro %}

{#- The events of the raw table behind `versions` (a ref of a stg_lastmile__*_versions model) about the
    orders `order_ids` (a subquery), as a condition on event_id: on the staging view over that
    table, its FINAL then reads only those events (see lookback_filter). -#}
{% macro events_of_orders(versions, order_ids) -%}
    event_id in (select event_id from {{ versions }} where order_id in ({{ order_ids }}))
{%- endmacro %}

{#- The lookback window of an event fact, as a filter on the staging view over the raw table
    behind `versions` (a ref of its stg_lastmile__*_versions model): the events with a row ingested after
    the watermark. Tested on event_id, a sorting-key column of every raw table, so the view's
    FINAL reads and merges only those events (profiles.yml: optimize_move_to_prewhere_if_final);
    the versions view reads the raw table without FINAL for the ids, which is the same set (a
    ReplacingMergeTree versioned by `_ingested_at`: an event has a row newer than the watermark
    exactly when its newest row is). -#}
{% macro lookback_filter(versions) -%}
    {%- if is_incremental() %}
    WHERE event_id IN (
        SELECT event_id FROM {{ versions }}
        WHERE _ingested_at > {{ incremental_watermark() }}
    )
    {%- endif %}
{%- endmacro %}

{#- The lookback re-reads rows the table may already hold. Writing them again would change
    nothing but cost a delete of their old copies (a mutation over the whole table), so an
    incremental build keeps only rows whose version the table does not hold yet: `key`
    plus `version`, an expression over the row that changes whenever its content does (an
    event fact: its `_ingested_at`). Applied to the model's final select. -#}
{% macro only_changed_rows(key, version, within=none) -%}
    {%- if is_incremental() %}
    where ({{ key }}, {{ version }}) not in (
        select {{ key }}, {{ version }} from {{ this }}
        where {{ within if within else "_ingested_at > " ~ incremental_watermark() }}
    )
    {%- endif %}
{%- endmacro %}

{#- A source that may not exist yet (cold-chain job, recommender). At run time, when the
    table is absent, returns an empty relation with the given columns instead, so the
    models that read it build and say "no data" rather than fail. `final` reads a
    ReplacingMergeTree source with FINAL when it exists. -#}
{% macro optional_source(source_name, table_name, empty_columns, final=false) -%}
    {%- set src = source(source_name, table_name) -%}
    {%- if execute -%}
        {%- set found = adapter.get_relation(database=src.database, schema=src.schema, identifier=src.identifier) -%}
        {%- if found is none -%}
            (SELECT {% for name, type in empty_columns.items() %}CAST(NULL AS Nullable({{ type }})) AS {{ name }}{% if not loop.last %}, {% endif %}{% endfor %} WHERE 0)
        {%- else -%}
            {{ src }}{% if final %} FINAL{% endif %}
        {%- endif -%}
    {%- else -%}
        {{ src }}
    {%- endif -%}
{%- endmacro %}

{% macro source_exists(source_name, table_name) -%}
    {%- set src = source(source_name, table_name) -%}
    {%- if execute -%}
        {{ return(adapter.get_relation(database=src.database, schema=src.schema, identifier=src.identifier) is not none) }}
    {%- else -%}
        {{ return(false) }}
    {%- endif -%}
{%- endmacro %}

{#- Is a telemetry reading inside the allowed range of its compartment's product class?
    Ranges come from the simulator's and the cold-chain job's shared definition: chilled
    0..4 °C, frozen <= -18 °C; ambient compartments have no range (NULL). -#}
{% macro in_temperature_range(product_class, temperature_c) -%}
    multiIf({{ product_class }} = 'chilled', {{ temperature_c }} BETWEEN 0 AND 4,
            {{ product_class }} = 'frozen', {{ temperature_c }} <= -18,
            NULL)
{%- endmacro %}

{#- A review that complains: a negative tag, or text with a complaint keyword (zh/en).
    Deliberately a transparent lexicon rather than a model, so an analyst can audit it. -#}
{% macro is_negative_review(tags, text) -%}
    (hasAny({{ tags }}, ['late', 'not_cold', 'thawed', 'damaged', 'missing_item', 'poor_quality'])
     OR multiSearchAny(lower(coalesce({{ text }}, '')),
        ['不冰', '化了', '变质', '晚了', '没有按时', '破损', '碎', '少', 'warm', 'melted', 'not cold', 'late', 'damaged', 'broken', 'small']))
{%- endmacro %}

{#- The rows a mart publishes from the intermediate table that builds it (fct_orders from
    int_orders_enriched, ...): everything on a full build; on an incremental one, the rows the
    intermediate wrote since this table's watermark (minus the lookback) that this table does
    not hold at the same `version` (an expression over the row; by default the watermark
    column). The intermediate only ever rewrites a key with a newer version, so the mart ends
    up row for row the same. -#}
{% macro published_rows(relation, key, watermark='_ingested_at', version=none) -%}
    {%- set version = version or watermark -%}
    select * from {{ relation }}
    {%- if is_incremental() %}
    where {{ watermark }} > {{ incremental_watermark(watermark) }}
      and ({{ key }}, {{ version }}) not in (
          select {{ key }}, {{ version }} from {{ this }}
          where {{ watermark }} > {{ incremental_watermark(watermark) }}
      )
    {%- endif %}
{%- endmacro %}
