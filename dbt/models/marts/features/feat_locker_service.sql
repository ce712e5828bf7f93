-- Feast view locker_service: pickup punctuality (is_collected, is_picked_up_on_time and
-- hours_to_pickup of int_orders_enriched, the orders fct_orders publishes) and cold-chain
-- readings per locker over 7 and 28 days; a dense locker x day grid from the locker's first
-- order, stamped at each day's close.
{{ config(order_by='(locker_id, event_timestamp)') }}

with observation as (
    select * from {{ ref('int_observation_window') }}
),

orders as (
    select
        locker_id,
        {{ business_date('ordered_at') }} as service_date,
        count() as orders,
        countIf(is_collected) as collected,
        countIf(is_picked_up_on_time) as on_time,
        sum(coalesce(hours_to_pickup, 0)) as hours_to_pickup
    from {{ ref('int_orders_enriched') }}
    group by locker_id, service_date
),

telemetry as (
    select
        locker_id,
        {{ business_date('read_at') }} as service_date,
        countIf(product_class != 'ambient') as cold_readings,
        countIf({{ in_temperature_range('product_class', 'temperature_c') }}) as cold_in_range,
        countIf(is_door_open) as door_open_readings
    from {{ ref('stg_lastmile__locker_telemetry') }}
    group by locker_id, service_date
),

grid as (
    select locker_id, toDate(arrayJoin(range(toUInt32(min(service_date)), toUInt32((select as_of_date from observation)) + 1))) as service_date
    from orders
    group by locker_id
),

joined as (
    select
        grid.locker_id as locker_id,
        grid.service_date as service_date,
        orders.orders as orders,
        orders.collected as collected,
        orders.on_time as on_time,
        orders.hours_to_pickup as hours_to_pickup,
        telemetry.cold_readings as cold_readings,
        telemetry.cold_in_range as cold_in_range,
        telemetry.door_open_readings as door_open_readings
    from grid
    left join orders on orders.locker_id = grid.locker_id and orders.service_date = grid.service_date
    left join telemetry on telemetry.locker_id = grid.locker_id and telemetry.service_date = grid.service_date
    settings join_use_nulls = 0
),

final as (
    select
        locker_id,
        {{ business_day_close('service_date') }} as event_timestamp,
        toInt64(sum(orders) over w7) as lk_orders_7d,
        round(sum(collected) over w28 / greatest(sum(orders) over w28, 1), 4) as lk_collected_share_28d,
        round(sum(on_time) over w28 / greatest(sum(collected) over w28, 1), 4) as lk_on_time_share_28d,
        round(sum(hours_to_pickup) over w28 / greatest(sum(collected) over w28, 1), 3) as lk_hours_to_pickup_28d,
        round(sum(cold_in_range) over w7 / greatest(sum(cold_readings) over w7, 1), 5) as lk_cold_in_range_share_7d,
        toInt64(sum(door_open_readings) over w7) as lk_door_open_readings_7d
    from joined
    window
        w7 as (partition by locker_id order by service_date rows between 6 preceding and current row),
        w28 as (partition by locker_id order by service_date rows between 27 preceding and current row)
)

select * from final
