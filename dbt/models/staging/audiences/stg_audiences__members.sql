-- Optional source: empty until the first audience refresh has created audience_members.
-- FINAL: the current members only (people who left are hidden by the is_deleted flag).
with source as (
    select * from {{ optional_source('audiences', 'audience_members', {
        'audience': 'String', 'oneid': 'String', 'version': 'String',
        'entered_at': "DateTime64(3, 'UTC')", 'updated_at': "DateTime64(3, 'UTC')", 'is_deleted': 'UInt8'}, final=true) }}
),

renamed as (
    select
        toString(assumeNotNull(audience)) as audience_name,
        assumeNotNull(oneid) as oneid,
        assumeNotNull(version) as audience_version,
        assumeNotNull(entered_at) as entered_at,
        assumeNotNull(updated_at) as confirmed_at
    from source
)

select * from renamed
