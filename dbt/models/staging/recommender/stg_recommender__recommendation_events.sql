-- Optional source: the recommender will write recommendation_events; until then this is
-- empty and spending_health.recommendation_acceptance stays NULL (never imputed).
with source as (
    select * from {{ optional_source('recommender', 'recommendation_events', {
        'event_id': 'String', 'oneid': 'String', 'shown_at': "DateTime64(3, 'UTC')",
        'sku': 'String', 'accepted_at': "DateTime64(3, 'UTC')"}) }}
),

renamed as (
    select
        assumeNotNull(event_id) as event_id,
        assumeNotNull(oneid) as oneid,
        shown_at,
        sku,
        accepted_at,
        accepted_at is not null as is_accepted
    from source
)

select * from renamed
