{#- The business calendar, one definition for every model: days, weeks and months end at
    local midnight in var('business_tz') (LASTMILE_BUSINESS_TZ, which `lastmile transform`
    passes as --vars), and "late night" is the local hours from var('late_night_from_hour')
    to var('late_night_to_hour'). Python readers take the same zone from lastmile.config;
    lastmile.features.realtime cuts its live "today" with it. -#}

{#- The business day of an instant. -#}
{% macro business_date(ts) -%}
    toDate({{ ts }}, '{{ var("business_tz") }}')
{%- endmacro %}

{#- Was the instant in the late-night window (local time)? -#}
{% macro is_late_night(ts) -%}
    ({{ local_hour(ts) }} >= {{ var('late_night_from_hour') }} or {{ local_hour(ts) }} < {{ var('late_night_to_hour') }})
{%- endmacro %}

{#- The close of business day `d` (local midnight after it), as a UTC DateTime64(3): the
    moment a daily feature snapshot becomes known (point-in-time joins never see the day early). -#}
{% macro business_day_close(d) -%}
    toTimeZone(toDateTime64(({{ d }}) + 1, 3, '{{ var("business_tz") }}'), 'UTC')
{%- endmacro %}

{#- The local hour an instant falls in, as a DateTime in the business zone (the grain of the
    hourly stock fact and of the demand forecast). -#}
{% macro business_hour(ts) -%}
    toStartOfHour({{ ts }}, '{{ var("business_tz") }}')
{%- endmacro %}
