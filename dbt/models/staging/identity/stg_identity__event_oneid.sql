-- Materialised once per build: the source is a view that resolves every event over the
-- whole identity graph, and five facts join it. A table makes that one scan, not five.
{{ config(materialized='table', engine='MergeTree()', order_by='(event_type, event_id)') }}

with source as (
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

select * from renamed
