{#- The 'person' incremental scope (macros/incremental_scope.sql): the people a per-person model
    rewrites in an incremental build (`<this>__scope`), computed once before its query into a
    small table and dropped after it (a CTE is recomputed wherever it is named). Everyone whose orders int_customer_orders rewrote since the mart's
    previous build (its newest `_built_at`), every OneID stg_identity__event_oneid logged as
    changed since then (merged, split, forgotten: their rows may have to go), plus the
    `also` keys of the model's scope_rules (a subquery of oneids). When its `everyone` (a condition) holds, the
    mart depends on something global that changed (the observation date, the catalogue), or
    the change log says every event was re-resolved ('*'): the scope is every person. -#}

{% macro customer_scope_prepare(extra=none, everyone='false') -%}
    {%- if is_incremental() -%}
    {%- set built = "(select max(_built_at) from " ~ this ~ ")" -%}
    {%- set changes = event_oneid_changes_relation_of(ref('stg_identity__event_oneid')) -%}
    {%- set logged = adapter.get_relation(database=changes.database, schema=changes.schema, identifier=changes.identifier) is not none -%}
    {%- set all_changed = "(select count() from " ~ changes ~ " where oneid = '*' and _changed_at > " ~ built ~ ") > 0" if logged else "true" -%}
    create or replace table {{ scope_relation() }} engine = MergeTree order by oneid as
    select oneid from {{ ref('int_customer_orders') }}
    where _built_at > {{ built }} or ({{ everyone }}) or {{ all_changed }}
    union distinct
    select oneid from {{ this }}
    where ({{ everyone }}) or {{ all_changed }}
    {%- if logged %}
    union distinct
    select oneid from {{ changes }} where _changed_at > {{ built }} and oneid != '*'
    {%- endif %}
    {%- if extra %}
    union distinct
    {{ extra }}
    {%- endif %}
    {%- endif -%}
{%- endmacro %}

{#- The people of the mart: on an incremental build, everyone in the scope, with the columns
    of `rollup` (a CTE with a oneid column) or, for someone it has no row for any more, its
    defaults (placeholders: the model's `placeholders` condition deletes them after the build, so the delete+insert drops their
    old rows); on a full build, `rollup` itself. -#}
{% macro customer_scope_people(rollup) -%}
    {%- if is_incremental() %}
    select scope.oneid as oneid, {{ rollup }}.* except (oneid)
    from {{ scope_relation() }} as scope
    left join {{ rollup }} on {{ rollup }}.oneid = scope.oneid
    {%- else %}
    select * from {{ rollup }}
    {%- endif %}
{%- endmacro %}

{#- `where` for the rows of a per-person input in the scope (nothing on a full build). -#}
{% macro customer_scope_filter(column='oneid') -%}
    {%- if is_incremental() %}where {{ column }} in (select oneid from {{ scope_relation() }}){% endif -%}
{%- endmacro %}

{#- customer_rfm: everyone when the observation date moved (T and the days since the last
    purchase count to it). -#}
{% macro customer_rfm_scope_rules() -%}
    {{ return({'everyone': '(select any(as_of_date) from ' ~ this ~ ') != (select as_of_date from ' ~ ref('int_observation_window') ~ ')'}) }}
{%- endmacro %}

{#- spending_health: its acceptance comes from recommendation events (no ingestion time to
    watch, so the acceptance as it would be now is compared with the stored one), and it
    depends on two globals: the observation date and the size of the catalogue. -#}
{% macro spending_health_scope_rules() -%}
    {%- set recs = ref('stg_recommender__recommendation_events') -%}
    {%- set acceptance = "select oneid, round(countIf(is_accepted) / count(), 4) as acceptance from " ~ recs ~ " group by oneid" -%}
    {%- set stored = "select oneid, assumeNotNull(recommendation_acceptance) as acceptance from " ~ this ~ " where recommendation_acceptance is not null" -%}
    {%- set extra -%}
    select oneid from ({{ acceptance }}) where (oneid, acceptance) not in ({{ stored }})
    union distinct
    select oneid from ({{ stored }}) where (oneid, acceptance) not in ({{ acceptance }})
    {%- endset -%}
    {%- set everyone -%}
    (select any(as_of_date) from {{ this }}) != (select as_of_date from {{ ref('int_observation_window') }})
    or (select any(_catalogue_categories) from {{ this }}) != (select uniqExact(category) from {{ ref('stg_reference__skus') }})
    {%- endset -%}
    {{ return({'also': extra, 'everyone': everyone}) }}
{%- endmacro %}

{#- int_customer_monthly_activity: besides the orders, its returns and reviews (new since the
    previous build, or re-resolved to another OneID), the claims on orders with a cold-chain
    decision (decisions change without a new event; there are few), and everyone when the
    observation date moved (it decides which orders count as uncollected). -#}
{% macro monthly_activity_scope_rules() -%}
    {%- set since = "(select max(_built_at) - interval " ~ var('lookback_minutes') ~ " minute from " ~ this ~ ")" -%}
    {%- set event_oneid = ref('stg_identity__event_oneid') -%}
    {%- set extra -%}
    select oneid from {{ ref('int_customer_returns') }} where _ingested_at > {{ since }}
    union distinct
    select oneid from {{ event_oneid }}
    where event_type in ('return', 'review') and _resolved_at > (select max(_built_at) from {{ this }})
    union distinct
    select oneid from {{ event_oneid }}
    where event_type = 'review'
      and event_id in (select event_id from {{ ref('int_reviews_enriched') }} where _ingested_at > {{ since }})
    union distinct
    select oneid from {{ ref('int_customer_returns') }}
    where return_kind = 'claim' and order_id in (select order_id from {{ ref('stg_coldchain__claim_decisions') }})
    {%- endset -%}
    {%- set everyone = "(select any(_as_of_date) from " ~ this ~ ") != (select as_of_date from " ~ ref('int_observation_window') ~ ")" -%}
    {{ return({'also': extra, 'everyone': everyone}) }}
{%- endmacro %}

{#- int_packaging_returns_attributed: besides the orders (a newly collected order can take over
    a return's attribution), the packaging returns new since the previous build or re-resolved
    to another OneID. -#}
{% macro packaging_attribution_scope_rules() -%}
    {%- set since = "(select max(_built_at) - interval " ~ var('lookback_minutes') ~ " minute from " ~ this ~ ")" -%}
    {%- set extra -%}
    select oneid from {{ ref('int_customer_returns') }} where return_kind = 'packaging' and _ingested_at > {{ since }}
    union distinct
    select oneid from {{ ref('stg_identity__event_oneid') }}
    where event_type = 'return' and _resolved_at > (select max(_built_at) from {{ this }})
    {%- endset -%}
    {{ return({'also': extra}) }}
{%- endmacro %}
