with source as (
    select * from {{ source('identity', 'identity_nodes') }} FINAL
),

renamed as (
    select
        token,
        id_type,
        fromUnixTimestamp64Milli(toInt64(first_seen_ms), 'UTC') as first_seen_at,
        fromUnixTimestamp64Milli(toInt64(last_seen_ms), 'UTC') as last_seen_at,
        assumeNotNull(oneid) as oneid,
        toBool(shared) as is_shared
    from source
    where oneid != ''
)

select * from renamed
