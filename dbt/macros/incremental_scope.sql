{#- Incremental scopes: the one mechanism behind every incremental model of this project.

    A model becomes incremental with dbt's usual config plus, when a build must first work out
    what to rewrite, one key:

        {{ config(materialized='incremental', unique_key='oneid', order_by='oneid',
                  incremental_scope='person') }}

    dbt_project.yml runs `incremental_scope_begin()` before and `incremental_scope_end()`
    after every model (pre-hook and post-hook); for a model without `incremental_scope` or
    `placeholders` they do nothing. The delete+insert step (macros/incremental_delete_insert.sql,
    the project default strategy) and the test slices (macros/test_slices.sql) read the same
    model config.

    The config keys:

    * `incremental_scope` — what a build rewrites, computed once before the model's query into
      small tables named after the model (`<model>__scope`, ...) and dropped after it
      (a CTE would be recomputed wherever the query names it):
        - 'person': the people whose orders int_customer_orders rewrote since the model's
          newest `_built_at`, every OneID stg_identity__event_oneid logged as changed since then
          (everyone when it logged '*'), plus what `scope_rules` adds. The model reads
          `customer_scope_filter()` / `customer_scope_people(rollup)` (macros/customer_scope.sql);
          unique_key='oneid'.
        - 'order': the orders of `scope_rules` (its `also`); the model reads
          `scope_relation()` (order_id); unique_key='order_id'.
        - 'series': the community and SKU series of `scope_rules` (its `also`), each rebuilt
          whole; the model reads `scope_relation()` (community_id, sku);
          unique_key='community_id, sku' (the stock facts, macros/stock_scope.sql).
        - 'identity_snapshot': the node snapshot of stg_identity__event_oneid
          (macros/event_oneid_state.sql).
        - 'reading_batch': the telemetry batch of int_compartment_weekly_compliance
          (macros/telemetry_batch.sql).
      A model without it (the event facts) finds its new rows from its own watermark
      (`lookback_filter`, `incremental_watermark` in macros/helpers.sql).
    * `scope_rules` — the name of a macro returning `{'also': <subquery of keys> or none,
      'everyone': <condition> or none}`: keys the scope adds for this model, and when the scope
      is every key (something global moved, e.g. the observation date).
    * `placeholders` — a condition on the model's rows: rows an incremental build wrote only so
      that delete+insert removes their old copies (a person left without data, an event that no
      longer resolves). They are deleted once the new rows are in.
    * `test_slice_key` — the column the model's `where: "__rewritten__"` data tests are sliced on
      in an incremental `dbt build` (macros/test_slices.sql). -#}

{#- dbt_project.yml's pre-hook of every model. Runs the preparation statements itself (a hook
    is one statement) and renders to nothing, so dbt has no hook left to run. -#}
{% macro incremental_scope_begin() -%}
    {%- set kind = config.get('incremental_scope') -%}
    {%- if execute and kind -%}
        {%- for statement in incremental_scope_steps(kind, 'begin') if statement | trim -%}
            {%- do run_query(statement) -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro %}

{#- dbt_project.yml's post-hook of every model: the kind's bookkeeping, then the placeholders. -#}
{% macro incremental_scope_end() -%}
    {%- set kind = config.get('incremental_scope') -%}
    {%- set placeholders = config.get('placeholders') -%}
    {%- if execute and (kind or placeholders) -%}
        {%- for statement in (incremental_scope_steps(kind, 'end') if kind else []) if statement | trim -%}
            {%- do run_query(statement) -%}
        {%- endfor -%}
        {%- if placeholders -%}
            {%- do delete_placeholder_rows(placeholders) -%}
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}

{#- The statements of each kind, in order (blank ones are skipped). -#}
{% macro incremental_scope_steps(kind, phase) -%}
    {%- if kind in ('person', 'order', 'series') -%}
        {{ return([scope_prepare(kind)] if phase == 'begin' else [scope_drop()]) }}
    {%- elif kind == 'identity_snapshot' -%}
        {{ return(event_oneid_state_begin() if phase == 'begin' else event_oneid_state_end()) }}
    {%- elif kind == 'reading_batch' -%}
        {{ return(telemetry_batch_begin() if phase == 'begin' else telemetry_batch_end()) }}
    {%- else -%}
        {{ exceptions.raise_compiler_error("incremental_scope '" ~ kind ~ "' of " ~ this ~ " is not one of person, order, series, identity_snapshot, reading_batch") }}
    {%- endif -%}
{%- endmacro %}

{#- `<this>__scope`: the keys an incremental build rewrites ('person', 'order' and 'series' scopes). -#}
{% macro scope_relation() -%}
    {{ return(this.incorporate(path={"identifier": this.identifier ~ '__scope'})) }}
{%- endmacro %}

{#- The model's `scope_rules` (see above), `{}` without. -#}
{% macro scope_rules() -%}
    {%- set name = config.get('scope_rules') -%}
    {%- if not name -%}{{ return({}) }}{%- endif -%}
    {%- if name not in context -%}
        {{ exceptions.raise_compiler_error("scope_rules of " ~ this ~ ": no macro named " ~ name) }}
    {%- endif -%}
    {{ return(context[name]()) }}
{%- endmacro %}

{#- The statement that fills `<this>__scope` on an incremental build ('' otherwise). -#}
{% macro scope_prepare(kind) -%}
    {%- if not is_incremental() -%}{{ return('') }}{%- endif -%}
    {%- set rules = scope_rules() -%}
    {%- if kind == 'person' -%}
        {{ return(customer_scope_prepare(rules.get('also'), rules.get('everyone') or 'false')) }}
    {%- else -%}
        {%- if not rules.get('also') -%}
            {{ exceptions.raise_compiler_error("the '" ~ kind ~ "' scope of " ~ this ~ " needs scope_rules with 'also'") }}
        {%- endif -%}
        {%- set key = 'order_id' if kind == 'order' else '(community_id, sku)' -%}
        {{ return("create or replace table " ~ scope_relation() ~ " engine = MergeTree order by " ~ key ~ " as " ~ rules['also']) }}
    {%- endif -%}
{%- endmacro %}

{% macro scope_drop() -%}
    drop table if exists {{ scope_relation() }}
{%- endmacro %}

{#- Rows an incremental build wrote only so that delete+insert would remove their old copy
    (e.g. an order whose buyer no longer resolves): deleted once the new rows are in. Nothing
    is run when there is none (a DELETE is a mutation over the whole table). -#}
{% macro delete_placeholder_rows(condition) -%}
    {%- set n = run_query("select count() from " ~ this ~ " where " ~ condition).columns[0].values()[0] if execute else 0 -%}
    {%- if n > 0 -%}
        {%- do run_query("delete from " ~ this ~ " where " ~ condition) -%}
    {%- endif -%}
{%- endmacro %}
