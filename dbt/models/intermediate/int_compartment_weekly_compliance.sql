{#- Per cold compartment and business week: readings, and how many were inside the range of
    the compartment's product class. Ambient compartments have no range and are left out.

    The counts are sums, so an incremental build adds what is new instead of deduplicating all
    the telemetry (a FINAL over every reading: most of the cost of a rebuild). It counts from
    the reading batch (macros/telemetry_batch.sql: the readings ingested after the watermark
    minus the lookback, newest version of each):
      * a batch reading at the version the previous build counted is skipped;
      * a reading no build counted before is added to its week's counts;
      * a reading of which a build counted another version (re-sent with new values) makes its
        compartment-week recounted from the deduplicated telemetry, like a full refresh.
    A full refresh, or a build without the previous build's record, counts every reading:
    the deduplicated telemetry up to the batch's cut, plus the batch. Same rows as a full
    refresh. -#}
-- depends_on: {{ ref('stg_lastmile__locker_telemetry_versions') }}
{{ config(
    materialized='incremental',
    unique_key='compartment_id, week_start',
    engine='MergeTree()',
    order_by='(community_id, week_start, compartment_id)',
    incremental_scope='reading_batch',
) }}

{%- set batch = telemetry_batch_relation('batch') %}
{%- set fresh = telemetry_batch_relation('fresh') %}
{%- set recounted = telemetry_batch_relation('recounted') %}
{%- set week = "toDate(" ~ business_week('read_at') ~ ")" %}
{%- set cold = "product_class in ('chilled', 'frozen')" %}
{%- set additive = telemetry_batch_additive() %}
{%- set cut = telemetry_batch_cut(additive) %}

with

{% if additive %}
readings as (
    select * from {{ fresh }}
    where {{ cold }} and (compartment_id, {{ week }}) not in (select compartment_id, week_start from {{ recounted }})
    union all
    -- recounted weeks: every reading, as a full refresh counts them
    select event_id, read_at, locker_id, compartment_id, community_id, product_class, temperature_c, _ingested_at
    from {{ ref('stg_lastmile__locker_telemetry') }}
    where {{ cold }} and _ingested_at <= {{ cut }}
      and (compartment_id, {{ week }}) in (select compartment_id, week_start from {{ recounted }})
    union all
    select * from {{ batch }}
    where {{ cold }} and (compartment_id, {{ week }}) in (select compartment_id, week_start from {{ recounted }})
),
{% else %}
readings as (
    select event_id, read_at, locker_id, compartment_id, community_id, product_class, temperature_c, _ingested_at
    from {{ ref('stg_lastmile__locker_telemetry') }}
    where {{ cold }} and _ingested_at <= {{ cut }}
    union all
    select * from {{ batch }} where {{ cold }}
),
{% endif %}

counts as (
    select
        compartment_id,
        {{ week }} as week_start,
        any(locker_id) as locker_id,
        any(community_id) as community_id,
        any(product_class) as product_class,
        count() as readings,
        countIf(is_in_range) as readings_in_range,
        max(temperature_c) as temperature_max_c
    from (select *, {{ in_temperature_range('product_class', 'temperature_c') }} as is_in_range from readings)
    group by compartment_id, week_start
),

{% if additive %}
added as (
    -- counts of new readings on top of the stored ones (recounted weeks replace theirs)
    select
        counts.compartment_id as compartment_id,
        counts.week_start as week_start,
        if(held.compartment_id = '', counts.locker_id, held.locker_id) as locker_id,
        if(held.compartment_id = '', counts.community_id, held.community_id) as community_id,
        if(held.compartment_id = '', counts.product_class, held.product_class) as product_class,
        counts.readings + held.readings as readings,
        counts.readings_in_range + held.readings_in_range as readings_in_range,
        if(held.compartment_id = '', counts.temperature_max_c, greatest(counts.temperature_max_c, held.temperature_max_c)) as temperature_max_c
    from counts
    left join (
        select * from {{ this }}
        where (compartment_id, week_start) not in (select compartment_id, week_start from {{ recounted }})
    ) as held on held.compartment_id = counts.compartment_id and held.week_start = counts.week_start
),
{% endif %}

final as (
    select
        compartment_id,
        week_start,
        locker_id,
        community_id,
        product_class,
        readings,
        readings_in_range,
        readings_in_range / readings as in_range_share,
        temperature_max_c,
        {{ telemetry_batch_build_time() }} as _built_at
    from {{ 'added' if additive else 'counts' }}
)

select * from final
