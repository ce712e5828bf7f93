{#- The reviews fact: reviews with the OneID as of the build that wrote them and the complaint flag
    (int_reviews_enriched, which builds it), written incrementally. -#}
{{ config(
    materialized='incremental',
    unique_key='event_id',
    test_slice_key='event_id',
    order_by='(order_id, event_id)',
    partition_by='toYYYYMM(reviewed_at)',
) }}

{{ published_rows(ref('int_reviews_enriched'), 'event_id') }}
