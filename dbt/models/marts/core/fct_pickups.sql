{{ config(
    materialized='incremental',
    unique_key='event_id',
    test_slice_key='event_id',
    order_by='(locker_id, picked_up_at, event_id)',
    partition_by='toYYYYMM(picked_up_at)',
) }}

with pickups as (
    select * from {{ ref('stg_lastmile__pickups') }}
    {{ lookback_filter(ref('stg_lastmile__pickup_versions')) }}
),

oneids as (
    select event_id, oneid from {{ ref('stg_identity__event_oneid') }}
    where event_type = 'pickup' and event_id in (select event_id from pickups)
),

final as (
    select
        pickups.event_id as event_id,
        pickups.order_id as order_id,
        if(oneids.oneid = '', NULL, oneids.oneid) as collector_oneid,
        pickups.picked_up_at as picked_up_at,
        toDate({{ business_week('pickups.picked_up_at') }}) as pickup_week,
        pickups.locker_id as locker_id,
        pickups.compartment_id as compartment_id,
        pickups.is_code_verified as is_code_verified,
        pickups.collector_role as collector_role,
        pickups._ingested_at as _ingested_at
    from pickups
    left join oneids on oneids.event_id = pickups.event_id
)

select * from final
{{ only_changed_rows('event_id', '_ingested_at') }}
