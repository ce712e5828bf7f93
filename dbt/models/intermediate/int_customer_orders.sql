{#- Orders with the *current* OneID of their buyer, and what their lines add up to
    (int_order_line_rollup). int_orders_enriched (like fct_orders) keeps the OneID as of the
    build that last wrote the row; OneIDs merge and split as evidence arrives, so every
    customer mart re-joins the current assignment here instead.
    A table: half a dozen customer models read it, and a view would redo the join each time.

    Incremental (delete+insert on order_id): a build rewrites only the orders
      * int_orders_enriched or int_order_line_rollup rewrote since this table's watermarks (its newest
        `_source_ingested_at` and `_lines_ingested_at`, minus vars.lookback_minutes);
      * whose order event stg_identity__event_oneid re-resolved since this table's previous
        build (`_resolved_at` after the newest `_built_at` here);
      * held here under a OneID stg_identity__event_oneid logged as changed since then
        (`stg_identity__event_oneid__oneid_changes`; '*' there means every order).
    An order among those whose event no longer resolves (its buyer forgotten) is written with
    an empty OneID, so delete+insert replaces its old row, and the post-hook drops it (only
    looked for when the change log has an entry since the previous build). Rows
    that come out as held are not rewritten. Same rows as a full refresh but `_built_at`. -#}
{{ config(
    materialized='incremental',
    unique_key='order_id',
    engine='MergeTree()',
    order_by='(oneid, ordered_at, order_id)',
    placeholders="oneid = ''", test_slice_key='order_id',
) }}

with

{% if is_incremental() %}
{%- set built = "(select max(_built_at) from " ~ this ~ ")" %}
{%- set changes = event_oneid_changes_relation_of(ref('stg_identity__event_oneid')) %}
{%- set logged = execute and adapter.get_relation(database=changes.database, schema=changes.schema, identifier=changes.identifier) is not none %}
{#- An order loses its OneID only when stg_identity__event_oneid dropped its event, and it
    logs a OneID (or '*') whenever it may drop one: without a log entry since the previous
    build there is nothing to remove, and the placeholder branch below is left out. -#}
{%- set may_drop = (not logged) or (run_query("select count() from " ~ changes ~ " where _changed_at > " ~ built).columns[0].values()[0] > 0) %}
affected as (
    {%- if logged %}
    select order_id from {{ ref('int_orders_enriched') }}
    where _source_ingested_at > {{ incremental_watermark('_source_ingested_at') }}
       or order_id in (select order_id from {{ ref('int_order_line_rollup') }}
                       where _ingested_at > {{ incremental_watermark('_lines_ingested_at') }})
       or event_id in (select event_id from {{ ref('stg_identity__event_oneid') }}
                       where event_type = 'order' and _resolved_at > {{ built }})
       or (select count() from {{ changes }} where oneid = '*' and _changed_at > {{ built }}) > 0
    union distinct
    select order_id from {{ this }}
    where oneid in (select oneid from {{ changes }} where _changed_at > {{ built }})
    {%- else %}
    -- no change log (stg_identity__event_oneid not built by this version yet): every order
    select order_id from {{ ref('int_orders_enriched') }}
    {%- endif %}
),
{% endif %}

orders as (
    select * from {{ ref('int_orders_enriched') }}
    {%- if is_incremental() %}
    where order_id in (select order_id from affected)
    {%- endif %}
),

oneids as (
    select event_id, oneid from {{ ref('stg_identity__event_oneid') }}
    where event_type = 'order'
    {%- if is_incremental() %} and event_id in (select event_id from orders){% endif %}
),

rollups as (
    select * from {{ ref('int_order_line_rollup') }}
    {%- if is_incremental() %}
    where order_id in (select order_id from orders)
    {%- endif %}
),

with_lines as (
    -- What the order's lines add up to (int_order_line_rollup): the customer marts need the
    -- OneID and the lines together, and joining them here costs only the rewritten orders.
    select
        orders.* except (oneid),
        rollups.lines as lines,
        rollups.traceable_lines as traceable_lines,
        rollups.batch_life_used as batch_life_used,
        rollups.line_amount_cny as line_amount_cny,
        rollups.impulse_amount_cny as impulse_amount_cny,
        rollups.healthy_amount_cny as healthy_amount_cny,
        rollups.categories as categories,
        rollups.category_amounts_cny as category_amounts_cny,
        rollups._ingested_at as _lines_ingested_at
    from orders
    left join rollups on rollups.order_id = orders.order_id
),

final as (
    select
        oneids.oneid as oneid,
        orders.*,
        now64(3) as _built_at
    from with_lines as orders
    inner join oneids on oneids.event_id = orders.event_id
    {%- if is_incremental() and may_drop %}
    union all
    -- Held orders whose event no longer resolves: placeholders (see above).
    select '' as oneid, orders.*, now64(3) as _built_at
    from with_lines as orders
    where event_id not in (select event_id from oneids)
      and order_id in (select order_id from {{ this }} where order_id in (select order_id from affected))
    {%- endif %}
)

select * from final
{{ only_changed_rows('order_id', 'cityHash64(toString(tuple(* except (_built_at))))',
                     within='order_id in (select order_id from affected)') }}
