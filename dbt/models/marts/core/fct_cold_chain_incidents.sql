-- Cold-chain incidents from the PyFlink job, with community context. Tagged `coldchain`:
-- empty (not failing) while the job has not written cold_chain_incidents.
{{ config(tags=['coldchain'], order_by='(community_id, started_at, incident_id)') }}

with incidents as (
    select * from {{ ref('stg_coldchain__incidents') }}
),

communities as (
    select community_id, alliance_id from {{ ref('stg_reference__communities') }}
),

final as (
    select
        incidents.incident_id as incident_id,
        incidents.incident_kind as incident_kind,
        assumeNotNull(incidents.community_id) as community_id,
        communities.alliance_id as alliance_id,
        incidents.locker_id as locker_id,
        incidents.compartment_id as compartment_id,
        incidents.product_class as product_class,
        incidents.started_at as started_at,
        toDate({{ business_week('incidents.started_at') }}) as incident_week,
        incidents.ended_at as ended_at,
        incidents.duration_s as duration_s,
        incidents.severity as severity,
        incidents.temperature_peak_c as temperature_peak_c,
        incidents.deviation_c as deviation_c,
        incidents.affected_order_count as affected_order_count
    from incidents
    left join communities on communities.community_id = incidents.community_id
)

select * from final
