with source as (
    select * from {{ source('batches', 'batch_quality_alerts') }} FINAL
),

renamed as (
    select
        alert_id,
        batch_id,
        sku,
        origin,
        merchants,
        feedback as alert_feedback,
        bad as alert_bad,
        baseline_rate as alert_baseline_rate,
        p_value as alert_p_value,
        reasons as alert_reasons,
        sample_texts as alert_sample_texts,
        first_bad_at,
        alert_at as alerted_at,
        raised_by
    from source
)

select * from renamed
