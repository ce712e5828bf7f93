{#- The reading batch of int_compartment_weekly_compliance: the telemetry readings one build
    adds to the weekly counts, and the record of what the previous build counted.

    Before the model's query, its scope takes every raw reading ingested after the build's cut into
    `<this>__readings_batch`, one row per reading (its newest version), before the model
    reads anything. The cut is when the previous build that wrote counts started (the newest
    `_built_at` of the model) minus vars.lookback_minutes: a reading ingested before it was
    visible to that build, unless its insert was in flight for longer than the lookback (the
    lookback also absorbs clock skew between the dbt host and the writers). A build without a
    previous one, or a full refresh, cuts at its own start minus the lookback.
    The model counts from the batch, so what it counted and what it records are the same rows
    even while ingestion goes on. After it, the batch is kept as `<this>__readings_counted`:
    the next build skips those readings at that version, as its batch holds them again.

    The cut follows the clock, not the newest ingestion: a backfill ingested in minutes
    followed by a full refresh leaves a record of the readings of the last lookback minutes
    of wall time, not the whole backfill.

    A failed build leaves the previous record and the previous counts in place: the next build
    starts from the same cut again. The tables belong to the model: a full refresh rebuilds
    them with it. -#}

{#- The steps of its scope (incremental_scope='reading_batch', macros/incremental_scope.sql). -#}
{% macro telemetry_batch_begin() -%}
    {{ return([telemetry_batch_prepare(), telemetry_batch_fresh_prepare(), telemetry_batch_recounted_prepare()]) }}
{%- endmacro %}

{% macro telemetry_batch_end() -%}
    {{ return([telemetry_batch_commit(), telemetry_batch_drop_previous(), telemetry_batch_drop_fresh(),
               telemetry_batch_drop_recounted()]) }}
{%- endmacro %}

{% macro telemetry_batch_relation(suffix) -%}
    {{ return(this.incorporate(path={"identifier": this.identifier ~ '__readings_' ~ suffix})) }}
{%- endmacro %}

{% macro telemetry_batch_exists(suffix) -%}
    {%- set relation = telemetry_batch_relation(suffix) -%}
    {{ return(execute and adapter.get_relation(database=relation.database, schema=relation.schema,
                                               identifier=relation.identifier) is not none) }}
{%- endmacro %}

{#- When this build started (dbt's run_started_at, UTC): the `_built_at` of the rows it writes. -#}
{% macro telemetry_batch_build_time() -%}
    parseDateTime64BestEffort('{{ run_started_at.isoformat() }}', 3, 'UTC')
{%- endmacro %}

{#- Where the batch starts: readings ingested after this instant (see above). -#}
{% macro telemetry_batch_cut(additive) -%}
    {%- if additive -%}
    (select max(_built_at) - interval {{ var('lookback_minutes') }} minute from {{ this }})
    {%- else -%}
    ({{ telemetry_batch_build_time() }} - interval {{ var('lookback_minutes') }} minute)
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
    -- The columns of stg_lastmile__locker_telemetry that the rollup reads, from every version
    -- of the raw readings (stg_lastmile__locker_telemetry_versions, no FINAL): the batch is a
    -- sliver, deduplicated here (the newest version of each sorting key, as FINAL keeps).
    select
        event_id,
        read_at,
        locker_id,
        compartment_id,
        newest.1 as community_id,
        newest.2 as product_class,
        newest.3 as temperature_c,
        newest.4 as _ingested_at
    from (
        select
            locker_id, compartment_id, read_at, event_id,
            argMax((community_id, product_class, temperature_c, _ingested_at), _ingested_at) as newest
        from {{ ref('stg_lastmile__locker_telemetry_versions') }}
        where _ingested_at > {{ telemetry_batch_cut(additive) }}
        group by locker_id, compartment_id, read_at, event_id
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
              select event_id from {{ ref('stg_lastmile__locker_telemetry_versions') }}
              -- the reading's time first: a cheap column that rules out almost every row
              where read_at in (select read_at from {{ fresh }})
                and _ingested_at <= {{ telemetry_batch_cut(true) }}
                and event_id in (select event_id from {{ fresh }})
          )
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
