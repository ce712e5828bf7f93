-- Claims and packaging returns with the current OneID of the person behind them.
-- A table: half a dozen customer models read it, and a view would redo the join each time.
{{ config(materialized='table', engine='MergeTree()', order_by='(oneid, returned_at, event_id)') }}

with returns as (
    select * from {{ ref('int_returns_enriched') }}
),

oneids as (
    select event_id, oneid from {{ ref('stg_identity__event_oneid') }} where event_type = 'return'
),

final as (
    select
        oneids.oneid as oneid,
        returns.* except (oneid)
    from returns
    inner join oneids on oneids.event_id = returns.event_id
)

select * from final
