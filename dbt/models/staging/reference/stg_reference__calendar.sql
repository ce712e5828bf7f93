with source as (
    select * from {{ source('reference', 'ref_calendar') }}
),

renamed as (
    select
        date as calendar_date,
        holiday as holiday_name,
        is_holiday,
        is_workday,
        weather
    from source
)

select * from renamed
