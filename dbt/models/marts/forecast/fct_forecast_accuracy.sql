{#- The demand forecast against what sold, one row per community, SKU and forecast hour the
    sales already cover. The forecast is the newest one made for the hour
    (stg_stocking__demand_forecast); the sales are fct_stock_hourly's (0 for an hour with no
    row there: nothing sold and no stock-out). A censored hour (sold out for part of it) sold
    what stock allowed, not what was wanted: its error says little about the forecast, so it
    is flagged and the accuracy views leave it out.

    Hours after the newest hour of fct_stock_hourly are not known yet and are not listed.

    Tagged `features`, like the forecast's staging model: the whole-project build leaves both
    out, the feature build (and `lastmile transform --select
    "stg_stocking__demand_forecast fct_forecast_accuracy"`) builds them. -#}
{{ config(tags=['features']) }}

with forecast as (
    select * from {{ ref('stg_stocking__demand_forecast') }}
),

sales as (
    select community_id, sku, hour, toFloat64(units_sold) as units_sold, censored
    from {{ ref('fct_stock_hourly') }}
),

known as (
    select max(hour) as known_until from sales
),

joined as (
    select
        f.community_id as community_id,
        f.sku as sku,
        toDateTime(f.forecast_hour, '{{ var("business_tz") }}') as forecast_hour,
        f.p50_units as p50_units,
        f.p90_units as p90_units,
        coalesce(s.units_sold, 0) as units_sold,
        coalesce(s.censored, false) as censored,
        f.forecast_made_at as forecast_made_at
    from forecast as f
    cross join known
    left join sales as s
        on s.community_id = f.community_id and s.sku = f.sku and s.hour = f.forecast_hour
    where f.forecast_hour <= known.known_until
)

select
    community_id,
    sku,
    forecast_hour,
    p50_units,
    p90_units,
    units_sold,
    censored,
    p50_units - units_sold as p50_error,
    abs(p50_units - units_sold) as p50_abs_error,
    units_sold <= p90_units as within_p90,
    greatest(0, dateDiff('hour', forecast_made_at, forecast_hour)) as lead_hours,
    forecast_made_at
from joined
