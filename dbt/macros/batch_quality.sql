{#- Batch quality: the signal definition of batch_quality.yml (var batch_quality, passed by
    `lastmile transform`), so the marts count bad reviews and claims as the alerts do. -#}

{% macro batch_quality_list(values) -%}
    [{%- for v in values %}'{{ v | replace("'", "''") }}'{% if not loop.last %}, {% endif %}{% endfor -%}]
{%- endmacro %}

{#- A review bad for its batches: a quality tag, or at most bad_stars stars not explained by
    service tags alone (late, not cold, ...). -#}
{% macro is_bad_batch_review(stars, tags) -%}
    {%- set bq = var('batch_quality') -%}
    (hasAny({{ tags }}, {{ batch_quality_list(bq['quality_tags']) }})
     OR ({{ stars }} <= {{ bq['bad_stars'] }} AND NOT hasAny({{ tags }}, {{ batch_quality_list(bq['service_tags']) }})))
{%- endmacro %}

{#- A claim about the goods (quality, damage). -#}
{% macro is_quality_claim(reason) -%}
    ({{ reason }} IN {{ batch_quality_list(var('batch_quality')['claim_reasons']) | replace('[', '(') | replace(']', ')') }})
{%- endmacro %}
