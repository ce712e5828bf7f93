{#- Claims and packaging returns with the OneID as of the build that wrote them and the return
    week. fct_returns publishes it; int_customer_returns re-joins the current OneID.
    Incremental: the returns ingested after the watermark (minus the lookback). -#}
{{ config(
    materialized='incremental',
    unique_key='event_id',
    order_by='(return_kind, returned_at, event_id)',
    partition_by='toYYYYMM(returned_at)',
) }}

with returns as (
    select * from {{ ref('stg_lastmile__returns') }}
    {{ lookback_filter(ref('stg_lastmile__return_versions')) }}
),

oneids as (
    select event_id, oneid from {{ ref('stg_identity__event_oneid') }}
    where event_type = 'return' and event_id in (select event_id from returns)
),

final as (
    select
        returns.event_id as event_id,
        returns.return_kind as return_kind,
        if(oneids.oneid = '', NULL, oneids.oneid) as oneid,
        returns.returned_at as returned_at,
        toDate({{ business_week('returns.returned_at') }}) as return_week,
        returns.order_id as order_id,
        returns.claim_reason as claim_reason,
        returns.claim_amount_cny as claim_amount_cny,
        returns.evidence_count as evidence_count,
        returns.box_id as box_id,
        returns.community_id as community_id,
        returns.packaging_pieces as packaging_pieces,
        returns._ingested_at as _ingested_at
    from returns
    left join oneids on oneids.event_id = returns.event_id
)

select * from final
{{ only_changed_rows('event_id', '_ingested_at') }}
