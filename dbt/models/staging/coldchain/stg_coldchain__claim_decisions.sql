-- Optional source: empty until the PyFlink cold-chain job has written its tables.
with source as (
    select * from {{ optional_source('coldchain', 'claim_decisions', {
        'order_id': 'String', 'incident_id': 'String', 'decision': 'String', 'compensation_cny': 'Decimal(12, 2)',
        'order_total_cny': 'Decimal(12, 2)', 'customer_claim_event_id': 'String',
        'customer_claimed_cny': 'Decimal(12, 2)', 'severity': 'String', 'reason': 'String'}, final=true) }}
),

renamed as (
    select
        assumeNotNull(order_id) as order_id,
        incident_id,
        decision,
        compensation_cny,
        order_total_cny,
        nullIf(customer_claim_event_id, '') as customer_claim_event_id,
        customer_claimed_cny,
        severity,
        reason as decision_reason
    from source
)

select * from renamed
