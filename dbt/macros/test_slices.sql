{#- Data tests of the big incremental models on what builds rewrote, not the whole table.

    An incremental build rewrites a sliver of fct_orders and friends; a not_null or unique test
    over the whole 1M-row table only re-checks rows that earlier builds already tested. So:

      * the delete+insert step (macros/incremental_delete_insert.sql) appends the keys it wrote
        to `<model>__rewritten_keys`;
      * in `dbt build` without --full-refresh, a test with `where: "__rewritten__"` (dbt's
        `where` config, rendered by this override of get_where_subquery: the pattern of
        docs.getdbt.com/reference/resource-configs/where, "Custom logic") sees every row whose
        key is among those keys, `<key> in (select <key> from <model>__rewritten_keys)`: old
        copies of a rewritten key included, so a unique test sees them all;
      * that is the whole story only once every row of the model has passed its tests: the
        first build of a model, or any build after a full refresh, tests every row, and
        on-run-end records it (`dbt_tests__passed`);
      * on-run-end empties a model's keys once every data test of the model ran and passed in
        the build; after a failure they stay, so the next build tests them again.

    A full refresh (`dbt run --full-refresh` included) clears the record, as does a model
    table that went missing; `dbt test` on its own, and any model the record does not know,
    test every row.

    Only the tests that cost more than the key filter carry the placeholder: unique tests (a
    hash of every key: 0.63 s -> 0.07 s for the OneID table, 0.28 -> 0.12 s for the order lines,
    1M orders, 1% rewritten) and relationships to fct_orders (a fact that never loses rows).
    not_null, accepted values and ranges are a plain scan, cheaper over the whole table than
    behind the filter; relationships to reference data (reloaded on every build) must see every
    row anyway. -#}

{#- model -> the key its tests are sliced on: every model with a `test_slice_key` config
    (macros/incremental_scope.sql), in one pass over the graph. -#}
{% macro test_slice_models() -%}
    {%- set models = {} %}
    {%- for node in graph.nodes.values() if node.resource_type == 'model' and node.config.get('test_slice_key') %}
        {%- do models.update({node.name: node.config.get('test_slice_key')}) %}
    {%- endfor %}
    {{ return(models) }}
{%- endmacro %}

{#- The slice key of one model, found by its relation's name (the test's `model` argument). -#}
{% macro test_slice_key_of(identifier) -%}
    {%- set node = graph.nodes.get('model.' ~ project_name ~ '.' ~ identifier) %}
    {{ return(node.config.get('test_slice_key') if node else none) }}
{%- endmacro %}

{% macro test_slices_passed_relation() -%}
    {{ return(api.Relation.create(schema=target.schema, identifier='dbt_tests__passed')) }}
{%- endmacro %}

{% macro test_slice_keys_relation(model) -%}
    {{ return(api.Relation.create(schema=target.schema, identifier=model ~ '__rewritten_keys')) }}
{%- endmacro %}

{% macro test_slice_relation_exists(name) -%}
    {{ return(adapter.get_relation(database='', schema=target.schema, identifier=name) is not none) }}
{%- endmacro %}

{#- Called by the delete+insert step once the new rows are in. -#}
{% macro test_slice_record_keys(relation, new_data_relation) -%}
    {%- set key = config.get('test_slice_key') %}
    {%- if key %}
        {%- set keys = test_slice_keys_relation(relation.identifier) %}
        {%- do run_query("create table if not exists " ~ keys ~ " engine = MergeTree order by tuple() empty as select "
                         ~ key ~ " from " ~ new_data_relation) %}
        {%- do run_query("insert into " ~ keys ~ " select " ~ key ~ " from " ~ new_data_relation) %}
    {%- endif %}
{%- endmacro %}

{#- on-run-start -#}
{% macro test_slices_start() -%}
    {%- if execute and flags.WHICH in ('build', 'run', 'test') %}
        {%- set sliced_models = test_slice_models() %}
        {%- set passed = test_slices_passed_relation() %}
        {%- do run_query("create table if not exists " ~ passed ~ " (model String, passed_at DateTime64(3)) engine = MergeTree order by model") %}
        {%- if flags.FULL_REFRESH %}
            {#- Whatever was selected, the record no longer describes the tables. -#}
            {%- do run_query("truncate table " ~ passed) %}
        {%- else %}
            {%- for model in sliced_models if not test_slice_relation_exists(model) %}
                {%- do run_query("delete from " ~ passed ~ " where model = " ~ dbt.string_literal(model)) %}
            {%- endfor %}
        {%- endif %}
    {%- endif %}
    select 1
{%- endmacro %}

{#- on-run-end of a build: models whose every data test ran and passed have been tested in
    full (their rewritten keys included): record it, and start their keys afresh. -#}
{% macro test_slices_end(results) -%}
    {%- if execute and flags.WHICH == 'build' %}
        {%- set status = {} %}
        {%- for r in results %}{% do status.update({r.node.unique_id: r.status | string}) %}{% endfor %}
        {%- set passed = test_slices_passed_relation() %}
        {#- model id -> its data tests, in one pass over the graph (Jinja is slow: a pass per
            model cost most of a second) -#}
        {%- set sliced_models = test_slice_models() %}
        {%- set tests_of = {} %}
        {%- for model in sliced_models %}{% do tests_of.update({'model.' ~ project_name ~ '.' ~ model: []}) %}{% endfor %}
        {%- for node in graph.nodes.values() if node.resource_type == 'test' %}
            {%- for parent in node.depends_on.nodes if parent in tests_of %}{% do tests_of[parent].append(node.unique_id) %}{% endfor %}
        {%- endfor %}
        {%- for model in sliced_models %}
            {%- set tests = tests_of['model.' ~ project_name ~ '.' ~ model] %}
            {%- set not_passed = [] %}
            {%- for test in tests if status.get(test) != 'pass' %}{% do not_passed.append(test) %}{% endfor %}
            {#- (lists, not flags: Jinja does not carry a `set` out of a for loop) -#}
            {%- if tests and not not_passed and test_slice_relation_exists(model) %}
                {%- do run_query("insert into " ~ passed ~ " select " ~ dbt.string_literal(model) ~ ", now64(3) where "
                                 ~ dbt.string_literal(model) ~ " not in (select model from " ~ passed ~ ")") %}
                {%- if test_slice_relation_exists(model ~ '__rewritten_keys') %}
                    {%- do run_query("truncate table " ~ test_slice_keys_relation(model)) %}
                {%- endif %}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
    select 1
{%- endmacro %}

{#- dbt's get_where_subquery (what a generic test's `model` argument becomes), with the
    `__rewritten__` placeholder. -#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where') %}
    {%- if where and '__rewritten__' in where %}
        {%- set key = test_slice_key_of(relation.identifier) %}
        {%- set sliced = false %}
        {%- if execute and key and flags.WHICH == 'build' and not flags.FULL_REFRESH
               and test_slice_relation_exists('dbt_tests__passed') and test_slice_relation_exists(relation.identifier ~ '__rewritten_keys') %}
            {%- set sliced = run_query("select count() from " ~ test_slices_passed_relation() ~ " where model = "
                                       ~ dbt.string_literal(relation.identifier)).columns[0].values()[0] > 0 %}
        {%- endif %}
        {%- if sliced %}
            {%- set where = where | replace('__rewritten__', key ~ " in (select " ~ key ~ " from " ~ test_slice_keys_relation(relation.identifier) ~ ")") %}
        {%- else %}
            {%- set where = where | replace('__rewritten__', '1') %}
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
