{#- The OneID behind every event, materialised once per build (five facts and the customer
    models join it; the source view resolves each event over the whole identity graph).

    Incremental: an event's OneID depends only on its evidence (identity_links) and on the
    nodes of the identifiers in it (identity_nodes: oneid, shared). A build therefore
    re-resolves only the events
      * with evidence ingested after the previous build (minus vars.lookback_minutes);
      * naming an identifier whose node changed (merge, split, newly shared, forgotten):
        the nodes are compared with the snapshot the previous build kept
        (`<this>__identity_state`, see macros/event_oneid_state.sql);
      * whose stored OneID belonged to such an identifier (covers evidence deleted by
        `lastmile forget`).
    Those events are rewritten (delete+insert on the key); the events stored under a OneID
    one of those identifiers had are also written with an empty OneID, so one that no longer
    resolves loses its old row; the post-hook then drops every empty row. Same rows as a full refresh;
    without a snapshot (first build, or after a failed one) every event is re-resolved.

    For the per-order and per-person models downstream (int_customer_orders, ...), every row
    carries `_resolved_at` (when this table wrote it), and a post-hook appends to
    `<this>__oneid_changes` the OneIDs whose events were re-resolved or dropped ('*' when every
    event was: full refresh, no snapshot), so they can find what changed since their last build. -#}
{{ config(
    materialized='incremental',
    unique_key='event_type, event_id',
    engine='MergeTree()',
    order_by='(event_type, event_id)',
    incremental_scope='identity_snapshot', placeholders="oneid = ''", test_slice_key='event_id',
) }}

with

{% if is_incremental() %}
{%- if event_oneid_has_state() %}
{%- set affected = event_oneid_state_relation(suffix='identity_affected') %}
{%- set changed = event_oneid_state_relation(suffix='identity_changed') %}

resolved as (
    select event_type, event_id, assumeNotNull(oneid) as oneid from {{ source('identity', 'event_oneid') }}
    where event_id in (select event_id from {{ affected }}) and oneid != ''
),

-- Events stored under a OneID a changed identifier had (also re-resolved above): if one no
-- longer resolves at all (its identifiers forgotten with their evidence), this empty row
-- makes delete+insert remove the old one. An event that does resolve gets both rows; the
-- post-hook drops the empty one.
stale as (
    -- (filtered in a subquery: ClickHouse would resolve `oneid` in WHERE to the alias below)
    select event_type, event_id, '' as oneid
    from (
        select event_type, event_id from {{ this }}
        where oneid in (select oneid from {{ event_oneid_state_relation() }} where token in (select token from {{ changed }}) and oneid != '')
    )
),

renamed as (
    -- Re-resolved events that come out as stored are left alone: rewriting them would only
    -- cost a delete (a mutation over the whole table).
    select event_type, event_id, oneid from resolved
    where (event_type, event_id, oneid) not in (
        select event_type, event_id, oneid from {{ this }} where event_id in (select event_id from {{ affected }}))
    union all
    select event_type, event_id, oneid from stale
)
{%- else %}

-- No snapshot of the previous build: re-resolve every event; every stored row is rewritten
-- (an empty row for each, dropped by the post-hook once the resolved rows are in).
renamed as (
    select event_type, event_id, assumeNotNull(oneid) as oneid from {{ source('identity', 'event_oneid') }}
    where oneid != ''
    union all
    select event_type, event_id, '' as oneid from {{ this }}
)
{%- endif %}

{% else %}

source as (
    select * from {{ source('identity', 'event_oneid') }}
),

renamed as (
    select
        event_type,
        event_id,
        assumeNotNull(oneid) as oneid
    from source
    where oneid != ''
)

{% endif %}

select event_type, event_id, oneid, now64(3) as _resolved_at from renamed
