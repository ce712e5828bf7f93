{#- One row per order with a review or a claim: its reviews and claims, and the bad reviews and
    quality claims counted as the batch-quality alerts count them (macros/batch_quality.sql,
    from batch_quality.yml). fct_batch_quality and supplier_scorecard both read it, so a batch
    and its supplier are judged on the same counts. -#}

with feedback as (
    select
        order_id,
        toUInt64(1) as reviews,
        toUInt64({{ is_bad_batch_review('stars', 'tags') }}) as bad_reviews,
        toUInt64(0) as claims,
        toUInt64(0) as quality_claims,
        toUInt64(0) as temperature_claims
    from {{ ref('int_reviews_enriched') }}

    union all

    select
        order_id,
        toUInt64(0) as reviews,
        toUInt64(0) as bad_reviews,
        toUInt64(1) as claims,
        toUInt64({{ is_quality_claim('claim_reason') }}) as quality_claims,
        toUInt64(claim_reason = 'temperature') as temperature_claims
    from {{ ref('int_returns_enriched') }}
    where return_kind = 'claim' and order_id != ''
),

final as (
    select
        order_id,
        sum(reviews) as reviews,
        sum(bad_reviews) as bad_reviews,
        sum(claims) as claims,
        sum(quality_claims) as quality_claims,
        sum(temperature_claims) as temperature_claims
    from feedback
    group by order_id
)

select * from final
