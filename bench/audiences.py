"""Benchmark: refreshing 20 audiences over a million people against plain counts of them.

Generates the per-person table ``audience_traits`` (the dbt model's columns the audiences
below use) and raw orders resolved to people (``raw_order`` + ``event_oneid``, ~2.5 orders a
person over 60 days) directly in the embedded warehouse with ``numbers()``, then defines 20
audiences mixing ``sql:`` predicates and rules (trait comparisons, places, two event rules).

Timed, in this order, each one call of ``refresh_all`` over the 20 audiences (as
``lastmile audience refresh`` does):

* first refresh: every member is an entry (history, current members, versions written);
* unchanged refresh: the same data again (nothing to write);
* refresh after changes, what an hourly ingest and dbt build bring: ~1 % of the people have
  new traits (a rebuild of ``audience_traits``), ~1 % placed an order in the last hour
  (appended to ``raw_order`` with their OneID links), and "now" (``as_of``) moved on an hour,
  so orders also leave the 14- and 30-day windows; the hashing of every rebuilt traits row
  that finds who changed is part of this refresh.

Reference, measured in the same run: a plain ClickHouse ``SELECT count()`` of each of the 20
predicates (the median of 3 passes, before the changes; each refresh is timed once). The ratio is plain counts
time / refresh time: at 0.5 a refresh costs twice the counts, the price of membership
history and publishing.
``refresh_s`` and ``ratio_to_plain_counts`` are for the refresh after changes (the refresh a
dbt build brings); the first and unchanged refreshes are printed and in the JSON too.
After the last refresh every published audience is checked against its plain count at the
new ``as_of``.

Entry latency through the stream, measured in the same run: a development broker and a
``lastmile stream`` worker (as a subprocess, as in production, on a warehouse of its own)
with one ``freshness: event`` audience, "first order ever". Orders of neighbours nobody has
seen are produced one at a time; each one's latency runs from the broker's acknowledgement of
the order to the arrival of the person's ``enter`` message on ``lastmile.audience_changes``
(p50 and p95 over ``--entries`` orders; the first order, which also waits for the worker to
join its group, is not counted). Target: p95 <= 2 s.

    python bench/audiences.py [--people 1000000] [--seed 7] [--entries 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stream_latency import percentile, stream_latencies  # noqa: E402 - needs the path above

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)

#: name -> body (``sql:`` or ``rule:``) of the 20 audiences.
AUDIENCES = {
    "top_credit_tier": "rule: {trait: credit_tier, op: '=', value: gold}\n",
    "silver_or_gold": "rule: {trait: credit_tier, op: in, value: [gold, silver]}\n",
    "big_spenders": "sql: total_spend_cny >= 2000\n",
    "lapsed": "sql: days_since_last_purchase > 45 AND orders >= 3\n",
    "late_night_meal_pack": "rule:\n  all:\n    - {trait: top_category, op: '=', value: ready_meal}\n    - {trait: late_night_share, op: '>=', value: 0.33}\n",
    "packaging_returners": "rule: {trait: packaging_returns, op: '>=', value: 5}\n",
    "tea_lovers": "sql: tea_orders >= 4 AND top_category = 'tea'\n",
    "claimers": "sql: claims >= 2\n",
    "excursion_affected": "rule: {trait: excursion_orders, op: '>', value: 0}\n",
    "community_c7": "rule: {community: c0007}\n",
    "communities_north": "rule: {community: [c0010, c0011, c0012, c0013, c0014]}\n",
    "leader_l42_not_gold": "rule:\n  all:\n    - {leader: l00042}\n    - not: {trait: credit_tier, op: '=', value: gold}\n",
    "at_risk_spenders": "sql: spending_health_score < 0.3 AND impulse_share > 0.5\n",
    "happy_reviewers": "sql: avg_review_stars >= 4.5 AND reviews_written >= 2\n",
    "fruit_or_veg": "rule:\n  any:\n    - {trait: top_category, op: '=', value: fruit}\n    - {trait: top_category, op: '=', value: vegetables}\n",
    "new_this_month": "sql: first_seen_at >= toDateTime64('2026-05-01 00:00:00', 3, 'UTC')\n",
    "frequent": "sql: frequency >= 8 AND recency_days <= 14\n",
    "credit_climbers": "sql: credit_score BETWEEN 600 AND 700 AND orders >= 5\n",
    "regulars_3_in_30": "rule: {event: order, at_least: 3, days: 30}\n",
    "ready_meal_recent_buyers": "rule:\n  all:\n    - {trait: top_category, op: '=', value: ready_meal}\n    - {event: order, days: 14}\n",
}

#: A pseudo-random fraction in [0, 1) of person ``number`` for trait ``k`` (salted by ``s``).
_U = "(cityHash64(number, {k}, s) % 1000000) / 1000000.0"


def _traits_sql(people: int, seed: int, changed_salt: int) -> str:
    """``audience_traits`` rows; people with ``cityHash64(number, seed) % 100 = 0`` draw their
    traits with ``changed_salt`` (0: nobody changed)."""
    u = {k: _U.format(k=i) for i, k in enumerate(
        ["tier", "spend", "days", "orders", "cat", "late", "ret", "tea", "claims", "exc", "comm", "lead",
         "health", "imp", "stars", "rev", "seen", "freq", "rec", "score"])}
    return f"""
