{#- One row per order with what happened to it: the order joined to its pickups, claims and
    review, the buyer's OneID as of this build, the compartment's product class. fct_orders
    publishes it; the customer and service models read it here.

    Incremental: an order's row is rebuilt when the order or any event about it (pickup,
    claim, review) was ingested after the watermark (the newest ingestion the table has
    seen, minus vars.lookback_minutes), however late in event time that event is. -#}
-- depends_on: {{ ref('stg_lastmile__order_versions') }}, {{ ref('stg_lastmile__pickup_versions') }}
-- depends_on: {{ ref('stg_lastmile__return_versions') }}, {{ ref('stg_lastmile__review_versions') }}
{{ config(
    materialized='incremental',
    unique_key='order_id',
    order_by='(community_id, ordered_at, order_id)',
    partition_by='toYYYYMM(ordered_at)',
) }}

with

{% if is_incremental() %}
built as (
    select {{ incremental_watermark('_source_ingested_at') }} as watermark
),

in_scope as (
    -- From every version of the raw events, without FINAL (stg_lastmile__*_versions): the raw
    -- tables are ReplacingMergeTrees versioned by `_ingested_at`, so an event has a row newer
    -- than the watermark exactly when its deduplicated row is newer; no need to merge every
    -- part to find the new keys.
    select order_id from {{ ref('stg_lastmile__order_versions') }} where _ingested_at > (select watermark from built)
    union distinct
    select order_id from {{ ref('stg_lastmile__pickup_versions') }} where _ingested_at > (select watermark from built)
    union distinct
    select assumeNotNull(order_id) from {{ ref('stg_lastmile__return_versions') }}
    where return_kind = 'claim' and order_id is not null and _ingested_at > (select watermark from built)
    union distinct
    select order_id from {{ ref('stg_lastmile__review_versions') }} where _ingested_at > (select watermark from built)
),
{% endif %}

{#- The staging views read their raw table with FINAL: each is filtered on the ids of the
    in-scope orders' events (events_of_orders), a sorting-key column, so FINAL reads and merges
    only those (profiles.yml). ClickHouse inlines a CTE wherever it is named: in_scope is
    recomputed per filter, which costs little (four scans of `_ingested_at`). -#}

orders as (
    select * from {{ ref('stg_lastmile__orders') }}
    {%- if is_incremental() %}
    where {{ events_of_orders(ref('stg_lastmile__order_versions'), 'select order_id from in_scope') }}
    {%- endif %}
),

oneids as (
    select event_id, oneid from {{ ref('stg_identity__event_oneid') }}
    where event_type = 'order'
    {%- if is_incremental() %}
      and {{ events_of_orders(ref('stg_lastmile__order_versions'), 'select order_id from in_scope') }}
    {%- endif %}
),

pickups as (
    select
        order_id,
        min(picked_up_at) as first_picked_up_at,
        argMin(collector_role, picked_up_at) as collector_role,
        count() as pickup_events,
        max(_ingested_at) as _ingested_at
    from {{ ref('stg_lastmile__pickups') }}
    {%- if is_incremental() %}
    where {{ events_of_orders(ref('stg_lastmile__pickup_versions'), 'select order_id from in_scope') }}
    {%- endif %}
    group by order_id
),

claims as (
    select
        assumeNotNull(order_id) as order_id,
        count() as claim_count,
        sum(claim_amount_cny) as claimed_amount_cny,
        min(returned_at) as first_claimed_at,
        max(_ingested_at) as _ingested_at
    from {{ ref('stg_lastmile__returns') }}
    where return_kind = 'claim'
    {%- if is_incremental() %}
      and {{ events_of_orders(ref('stg_lastmile__return_versions'), 'select order_id from in_scope') }}
    {%- endif %}
    group by order_id
),

reviews as (
    select
        order_id,
        argMin(stars, reviewed_at) as review_stars,
        argMin(tags, reviewed_at) as review_tags,
        argMin(review_text, reviewed_at) as review_text,
        count() as review_count,
        max(_ingested_at) as _ingested_at
    from {{ ref('stg_lastmile__reviews') }}
    -- order_id leads raw_review's sorting key: FINAL reads only these orders' reviews as is
    {%- if is_incremental() %}
    where order_id in (select order_id from in_scope)
    {%- endif %}
    group by order_id
),

compartments as (
    select compartment_id, product_class from {{ ref('stg_reference__compartments') }}
),

final as (
    select
        orders.order_id as order_id,
        orders.event_id as event_id,
        if(oneids.oneid = '', NULL, oneids.oneid) as oneid,
        orders.ordered_at as ordered_at,
        toDate({{ business_week('orders.ordered_at') }}) as order_week,
        orders.community_id as community_id,
        orders.building_id as building_id,
        orders.leader_id as leader_id,
        orders.merchant_id as merchant_id,
        orders.locker_id as locker_id,
        orders.compartment_id as compartment_id,
        coalesce(nullIf(compartments.product_class, ''), 'unknown') as product_class,
        orders.channel as channel,
        orders.total_amount_cny as total_amount_cny,
        orders.line_count as line_count,
        orders.units as units,
        orders.slot_start_at as slot_start_at,
        orders.slot_end_at as slot_end_at,
        if(pickups.pickup_events = 0, NULL, pickups.first_picked_up_at) as first_picked_up_at,
        pickups.pickup_events > 0 as is_collected,
        pickups.pickup_events > 0 and pickups.first_picked_up_at between orders.slot_start_at and orders.slot_end_at as is_picked_up_in_slot,
        pickups.pickup_events > 0 and pickups.first_picked_up_at <= orders.slot_end_at + interval 2 hour as is_picked_up_on_time,
        if(pickups.pickup_events = 0, NULL, dateDiff('minute', orders.ordered_at, pickups.first_picked_up_at) / 60.0) as hours_to_pickup,
        if(pickups.pickup_events = 0, NULL, pickups.collector_role) as collector_role,
        claims.claim_count as claim_count,
        claims.claimed_amount_cny as claimed_amount_cny,
        if(reviews.review_count = 0, NULL, reviews.review_stars) as review_stars,
        reviews.review_tags as review_tags,
        if(reviews.review_count = 0, NULL, reviews.review_text) as review_text,
        reviews.review_count > 0 as is_reviewed,
        greatest(orders._ingested_at, pickups._ingested_at, claims._ingested_at, reviews._ingested_at) as _source_ingested_at
    from orders
    left join oneids on oneids.event_id = orders.event_id
    left join pickups on pickups.order_id = orders.order_id
    left join claims on claims.order_id = orders.order_id
    left join reviews on reviews.order_id = orders.order_id
    left join compartments on compartments.compartment_id = orders.compartment_id
)

select * from final
{#- An order's row is a function of its events; it is rewritten only if it comes out
    different (the OneID aside: it is the one of the build that wrote the row). -#}
{{ only_changed_rows('order_id', 'cityHash64(toString(tuple(* except (oneid))))',
                     within='order_id in (select order_id from in_scope)') }}
