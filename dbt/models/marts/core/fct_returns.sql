{#- The returns fact: claims and packaging returns with the OneID as of the build that wrote them
    (int_returns_enriched, which builds it), written incrementally. -#}
{{ config(
    materialized='incremental',
    unique_key='event_id',
    test_slice_key='event_id',
    order_by='(return_kind, returned_at, event_id)',
    partition_by='toYYYYMM(returned_at)',
) }}

{{ published_rows(ref('int_returns_enriched'), 'event_id') }}
