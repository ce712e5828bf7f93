-- Per cold compartment and business week: readings, and how many were inside the range of
-- the compartment's product class. Ambient compartments have no range and are left out.
{{ config(materialized='table', engine='MergeTree()', order_by='(community_id, week_start, compartment_id)') }}

with readings as (
    select
        compartment_id,
        locker_id,
        community_id,
        product_class,
        toDate({{ business_week('read_at') }}) as week_start,
        {{ in_temperature_range('product_class', 'temperature_c') }} as is_in_range,
        temperature_c
    from {{ ref('stg_lastmile__locker_telemetry') }}
    where product_class in ('chilled', 'frozen')
),

final as (
    select
        compartment_id,
        week_start,
        any(locker_id) as locker_id,
        any(community_id) as community_id,
        any(product_class) as product_class,
        count() as readings,
        countIf(is_in_range) as readings_in_range,
        countIf(is_in_range) / count() as in_range_share,
        max(temperature_c) as temperature_max_c
    from readings
    group by compartment_id, week_start
)

select * from final
