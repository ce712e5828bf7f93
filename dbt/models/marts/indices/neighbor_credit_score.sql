-- 邻里信用: 0-1000 per person, built from monthly conduct with a monthly decay, and a tier by
-- rank within the person's home community (top tier held inside 15-18%). See docs/indices.md.
{{ config(order_by='(home_community_id, oneid)') }}

{%- set decay = var('credit_monthly_decay') %}
{%- set top = var('credit_top_tier_share') %}

with observation as (
    select * from {{ ref('int_observation_window') }}
),

activity as (
    select * from {{ ref('int_customer_monthly_activity') }}
),

profiles as (
    select * from {{ ref('int_customer_profile') }}
),

monthly_points as (
    select
        oneid,
        activity_month,
        dateDiff('month', activity_month, (select as_of_month from observation)) as months_ago,
        10 * on_time_pickups + 8 * packaging_returns + 4 * reviews_written + 2 * reviews_with_text + 5 * active_weeks as earned_points,
        10 * uncollected_orders + 60 * excess_claims as penalty_points
    from activity
),

decayed as (
    select
        oneid,
        sum(earned_points * pow({{ decay }}, greatest(0, months_ago))) as earned,
        sum(penalty_points * pow({{ decay }}, greatest(0, months_ago))) as penalties
    from monthly_points
    group by oneid
),

scored as (
    select
        profiles.oneid as oneid,
        profiles.home_community_id as home_community_id,
        profiles.first_seen_at as first_seen_at,
        dateDiff('day', toDate(profiles.first_seen_at, '{{ var("business_tz") }}'), (select as_of_date from observation)) as tenure_days,
        round(coalesce(decayed.earned, 0), 2) as earned_points,
        round(coalesce(decayed.penalties, 0), 2) as penalty_points,
        round(100 * least(1, greatest(0, tenure_days) / 365), 2) as tenure_points,
        toUInt16(greatest(0, least(1000, round(400 + tenure_points + earned_points - penalty_points)))) as credit_score
    from profiles
    left join decayed on decayed.oneid = profiles.oneid
),

ranked as (
    select
        *,
        row_number() over (partition by home_community_id order by credit_score desc, first_seen_at asc, oneid asc) as community_rank,
        count() over (partition by home_community_id) as community_members
    from scored
),

final as (
    select
        oneid,
        home_community_id,
        credit_score,
        earned_points,
        penalty_points,
        tenure_points,
        tenure_days,
        community_rank,
        community_members,
        round(community_rank / community_members, 4) as community_rank_share,
        -- Top tier size: the target share, forced inside [15%, 18%] whenever an integer fits.
        greatest(1, toUInt64(if(ceil(0.15 * community_members) <= floor(0.18 * community_members),
            least(floor(0.18 * community_members), greatest(ceil(0.15 * community_members), round({{ top }} * community_members))),
            round({{ top }} * community_members)))) as top_tier_size,
        multiIf(community_rank <= top_tier_size, 'gold',
                community_rank <= round(0.50 * community_members), 'silver',
                community_rank <= round(0.85 * community_members), 'bronze',
                'starter') as credit_tier,
        (select as_of_month from observation) as as_of_month
    from ranked
)

select * from final
