{{ config(tags=['features']) }}
-- Optional source: empty until `lastmile forecast` has written demand_forecast. Tagged
-- `features`: rebuilt by the feature build, which runs after the forecast.
-- argMax by made_at: an hour forecast twice keeps its newest values.
with source as (
    select * from {{ optional_source('stocking', 'demand_forecast', {
        'community_id': 'String', 'sku': 'String', 'hour': "DateTime('UTC')", 'p50': 'Float64', 'p90': 'Float64',
        'model_version': 'String', 'made_at': "DateTime64(3, 'UTC')"}) }}
),

newest as (
    select
        assumeNotNull(community_id) as community_id,
        assumeNotNull(sku) as sku,
        toDateTime(assumeNotNull(hour), 'UTC') as forecast_hour,
        toFloat64(argMax(p50, made_at)) as p50_units,
        toFloat64(argMax(p90, made_at)) as p90_units,
        max(made_at) as forecast_made_at
    from source
    group by community_id, sku, hour
)

select * from newest