INSERT INTO audience_traits
SELECT
    concat('oid_', lower(hex(sipHash64(number, {seed})))) AS oneid,
    concat('c', leftPad(toString(toUInt32({u['comm']} * 500)), 4, '0')) AS home_community_id,
    concat('b', leftPad(toString(toUInt32({u['comm']} * 20000)), 6, '0')) AS home_building_id,
    concat('l', leftPad(toString(toUInt32({u['lead']} * 3000)), 5, '0')) AS last_leader_id,
    multiIf({u['tier']} < 0.16, 'gold', {u['tier']} < 0.45, 'silver', {u['tier']} < 0.8, 'bronze', 'starter') AS credit_tier,
    toUInt32({u['orders']} * 30) AS orders,
    round({u['spend']} * 4000, 2) AS total_spend_cny,
    toUInt32({u['days']} * 120) AS days_since_last_purchase,
    toUInt32({u['rec']} * 90) AS recency_days,
    toUInt32({u['freq']} * 20) AS frequency,
    ['ready_meal', 'tea', 'fruit', 'vegetables', 'meat', 'dairy'][1 + toUInt32({u['cat']} * 6)] AS top_category,
    {u['late']} AS late_night_share,
    toUInt32(pow({u['ret']}, 3) * 12) AS packaging_returns,
    toUInt32({u['tea']} * 8) AS tea_orders,
    toUInt32(pow({u['claims']}, 4) * 4) AS claims,
    toUInt32({u['exc']} < 0.03) AS excursion_orders,
    {u['health']} AS spending_health_score,
    {u['imp']} AS impulse_share,
    round(1 + {u['stars']} * 4, 1) AS avg_review_stars,
    toUInt32({u['rev']} * 6) AS reviews_written,
    toDateTime64('2025-06-01 00:00:00', 3, 'UTC') + toIntervalSecond(toUInt32({u['seen']} * 365 * 86400)) AS first_seen_at,
    toUInt32(300 + {u['score']} * 550) AS credit_score
FROM (SELECT number, if({changed_salt} != 0 AND cityHash64(number, {seed}) % 100 = 0, {changed_salt}, {seed}) AS s
      FROM numbers({people}))"""


def _create(warehouse, people: int, seed: int) -> None:
    """The traits and ~2.5 raw orders a person over the 60 days before NOW, resolved to people."""
    warehouse.command("DROP TABLE IF EXISTS audience_traits")
    warehouse.command("""CREATE TABLE audience_traits (
        oneid String, home_community_id String, home_building_id Nullable(String), last_leader_id Nullable(String),
        credit_tier String, orders UInt32, total_spend_cny Float64, days_since_last_purchase UInt32, recency_days UInt32,
        frequency UInt32, top_category String, late_night_share Float64, packaging_returns UInt32, tea_orders UInt32,
        claims UInt32, excursion_orders UInt32, spending_health_score Float64, impulse_share Float64,
        avg_review_stars Float64, reviews_written UInt32, first_seen_at DateTime64(3, 'UTC'), credit_score UInt32
    ) ENGINE = MergeTree ORDER BY oneid""")
    warehouse.command(_traits_sql(people, seed, 0))
    warehouse.command("CREATE TABLE IF NOT EXISTS event_oneid (event_type String, event_id String, oneid String) ENGINE = MergeTree ORDER BY event_id")
    orders = int(people * 2.5)
    warehouse.command(f"""
INSERT INTO raw_order (event_id, event_type, order_id, occurred_at)
SELECT concat('e', toString(number)), 'order', concat('o', toString(number)),
       toDateTime64('{NOW:%Y-%m-%d %H:%M:%S}', 3, 'UTC') - toIntervalSecond(cityHash64(number, {seed}, 1) % (60 * 86400))
