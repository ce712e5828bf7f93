{#- Data tests of the big incremental models on what a build rewrote, not the whole table.

    An incremental build rewrites a sliver of fct_orders and friends; a not_null or unique test
    over the whole 1M-row table only re-checks rows that earlier builds already tested. So, in
    `dbt build` without --full-refresh, tests with a `where` config naming a placeholder (dbt's
    `where`, rendered by this override of get_where_subquery: the pattern of
    docs.getdbt.com/reference/resource-configs/where, "Custom logic") see

      * `__rewritten__`: the rows the model may have rewritten since its tests last passed,
        `<written_column> >= <since>`, for tests of each row on its own (not_null, accepted
        values, ranges, relationships to a fact that never loses rows);
      * `__rewritten_keys__`: every row whose key is among those rows' keys, old copies
        included, for unique tests: `<key> in (select <key> from <model> where <written_column> >= <since>)`.

    `written_column` grows with every write (the facts' ingestion watermark, the customer
    orders' `_built_at`, the OneIDs' `_resolved_at`). `since` is the newest value the model's
    tests had seen when they last all passed (`dbt_tests__tested_through`, advanced by
    on-run-end only then), never above what the model held when this build started, minus
    vars.lookback_minutes for an ingestion watermark (the model re-reads that much before its
    watermark). A failed build leaves `tested_through` alone, so the next one tests its rows
    again.

    Everything is tested on a full refresh (which also clears the record, `dbt run
    --full-refresh` included), on a model's first build, under `dbt test` (not `dbt build`)
    and for a model the record does not know. Relationships to reference data (reloaded on
    every build) keep testing every row. -#}

{#- model -> (key, column that grows with every write, whether that column is an ingestion
    time the model re-reads a lookback of: rows it rewrites may then carry values up to
    vars.lookback_minutes older than its watermark; a write time (`_built_at`, `_resolved_at`,
    now() of the build that wrote the row) needs no lookback). -#}
{% macro test_slice_models() -%}
    {{ return({
        'stg_identity__event_oneid': ('event_id', '_resolved_at', false),
        'fct_orders': ('order_id', '_source_ingested_at', true),
        'fct_order_lines': ('order_line_id', '_ingested_at', true),
        'fct_pickups': ('event_id', '_ingested_at', true),
        'fct_returns': ('event_id', '_ingested_at', true),
        'fct_reviews': ('event_id', '_ingested_at', true),
        'int_order_line_rollup': ('order_id', '_ingested_at', true),
        'int_customer_orders': ('order_id', '_built_at', false),
    }) }}
{%- endmacro %}

{% macro test_slices_through_relation() -%}
    {{ return(api.Relation.create(schema=target.schema, identifier='dbt_tests__tested_through')) }}
{%- endmacro %}

{% macro test_slices_relation() -%}
    {{ return(api.Relation.create(schema=target.schema, identifier='dbt_tests__slices')) }}
{%- endmacro %}

{% macro test_slice_relation_exists(name) -%}
    {{ return(adapter.get_relation(database='', schema=target.schema, identifier=name) is not none) }}
{%- endmacro %}

{#- on-run-start: the slices of this build (`dbt_tests__slices`, one row per model), or none. -#}
{% macro test_slices_start() -%}
    {%- if execute and flags.WHICH in ('build', 'run', 'test') %}
        {%- set through = test_slices_through_relation() %}
        {%- set slices = test_slices_relation() %}
        {%- do run_query("create table if not exists " ~ through ~ " (model String, through DateTime64(3), recorded_at DateTime64(3)) engine = MergeTree order by model") %}
        {%- do run_query("drop table if exists " ~ slices) %}
        {%- do run_query("create table " ~ slices ~ " (model String, since DateTime64(3)) engine = MergeTree order by model") %}
        {%- if flags.FULL_REFRESH %}
            {#- Whatever was selected, the tested record no longer describes the tables. -#}
            {%- do run_query("truncate table " ~ through) %}
        {%- elif flags.WHICH == 'build' %}
            {%- for model, spec in test_slice_models().items() if test_slice_relation_exists(model) %}
                {%- do run_query("insert into " ~ slices ~ " select " ~ dbt.string_literal(model) ~ ", least(max(through), "
                    ~ "(select toDateTime64(max(" ~ spec[1] ~ "), 3) from " ~ target.schema ~ "." ~ model ~ "))"
                    ~ (" - interval " ~ var('lookback_minutes') ~ " minute " if spec[2] else " ")
                    ~ "from " ~ through ~ " where model = " ~ dbt.string_literal(model) ~ " having count() > 0") %}
            {%- endfor %}
        {%- endif %}
    {%- endif %}
    select 1
{%- endmacro %}

{#- on-run-end of a build: for each model built in it whose every data test ran and passed,
    the newest write its tests have now seen. -#}
{% macro test_slices_end(results) -%}
    {%- if execute and flags.WHICH == 'build' %}
        {%- set status = {} %}
        {%- for r in results %}{% do status.update({r.node.unique_id: r.status | string}) %}{% endfor %}
        {%- set through = test_slices_through_relation() %}
        {%- for model, spec in test_slice_models().items() %}
            {%- set model_id = 'model.' ~ project_name ~ '.' ~ model %}
            {%- set tests = [] %}
            {%- for node in graph.nodes.values() if node.resource_type == 'test' and model_id in node.depends_on.nodes %}
                {%- do tests.append(node.unique_id) %}
            {%- endfor %}
            {#- (a list, not a flag: Jinja does not carry a `set` out of a for loop) -#}
            {%- set not_passed = [] %}
            {%- for t in tests if status.get(t) != 'pass' %}{% do not_passed.append(t) %}{% endfor %}
            {%- if status.get(model_id) == 'success' and tests | length > 0 and not not_passed and test_slice_relation_exists(model) %}
                {%- do run_query("insert into " ~ through ~ " select " ~ dbt.string_literal(model) ~ ", max(" ~ spec[1] ~ "), now64(3) from " ~ target.schema ~ "." ~ model) %}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
    select 1
{%- endmacro %}

{#- dbt's get_where_subquery (what a generic test's `model` argument becomes), with the
    placeholders above. -#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where') %}
    {%- if where and '__rewritten' in where %}
        {%- set spec = test_slice_models().get(relation.identifier) %}
        {%- set since = none %}
        {%- if execute and spec and flags.WHICH == 'build' and not flags.FULL_REFRESH and test_slice_relation_exists('dbt_tests__slices') %}
            {%- set found = run_query("select toUnixTimestamp64Milli(since) from " ~ test_slices_relation() ~ " where model = " ~ dbt.string_literal(relation.identifier)) %}
            {%- if found.rows | length > 0 %}{% set since = found.rows[0][0] %}{% endif %}
        {%- endif %}
        {%- if since is none %}
            {%- set where = where | replace('__rewritten_keys__', '1') | replace('__rewritten__', '1') %}
        {%- else %}
            {%- set written = spec[1] ~ " >= fromUnixTimestamp64Milli(toInt64(" ~ since ~ "))" %}
            {%- set where = where | replace('__rewritten_keys__', spec[0] ~ " in (select " ~ spec[0] ~ " from " ~ relation ~ " where " ~ written ~ ")")
                                  | replace('__rewritten__', written) %}
        {%- endif %}
        {%- if where == '1' %}
            {%- do return(relation) %}
        {%- endif %}
    {%- endif %}
    {%- if where %}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ where }}) dbt_subquery
        {%- endset -%}
        {%- do return(filtered) %}
    {%- else -%}
        {%- do return(relation) %}
    {%- endif -%}
{%- endmacro %}
