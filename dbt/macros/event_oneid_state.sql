{#- The snapshot stg_identity__event_oneid keeps of the identity graph it resolved against:
    every identifier's (oneid, shared) and the newest evidence ingestion it had seen
    (`links_through`). Its scope (incremental_scope='identity_snapshot', macros/incremental_scope.sql)
    takes it into `<this>__identity_state_next` before the model reads anything; the
    incremental query compares it with the previous build's `<this>__identity_state`; once the
    build succeeded it becomes the new `__identity_state` (the old one is dropped). If a build
    fails in between, the old snapshot stays and the next build re-resolves more, never less.
    The tables belong to the model: a full refresh rebuilds them with it. -#}

{#- Before the model's query: the snapshot, then what changed since the previous one, then the
    events to re-resolve. -#}
{% macro event_oneid_state_begin() -%}
    {{ return([event_oneid_state_prepare(), event_oneid_changed_prepare(), event_oneid_affected_prepare()]) }}
{%- endmacro %}

{#- After it: the change log for downstream models (it reads the previous snapshot, so before
    the commit), the snapshot made current, the work tables dropped. The events written with an
    empty OneID are the model's `placeholders`, deleted after these. -#}
{% macro event_oneid_state_end() -%}
    {{ return([event_oneid_changes_create(), event_oneid_changes_log(), event_oneid_state_commit(),
               event_oneid_state_drop_old(), event_oneid_drop_work_tables(), event_oneid_drop_changed()]) }}
{%- endmacro %}

{% macro event_oneid_state_relation(next=false, suffix=none) -%}
    {%- set name = suffix if suffix else ('identity_state_next' if next else 'identity_state') -%}
    {{ return(this.incorporate(path={"identifier": this.identifier ~ '__' ~ name})) }}
{%- endmacro %}

{% macro event_oneid_has_state() -%}
    {%- set state = event_oneid_state_relation() -%}
    {{ return(execute and adapter.get_relation(database=state.database, schema=state.schema, identifier=state.identifier) is not none) }}
{%- endmacro %}

{#- Incremental builds with a snapshot: the identifiers that changed since it
    (`__identity_changed`), then the events to re-resolve (`__identity_affected`), each
    computed once into a small table (a CTE would be recomputed wherever it is named). -#}
{% macro event_oneid_changed_prepare() -%}
    {%- if is_incremental() and event_oneid_has_state() -%}
    create or replace table {{ event_oneid_state_relation(suffix='identity_changed') }}
    engine = MergeTree order by token
    as select token
    from (
        select token, oneid, shared from {{ event_oneid_state_relation() }}
        union all
        select token, oneid, shared from {{ event_oneid_state_relation(next=true) }}
    )
    group by token
    -- in one snapshot only (new or forgotten), or with another OneID or shared flag
    having count() = 1 or uniqExact(oneid, shared) > 1
    {%- endif -%}
{%- endmacro %}

{% macro event_oneid_affected_prepare() -%}
    {%- if is_incremental() and event_oneid_has_state() -%}
    {%- set changed = event_oneid_state_relation(suffix='identity_changed') -%}
    create or replace table {{ event_oneid_state_relation(suffix='identity_affected') }}
    engine = MergeTree order by event_id
    as
    -- evidence ingested since the previous build (minus the lookback)
    select event_id from {{ source('identity', 'identity_links') }}
    where _ingested_at > (select any(links_through) - interval {{ var('lookback_minutes') }} minute from {{ event_oneid_state_relation() }})
    union distinct
    -- evidence naming a changed identifier
    select event_id from {{ source('identity', 'identity_links') }}
    where a_token in (select token from {{ changed }}) or b_token in (select token from {{ changed }})
    union distinct
    -- events stored under a OneID a changed identifier had (their evidence may be gone)
    select event_id from {{ this }}
    where oneid in (select oneid from {{ event_oneid_state_relation() }} where token in (select token from {{ changed }}) and oneid != '')
    {%- endif -%}
{%- endmacro %}

{% macro event_oneid_state_prepare() -%}
    create or replace table {{ event_oneid_state_relation(next=true) }}
    engine = MergeTree order by token
    as select
        token,
        oneid,
        shared,
        (select max(_ingested_at) from {{ source('identity', 'identity_links') }}) as links_through
    from {{ source('identity', 'identity_nodes') }} final
{%- endmacro %}

{% macro event_oneid_state_commit() -%}
    {%- set state = event_oneid_state_relation() -%}
    {%- if execute and adapter.get_relation(database=state.database, schema=state.schema, identifier=state.identifier) is not none -%}
        exchange tables {{ event_oneid_state_relation(next=true) }} and {{ state }}
    {%- else -%}
        rename table {{ event_oneid_state_relation(next=true) }} to {{ state }}
    {%- endif -%}
{%- endmacro %}

{% macro event_oneid_state_drop_old() -%}
    drop table if exists {{ event_oneid_state_relation(next=true) }}
{%- endmacro %}

{% macro event_oneid_drop_work_tables() -%}
    drop table if exists {{ event_oneid_state_relation(suffix='identity_affected') }}
{%- endmacro %}

{% macro event_oneid_drop_changed() -%}
    drop table if exists {{ event_oneid_state_relation(suffix='identity_changed') }}
{%- endmacro %}

{#- The change log downstream models read (see stg_identity__event_oneid): one row per OneID
    whose events this build re-resolved or dropped, '*' when it re-resolved every event. Runs
    before the snapshot is committed (it reads the previous one). -#}
{% macro event_oneid_changes_relation() -%}
    {{ return(event_oneid_state_relation(suffix='oneid_changes')) }}
{%- endmacro %}

{% macro event_oneid_changes_create() -%}
    create table if not exists {{ event_oneid_changes_relation() }} (oneid String, _changed_at DateTime64(3))
    engine = MergeTree order by _changed_at
{%- endmacro %}

{% macro event_oneid_changes_log() -%}
    insert into {{ event_oneid_changes_relation() }}
    {%- if not should_full_refresh() and event_oneid_has_state() %}
    select distinct oneid, now64(3) from {{ event_oneid_state_relation() }}
    where token in (select token from {{ event_oneid_state_relation(suffix='identity_changed') }}) and oneid != ''
    {%- else %}
    select '*', now64(3)
    {%- endif %}
{%- endmacro %}

{#- The change log of a given stg_identity__event_oneid relation (for downstream models). -#}
{% macro event_oneid_changes_relation_of(relation) -%}
    {{ return(relation.incorporate(path={"identifier": relation.identifier ~ '__oneid_changes'})) }}
{%- endmacro %}