FROM numbers({orders})""")
    warehouse.command(f"""
INSERT INTO event_oneid (event_type, event_id, oneid)
SELECT 'order', concat('e', toString(number)),
       concat('oid_', lower(hex(sipHash64(toUInt64(pow((cityHash64(number, {seed}, 2) % 1000000) / 1000000.0, 1.5) * {people}), {seed}))))
FROM numbers({orders})""")


def _new_orders(warehouse, people: int, seed: int, first: int, until: datetime) -> int:
    """Orders of ~1 % of the people in the hour up to ``until``, with their OneID links, as an
    ingest appends them; event ids from ``first`` on. Returns how many."""
    chosen = f"FROM numbers({people}) WHERE cityHash64(number, {seed}, 3) % 100 = 0"
    start = f"toDateTime64('{until:%Y-%m-%d %H:%M:%S}', 3, 'UTC')"
    warehouse.command(f"""
INSERT INTO raw_order (event_id, event_type, order_id, occurred_at)
SELECT concat('e', toString({first} + number)), 'order', concat('o', toString({first} + number)),
       {start} - toIntervalSecond(cityHash64(number, {seed}, 4) % 3600) {chosen}""")
    warehouse.command(f"""
INSERT INTO event_oneid (event_type, event_id, oneid)
SELECT 'order', concat('e', toString({first} + number)), concat('oid_', lower(hex(sipHash64(number, {seed})))) {chosen}""")
    return int(warehouse.scalar(f"SELECT count() {chosen}"))


#: The first order also waits for the worker to start and join its consumer group.
WORKER_START_S = 120.0
#: Longest wait for one entry once the worker runs.
ENTRY_TIMEOUT_S = 30.0


def entry_latencies(entries: int, work: Path) -> list[float]:
    """Seconds from producing a first order to its ``enter`` message, for ``entries`` orders
    through a running ``lastmile stream`` worker (the first, start-up one, left out)."""
    import orjson

    from lastmile.simulator import SimulationConfig, simulate
    from lastmile.streaming.audiences import CHANGES_TOPIC

    simulate(SimulationConfig(seed=3, orders=30, weeks=1, telemetry_every_s=3600), work / "sim")
    template = orjson.loads((work / "sim" / "events" / "order.jsonl").read_bytes().splitlines()[0])
    folder = work / "stream-audiences"
    folder.mkdir()
    (folder / "first_order_ever.yml").write_text(
        "name: first_order_ever\ndescription: Neighbours who placed their first order.\nowner: bench\n"
        "freshness: event\nrule: {event: order, at_least: 1, days: 3650}\n", encoding="utf-8")

    def order(n: int) -> dict:
        return {**template, "event_id": f"ev-bench-first-order-{n}", "order_id": f"ord-bench-first-order-{n}",
                "buyer": {"openid": f"oBenchFirstOrder{n:05d}", "unionid": f"uBenchFirstOrder{n:05d}"}}

    return stream_latencies(
        work, count=entries, event_type="order", make_event=order, output_topic=CHANGES_TOPIC,
        answers=lambda change, _order: change["change"] == "enter", offset_reset="earliest",
        worker_args=["--group", "bench-audiences", "--flush-seconds", "0.2", "--identity-seconds", "1", "--profiles-seconds", "0",
                     "--replenish-seconds", "0", "--no-features", "--judges", "0"],
        worker_env={"LASTMILE_AUDIENCES_DIR": str(folder)}, start_s=WORKER_START_S, timeout_s=ENTRY_TIMEOUT_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--entries", type=int, default=30, help="Orders timed through the stream (0: no stream measurement).")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="lastmile-bench-audiences-"))
    os.environ["LASTMILE_HOME"] = str(home)
    os.environ.pop("LASTMILE_CLICKHOUSE_URL", None)

    from lastmile.audiences import load_audiences, refresh_all
    from lastmile.audiences.definition import TRAITS_VIEW
    from lastmile.config import settings
    from lastmile.warehouse import connect, migrate

    warehouse = connect(settings())
    migrate(warehouse)
    start = time.perf_counter()
    _create(warehouse, args.people, args.seed)
    print(f"generated {args.people:,} people and {int(args.people * 2.5):,} orders in {time.perf_counter() - start:.1f} s")

    folder = home / "audiences"
    folder.mkdir()
    for name, body in AUDIENCES.items():
        (folder / f"{name}.yml").write_text(f"name: {name}\ndescription: bench audience\nowner: bench\n" + textwrap.dedent(body), encoding="utf-8")
    audiences = load_audiences(folder)
    kinds = {k: sum(a.kind == k for a in audiences) for k in ("sql", "rule")}
    as_of = NOW

    def plain_counts(as_of: datetime) -> tuple[float, dict[str, int]]:
        counts: dict[str, int] = {}
        begin = time.perf_counter()
        for a in audiences:
            compiled = a.compile()
            parameters = dict(compiled.parameters)
            if compiled.uses_events:
                parameters["as_of"] = as_of.replace(tzinfo=None)
            counts[a.name] = int(warehouse.scalar(f"SELECT count() FROM {TRAITS_VIEW} WHERE {compiled.predicate}", parameters))
        return time.perf_counter() - begin, counts

    plain_counts(as_of)  # warm-up: caches and marks loaded, as the refreshes will find them
    plain_s, counts = sorted(plain_counts(as_of) for _ in range(3))[1]
    print(f"plain counts of the 20 predicates ({kinds['sql']} sql, {kinds['rule']} rule): {plain_s:.3f} s; "
          f"sizes {min(counts.values()):,} .. {max(counts.values()):,}, {sum(counts.values()):,} memberships")

    def timed_refresh(label: str, day: int, as_of: datetime) -> tuple[float, int, int]:
        at = datetime(2026, 6, 1 + day, tzinfo=timezone.utc)
        begin = time.perf_counter()
        results = refresh_all(warehouse, audiences, as_of, now=at)
        seconds = time.perf_counter() - begin
        entries, exits = sum(r.entries for r in results), sum(r.exits for r in results)
        print(f"{label:<28} {seconds:7.3f} s  entries {entries:>9,}  exits {exits:>7,}  ratio to plain counts {plain_s / seconds:.2f}")
        return seconds, entries, exits

    first_s, _, _ = timed_refresh("first refresh", 0, as_of)
    unchanged_s, unchanged_entries, unchanged_exits = timed_refresh("unchanged refresh", 1, as_of)
    warehouse.command("TRUNCATE TABLE audience_traits")
    warehouse.command(_traits_sql(args.people, args.seed, args.seed + 1000))
    later = as_of + timedelta(hours=1)
    ordered = _new_orders(warehouse, args.people, args.seed, int(args.people * 2.5), later)
    print(f"changes: ~1 % of the people with new traits, {ordered:,} new orders in the hour up to {later:%Y-%m-%d %H:%M} (the new as_of)")
    changed_s, entries, exits = timed_refresh("refresh after changes", 2, later)

    _, counts_after = plain_counts(later)
    published = dict(warehouse.rows("SELECT audience, count() FROM audience_members FINAL GROUP BY audience"))
    exact = all(published.get(name, 0) == n for name, n in counts_after.items())
    print(f"published memberships equal the plain counts: {exact}; unchanged refresh wrote {unchanged_entries + unchanged_exits} changes")
    ratio = plain_s / changed_s
    print(f"target ratio >= 0.5: {'met' if ratio >= 0.5 else 'NOT met'}")
    shutil.rmtree(home, ignore_errors=True)  # the generated warehouse: several hundred MB
    p50 = p95 = None
    if args.entries > 0:
        work = Path(tempfile.mkdtemp(prefix="lastmile-bench-audience-stream-"))
        try:
            latencies = entry_latencies(args.entries, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
        print(f"entry latency (produce -> lastmile.audience_changes) over {len(latencies)} first orders: p50 {p50:.2f} s, "
              f"p95 {p95:.2f} s, max {max(latencies):.2f} s; target p95 <= 2 s: {'met' if p95 <= 2 else 'NOT met'}")
    print(json.dumps({
        "people": args.people,
        "refresh_s": round(changed_s, 3),
        "ratio_to_plain_counts": round(ratio, 3),
        "entry_latency_p95_s": None if p95 is None else round(p95, 3),
        "entry_latency_p50_s": None if p50 is None else round(p50, 3),
        "first_refresh_s": round(first_s, 3),
        "unchanged_refresh_s": round(unchanged_s, 3),
        "ratio_unchanged": round(plain_s / unchanged_s, 3),
        "plain_counts_s": round(plain_s, 3),
        "entries": entries,
        "exits": exits,
        "exact": exact,
        "new_orders": ordered,
    }))


if __name__ == "__main__":
    main()
