{#- Reviews with the OneID as of the build that wrote them, the review week and the complaint
    flag. fct_reviews publishes it; the service and conduct models read it here.
    Incremental: the reviews ingested after the watermark (minus the lookback). -#}
{{ config(
    materialized='incremental',
    unique_key='event_id',
    order_by='(order_id, event_id)',
    partition_by='toYYYYMM(reviewed_at)',
) }}

with reviews as (
    select * from {{ ref('stg_lastmile__reviews') }}
    {{ lookback_filter(ref('stg_lastmile__review_versions')) }}
),

oneids as (
    select event_id, oneid from {{ ref('stg_identity__event_oneid') }}
    where event_type = 'review' and event_id in (select event_id from reviews)
),

final as (
    select
        reviews.event_id as event_id,
        reviews.order_id as order_id,
        if(oneids.oneid = '', NULL, oneids.oneid) as oneid,
        reviews.reviewed_at as reviewed_at,
        toDate({{ business_week('reviews.reviewed_at') }}) as review_week,
        reviews.stars as stars,
        reviews.review_text as review_text,
        reviews.tags as tags,
        {{ is_negative_review('reviews.tags', 'reviews.review_text') }} as is_negative,
        reviews._ingested_at as _ingested_at
    from reviews
    left join oneids on oneids.event_id = reviews.event_id
)

select * from final
{{ only_changed_rows('event_id', '_ingested_at') }}
