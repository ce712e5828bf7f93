{#- Generic tests written here because `dbt deps` cannot reach hub.getdbt.com. Each returns
    the offending rows; the test fails when there is at least one. -#}

{% test value_between(model, column_name, min_value, max_value, allow_null=true) %}
SELECT *
FROM {{ model }}
WHERE {% if not allow_null %}{{ column_name }} IS NULL OR {% endif %}
      {{ column_name }} < {{ min_value }} OR {{ column_name }} > {{ max_value }}
{% endtest %}

{% test expression_is_true(model, expression, where=none) %}
SELECT *
FROM {{ model }}
WHERE NOT ({{ expression }}){% if where %} AND ({{ where }}){% endif %}
{% endtest %}

{% test unique_combination(model, combination) %}
SELECT {{ combination | join(', ') }}, count() AS n
FROM {{ model }}
GROUP BY {{ combination | join(', ') }}
HAVING n > 1
{% endtest %}

{#- Share of rows matching `condition` within each `group_by` group must lie in [min_share,
    max_share]; groups smaller than `min_rows` are skipped (shares of tiny groups are coarse). -#}
{% test share_between(model, condition, group_by, min_share, max_share, min_rows=20, where=none) %}
SELECT {{ group_by }}, count() AS n, countIf({{ condition }}) / count() AS share
FROM {{ model }}
{% if where %}WHERE {{ where }}{% endif %}
GROUP BY {{ group_by }}
HAVING n >= {{ min_rows }} AND (share < {{ min_share }} OR share > {{ max_share }})
{% endtest %}

{#- At least `min_rows` rows: a mart that silently comes out empty is a failure. -#}
{% test not_empty(model, min_rows=1) %}
SELECT count() AS n FROM {{ model }} HAVING n < {{ min_rows }}
{% endtest %}
