-- Optional source: empty until the PyFlink cold-chain job has written its tables.
with source as (
    select * from {{ optional_source('coldchain', 'cold_chain_incidents', {
        'incident_id': 'String', 'kind': 'String', 'compartment_id': 'String', 'locker_id': 'String',
        'community_id': 'String', 'product_class': 'String', 'started_at': "DateTime('UTC')",
        'ended_at': "DateTime('UTC')", 'duration_s': 'UInt32', 'severity': 'String',
        'temperature_peak': 'Float64', 'deviation_c': 'Float64', 'affected_orders': 'String', '_loaded_at': "DateTime64(3, 'UTC')"}, final=true) }}
),

renamed as (
    select
        assumeNotNull(incident_id) as incident_id,
        assumeNotNull(kind) as incident_kind,
        compartment_id,
        locker_id,
        assumeNotNull(community_id) as community_id,
        product_class,
        assumeNotNull(started_at) as started_at,
        ended_at,
        duration_s,
        severity,
        temperature_peak as temperature_peak_c,
        deviation_c,
        length(affected_orders) as affected_order_count
    from source
)

select * from renamed
