{#- Each packaging return attributed to the order its packaging most likely came with: the
    same person's latest order collected before the return (ASOF join). That order's leader,
    locker and week then get the credit in the service-temperature index.
    A table (small: one row per packaging return): as a view, the ASOF join over every collected
    order ran twice per build, in int_order_service_signals and again in its unique test.

    Incremental by person: a build recomputes every return of the people in its scope
    (macros/customer_scope.sql: rewritten orders, changed OneIDs, new or re-resolved packaging
    returns). The delete+insert key is the person; one left without packaging returns comes out
    as a placeholder (empty event_id) that the post-hook deletes, with any row `lastmile forget`
    left without a OneID. Same rows as a full refresh but `_built_at`. -#}
-- depends_on: {{ ref('stg_identity__event_oneid') }}
{{ config(
    materialized='incremental',
    unique_key='oneid',
    engine='MergeTree()',
    order_by='event_id',
    incremental_scope='person', scope_rules='packaging_attribution_scope_rules', placeholders="event_id = '' or oneid = ''",
) }}

with packaging as (
    select event_id, oneid, returned_at, packaging_pieces, community_id
    from {{ ref('int_customer_returns') }}
    where return_kind = 'packaging'
    {%- if is_incremental() %} and oneid in (select oneid from {{ scope_relation() }}){% endif %}
),

collected as (
    select oneid, order_id, assumeNotNull(first_picked_up_at) as picked_up_at
    from {{ ref('int_customer_orders') }}
    where is_collected
    {%- if is_incremental() %} and oneid in (select oneid from {{ scope_relation() }}){% endif %}
),

attributed as (
    select
        packaging.event_id as event_id,
        packaging.oneid as oneid,
        packaging.returned_at as returned_at,
        packaging.packaging_pieces as packaging_pieces,
        nullIf(collected.order_id, '') as order_id
    from packaging
    asof left join collected
        on packaging.oneid = collected.oneid and packaging.returned_at >= collected.picked_up_at
    {%- if is_incremental() %}
    union all
    -- people of the scope without packaging returns any more: placeholders
    select '' as event_id, oneid, toDateTime64(0, 3, 'UTC') as returned_at, 0 as packaging_pieces, NULL as order_id
    from {{ scope_relation() }}
    where oneid not in (select oneid from packaging)
    {%- endif %}
),

final as (
    select *, now64(3) as _built_at from attributed
)

select * from final
