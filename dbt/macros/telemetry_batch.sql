{#- The reading batch of int_compartment_weekly_compliance: the telemetry readings one build
    adds to the weekly counts, and the record of what the previous build counted.

    The pre-hook takes every raw reading ingested after the model's cut (its watermark, the
    newest `_ingested_at` it counted, minus vars.lookback_minutes; on a full refresh, the
    newest in the raw table minus the lookback) into `<this>__readings_batch`, one row per
    reading (its newest version), before the model reads anything. The model counts from that
    table, so what it counted and what it records are the same rows even while ingestion
    goes on. The post-hook keeps the batch as `<this>__readings_counted`: the next build skips
    those readings at that version, as its lookback reads them again.

    A failed build leaves the previous record and the previous counts in place: the next build
    starts from the same cut again. The tables belong to the model: a full refresh rebuilds
    them with it. -#}

{% macro telemetry_batch_relation(suffix) -%}
    {{ return(this.incorporate(path={"identifier": this.identifier ~ '__readings_' ~ suffix})) }}
{%- endmacro %}

{% macro telemetry_batch_exists(suffix) -%}
    {%- set relation = telemetry_batch_relation(suffix) -%}
    {{ return(execute and adapter.get_relation(database=relation.database, schema=relation.schema,
                                               identifier=relation.identifier) is not none) }}
{%- endmacro %}

{#- Where the batch starts: readings ingested after this instant. An incremental build with a
    record of what it counted starts at its watermark minus the lookback; anything else counts
    every reading, and starts the batch at the raw table's newest ingestion minus the lookback. -#}
{% macro telemetry_batch_cut(additive) -%}
    {%- if additive -%}
    (select max(_ingested_at) - interval {{ var('lookback_minutes') }} minute from {{ this }})
    {%- else -%}
    (select max(_ingested_at) - interval {{ var('lookback_minutes') }} minute from {{ source('lastmile', 'raw_locker_telemetry') }})
    {%- endif -%}
{%- endmacro %}

{#- Incremental builds count on top of the stored counts only with the previous build's record. -#}
{% macro telemetry_batch_additive() -%}
    {{ return(is_incremental() and telemetry_batch_exists('counted')) }}
{%- endmacro %}

{% macro telemetry_batch_prepare() -%}
    {%- set additive = telemetry_batch_additive() -%}
    create or replace table {{ telemetry_batch_relation('batch') }}
    engine = MergeTree order by tuple()
    as
    -- The columns of stg_lastmile__locker_telemetry that the rollup reads, straight from the
    -- raw ReplacingMergeTree without FINAL: the batch is a sliver, deduplicated here (the
    -- newest version of each sorting key, as FINAL keeps).
    select
        event_id,
        occurred_at as read_at,
        locker_id,
        compartment_id,
        newest.1 as community_id,
        newest.2 as product_class,
        newest.3 as temperature_c,
        newest.4 as _ingested_at,
        {{ telemetry_batch_cut(additive) }} as _cut
    from (
        select
            locker_id, compartment_id, occurred_at, event_id,
            argMax((community_id, product_class, temperature_c, _ingested_at), _ingested_at) as newest
        from {{ source('lastmile', 'raw_locker_telemetry') }}
        where _ingested_at > {{ telemetry_batch_cut(additive) }}
        group by locker_id, compartment_id, occurred_at, event_id
    )
{%- endmacro %}

{#- Incremental builds with a record: the batch readings no build counted at their version
    (`__readings_fresh`), then the compartment-weeks to recount (`__readings_recounted`):
    those with a fresh reading of which a build counted another version, in the previous
    batch or before this batch's cut. Small tables, computed once (a CTE would be recomputed
    wherever it is named). -#}
{% macro telemetry_batch_fresh_prepare() -%}
    {%- if telemetry_batch_additive() -%}
    {%- set counted = telemetry_batch_relation('counted') -%}
    create or replace table {{ telemetry_batch_relation('fresh') }}
    engine = MergeTree order by tuple()
    as
    select * from {{ telemetry_batch_relation('batch') }}
    -- newer than anything counted, or not counted at this version
    where _ingested_at > (select max(_ingested_at) from {{ counted }})
       or (compartment_id, read_at, event_id, _ingested_at) not in (
              select compartment_id, read_at, event_id, _ingested_at from {{ counted }}
          )
    {%- else -%}
    select 1
    {%- endif -%}
{%- endmacro %}

{% macro telemetry_batch_recounted_prepare() -%}
    {%- if telemetry_batch_additive() -%}
    {%- set fresh = telemetry_batch_relation('fresh') -%}
    create or replace table {{ telemetry_batch_relation('recounted') }}
    engine = MergeTree order by tuple()
    as
    select distinct compartment_id, toDate({{ business_week('read_at') }}) as week_start
    from {{ fresh }}
    where (compartment_id, read_at, event_id) in (
              select compartment_id, read_at, event_id from {{ telemetry_batch_relation('counted') }}
          )
       or event_id in (
              select event_id from {{ source('lastmile', 'raw_locker_telemetry') }}
              -- the reading's time first: a cheap column that rules out almost every row
              prewhere occurred_at in (select read_at from {{ fresh }})
              where _ingested_at <= (select any(_cut) from {{ telemetry_batch_relation('batch') }})
                and event_id in (select event_id from {{ fresh }})
          )
    {%- else -%}
    select 1
    {%- endif -%}
{%- endmacro %}

{% macro telemetry_batch_commit() -%}
    {%- set batch = telemetry_batch_relation('batch') -%}
    {%- set counted = telemetry_batch_relation('counted') -%}
    {%- if telemetry_batch_exists('counted') -%}
    exchange tables {{ batch }} and {{ counted }}
    {%- else -%}
    rename table {{ batch }} to {{ counted }}
    {%- endif -%}
{%- endmacro %}

{#- After the exchange, `__readings_batch` holds the previous record. -#}
{% macro telemetry_batch_drop_previous() -%}
    drop table if exists {{ telemetry_batch_relation('batch') }}
{%- endmacro %}

{% macro telemetry_batch_drop_fresh() -%}
    drop table if exists {{ telemetry_batch_relation('fresh') }}
{%- endmacro %}

{% macro telemetry_batch_drop_recounted() -%}
    drop table if exists {{ telemetry_batch_relation('recounted') }}
{%- endmacro %}
