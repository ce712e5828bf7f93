"""Audiences: the file format and its errors, the rule language, and membership with history.

The warehouse tests write a small ``audience_traits`` table and a few raw orders by hand
(the dbt model's columns, fewer rows), so every expected member list is computed by reading
the rows above it. The dbt model itself is checked by tests/test_dbt_structure.py and the
marts' build.
"""

from __future__ import annotations

import json
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lastmile.audiences import AudienceError, evaluate, load_audience, load_audiences, refresh, select_members
from lastmile.audiences.definition import trait_columns
from lastmile.cli import app
from lastmile.config import Settings
from lastmile.warehouse import connect, migrate

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

NOW = datetime(2026, 5, 31, 12, 0, tzinfo=timezone.utc)

#: oneid, community, building, leader, credit_tier, packaging_returns, late_night_share, top_category
PEOPLE = [
    ("p1", "c1", "b1", "l1", "gold", 0, 0.5, "ready_meal"),
    ("p2", "c1", "b2", "l1", "silver", 4, 0.1, "tea"),
    ("p3", "c2", "b3", "l2", "gold", 5, 0.6, "ready_meal"),
    ("p4", "c2", "b3", "l2", "bronze", 1, 0.0, "fruit"),
    ("p5", "c1", "b1", "l1", "starter", 3, 0.4, "ready_meal"),
]


def write(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.yml"
    path.write_text(textwrap.dedent(body).lstrip(), encoding="utf-8")
    return path


def audience(folder: Path, name: str, definition: str) -> Path:
    return write(folder, name, f"name: {name}\ndescription: test audience\nowner: tests\n" + textwrap.dedent(definition).lstrip())


# --- files and the rule language (no warehouse) --------------------------------------------

def test_shipped_audiences_are_valid_and_use_documented_traits() -> None:
    audiences = load_audiences(ROOT / "audiences")
    assert {a.name for a in audiences} >= {"top_credit_tier", "late_night_meal_pack_regulars", "frequent_packaging_returners",
                                          "excursion_affected_neighbours", "lapsed_health_tea_buyers"}
    assert all(a.owner and a.description for a in audiences)
    assert "credit_tier" in trait_columns() and "phones" not in trait_columns()


@pytest.mark.parametrize("body, line, words", [
    ('rule:\n  all:\n    - {trait: credit_tier, op: "=", value: gold}\n    - {trait: shoe_size, op: ">", value: 3}\n', 7, "unknown trait 'shoe_size'"),
    ('rule:\n  trait: credit_tier\n  op: "~"\n  value: gold\n', 6, "unknown op '~'"),
    ('rule:\n  event: order\n  at_least: 0\n  days: 30\n', 6, "at least 1"),
    ('rule:\n  event: refund\n  days: 30\n', 5, "unknown event 'refund'"),
    ('rule:\n  all: []\n', 5, "non-empty list"),
    ('rule:\n  everyone: true\n', 5, "unknown rule everyone"),
    ('rule:\n  trait: credit_tier\n  op: in\n  value: gold\n', 7, "non-empty list of values"),
    ('rule:\n  community: c1\n  building: b1\n', 5, "stands alone"),
    ('sql: "credit_tier = \'gold\') OR (1 = 1"\n', 4, "closes a parenthesis"),
    ('sql: "1 = 1; DROP TABLE audience_members"\n', 4, "without ';'"),
    ('sql: "credit_tier = \'gold\' -- and more"\n', 4, "must not contain comments"),
    ('sql: >\n  credit_tier = \'a--b\'\n  AND 1 = 1 /* x */\n', 4, "must not contain comments"),
    ('sql: x = 1\nrule: {community: c1}\n', 1, "exactly one of 'sql'"),
    ('rule:\n  all:\n    - {trait: credit_tier, op: "=", value: gold\n', 7, "flow mapping on line 6"),
])
def test_errors_name_the_line_and_what_was_expected(tmp_path: Path, body: str, line: int, words: str) -> None:
    path = audience(tmp_path, "bad", body)
    with pytest.raises(AudienceError) as caught:
        load_audience(path)
    assert f"{path}:{line}:" in str(caught.value)
    assert words in str(caught.value)


def test_missing_fields_and_bad_names_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "a", "name: a\ndescription: d\nrule: {community: c1}\n")
    with pytest.raises(AudienceError, match="missing 'owner'"):
        load_audience(path)
    path = write(tmp_path, "b", "name: Top Tier\ndescription: d\nowner: o\nrule: {community: c1}\n")
    with pytest.raises(AudienceError, match=r"b.yml:1: name 'Top Tier'"):
        load_audience(path)
    folder = tmp_path / "twice"
    folder.mkdir()
    audience(folder, "c", "rule: {community: c1}\n")
    write(folder, "d", "name: c\ndescription: d\nowner: o\nrule: {community: c2}\n")
    with pytest.raises(AudienceError, match="also used by"):
        load_audiences(folder)


def test_rules_compile_to_parameters_never_to_literals(tmp_path: Path) -> None:
    hostile = "gold' OR 1=1 --"
    compiled = load_audience(audience(tmp_path, "x", f"""
        rule:
          any:
            - {{trait: credit_tier, op: "=", value: "{hostile}"}}
            - not: {{community: ["c1') OR ('1'='1"]}}
            - {{event: order, at_least: 2, days: 7}}
        """)).compile()
    assert "OR 1=1" not in compiled.predicate and "'1'='1" not in compiled.predicate
    assert hostile in compiled.parameters.values()
    assert compiled.uses_events and "{as_of:DateTime64(3, 'UTC')}" in compiled.predicate


def test_version_follows_the_definition_not_the_description(tmp_path: Path) -> None:
    first = load_audience(audience(tmp_path, "v", "rule: {trait: credit_tier, op: '=', value: gold}\n"))
    reworded = load_audience(write(tmp_path, "v", "name: v\ndescription: other words\nowner: tests\nrule: {trait: credit_tier, op: '=', value: gold}\n"))
    changed = load_audience(audience(tmp_path, "v", "rule: {trait: credit_tier, op: '=', value: silver}\n"))
    assert first.version == reworded.version != changed.version


def test_cli_validate_exits_2_with_the_line_and_no_traceback(tmp_path: Path) -> None:
    bad = audience(tmp_path, "bad", "rule:\n  trait: credit_tier\n  op: '=='\n  value: gold\n")
    result = runner.invoke(app, ["audience", "validate", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:6:" in result.output and "unknown op '=='" in result.output
    assert "Traceback" not in result.output
    assert runner.invoke(app, ["audience", "validate", str(ROOT / "audiences")]).exit_code == 0


# --- membership on a small warehouse -------------------------------------------------------

def _traits(warehouse, people: list[tuple]) -> None:
    warehouse.command("DROP TABLE IF EXISTS audience_traits")
    warehouse.command("""CREATE TABLE audience_traits (
        oneid String, home_community_id String, home_building_id Nullable(String), last_leader_id Nullable(String),
        credit_tier String, packaging_returns UInt64, late_night_share Float64, top_category String,
        first_seen_at DateTime64(3, 'UTC')
    ) ENGINE = MergeTree ORDER BY oneid""")
    # p2 and p4 were first seen on 2026-05-01 at 00:00 in Shanghai, the others the day before
    first_seen = {o: datetime(2026, 4, 30, 16 if o in ("p2", "p4") else 0) for o, *_ in people}
    warehouse.insert_rows("audience_traits", [(*p, first_seen[p[0]]) for p in people],
                          ["oneid", "home_community_id", "home_building_id", "last_leader_id", "credit_tier",
                           "packaging_returns", "late_night_share", "top_category", "first_seen_at"])


def _orders(warehouse, orders: list[tuple[str, str, datetime]]) -> None:
    """(event_id, oneid, occurred_at): raw orders and the person event_oneid resolves each to."""
    warehouse.insert_rows("raw_order", [(e, "order", f"o-{e}", at.replace(tzinfo=None)) for e, _, at in orders],
                          ["event_id", "event_type", "order_id", "occurred_at"])
    warehouse.insert_rows("event_oneid", [("order", e, oneid) for e, oneid, _ in orders], ["event_type", "event_id", "oneid"])


@pytest.fixture
def small(home: Settings):
    """The five people above; p1 ordered 3 times in the last 30 days (one a replayed copy),
    p3 3 times but one 40 days ago, p5 4 times; the newest order is at NOW."""
    warehouse = connect(home)
    migrate(warehouse)
    warehouse.command("CREATE TABLE IF NOT EXISTS event_oneid (event_type String, event_id String, oneid String) ENGINE = MergeTree ORDER BY event_id")
    _traits(warehouse, PEOPLE)
    day = timedelta(days=1)
    _orders(warehouse, [
        ("e1", "p1", NOW - 2 * day), ("e2", "p1", NOW - 10 * day), ("e3", "p1", NOW - 29 * day),
        ("e4", "p3", NOW - 1 * day), ("e5", "p3", NOW - 3 * day), ("e6", "p3", NOW - 40 * day),
        ("e7", "p5", NOW), ("e8", "p5", NOW - 5 * day), ("e9", "p5", NOW - 6 * day), ("e10", "p5", NOW - 7 * day),
    ])
    # a replayed copy of e1 (raw tables keep copies until they merge): it counts once
    warehouse.insert_rows("raw_order", [("e1", "order", "o-e1", (NOW - 2 * day).replace(tzinfo=None))],
                          ["event_id", "event_type", "order_id", "occurred_at"])
    return warehouse


def test_membership_equals_the_hand_computed_lists(small, tmp_path: Path) -> None:
    sql = load_audience(audience(tmp_path, "sql_aud", "sql: credit_tier = 'gold' OR packaging_returns >= 4\n"))
    assert select_members(small, sql) == {"p1", "p2", "p3"}
    rule = load_audience(audience(tmp_path, "rule_aud", """
        rule:
          all:
            - {trait: top_category, op: "=", value: ready_meal}
            - {trait: late_night_share, op: ">=", value: 0.4}
            - {event: order, at_least: 3, days: 30}
        """))
    # ready meals and late-night share: p1, p3, p5; three orders within 30 days: p1, p5 (p3's third is 40 days old)
    result = evaluate(small, rule)
    assert select_members(small, rule) == {"p1", "p5"}
    assert (result.size, result.sample_members, result.as_of) == (2, ["p1", "p5"], NOW)
    places = load_audience(audience(tmp_path, "places", """
        rule:
          any:
            - {building: b3}
            - all: [{leader: l1}, {not: {trait: credit_tier, op: in, value: [gold, silver]}}]
        """))
    assert select_members(small, places) == {"p3", "p4", "p5"}
    recent = load_audience(audience(tmp_path, "recent", "rule: {trait: first_seen_at, op: '>=', value: 2026-05-01T00:00:00+08:00}\n"))
    assert select_members(small, recent) == {"p2", "p4"}
    # a bare date is midnight UTC
    dated = load_audience(audience(tmp_path, "dated", "rule: {trait: first_seen_at, op: '>', value: 2026-04-30}\n"))
    assert select_members(small, dated) == {"p2", "p4"}
    # an earlier "now" moves the window to (NOW - 42 days, NOW - 12 days]: one order each of p1
    # (29 days old) and p3 (40 days old), none of p5; later orders do not count
    assert select_members(small, rule, as_of=NOW - 12 * timedelta(days=1)) == set()
    once = load_audience(audience(tmp_path, "once", "rule: {event: order, days: 30}\n"))
    assert select_members(small, once, as_of=NOW - 12 * timedelta(days=1)) == {"p1", "p3"}
    twice = load_audience(audience(tmp_path, "twice", "rule: {event: order, at_least: 2, days: 30}\n"))
    assert select_members(small, twice, as_of=NOW - 12 * timedelta(days=1)) == set()
    assert select_members(small, twice) == {"p1", "p3", "p5"}
    four = load_audience(audience(tmp_path, "four", "rule: {event: order, at_least: 4, days: 30}\n"))
    assert select_members(small, four) == {"p5"}  # p1's replayed order counts once


def test_a_predicate_the_warehouse_refuses_is_a_clear_error(small, tmp_path: Path) -> None:
    bad = load_audience(audience(tmp_path, "bad", "sql: shoe_size > 3\n"))
    with pytest.raises(AudienceError, match="bad.yml: the warehouse refused the audience's predicate"):
        evaluate(small, bad)
    quoted = load_audience(audience(tmp_path, "q", "sql: credit_tier IN ('gold', 'a--b', 'c;d')\n"))
    assert select_members(small, quoted) == {"p1", "p3"}


def test_hostile_values_select_nobody(small, tmp_path: Path) -> None:
    for value in ["gold' OR '1'='1", "gold\\' OR 1=1 --", "') OR 1=1 OR ('", "{p0:String}", "gold'); DROP TABLE audience_traits; --"]:
        hostile = load_audience(audience(tmp_path, "h", f"rule: {{trait: credit_tier, op: '=', value: {json.dumps(value)}}}\n"))
        assert hostile.rule["value"] == value
        assert select_members(small, hostile) == set()
    community = load_audience(audience(tmp_path, "h2", "rule: {community: [\"c1' OR 1=1 --\"]}\n"))
    assert select_members(small, community) == set()
    assert small.count("audience_traits", final=False) == len(PEOPLE)


def _changes(warehouse) -> list[tuple]:
    return warehouse.rows("SELECT audience, oneid, toString(change), version, reason FROM audience_membership_changes ORDER BY at, oneid")


def _members(warehouse, name: str) -> set[str]:
    return {r[0] for r in warehouse.rows("SELECT oneid FROM audience_members FINAL WHERE audience = {a:String}", {"a": name})}


def test_refresh_publishes_entries_and_exits_with_history_and_is_idempotent(small, tmp_path: Path) -> None:
    path = audience(tmp_path, "gold", "rule: {trait: credit_tier, op: '=', value: gold}\n")
    gold = load_audience(path)
    first = refresh(small, gold, now=NOW)
    assert (first.sample_entries, first.exits) == (["p1", "p3"], 0)
    assert _members(small, "gold") == {"p1", "p3"}
    written = _changes(small)
    assert [(o, c) for _, o, c, _, _ in written] == [("p1", "enter"), ("p3", "enter")]
    assert all(v == gold.version and gold.version in reason for _, _, _, v, reason in written)

    # nothing changed: nothing new is written anywhere
    counts = [small.count(t, final=False) for t in ("audience_membership_changes", "audience_members", "audience_versions")]
    again = refresh(small, gold, now=NOW + timedelta(hours=1))
    assert (again.entries, again.exits, again.size) == (0, 0, 2)
    assert [small.count(t, final=False) for t in ("audience_membership_changes", "audience_members", "audience_versions")] == counts

    # the data changes: p3 drops to silver, p4 rises to gold
    _traits(small, [p if p[0] not in ("p3", "p4") else (*p[:4], {"p3": "silver", "p4": "gold"}[p[0]], *p[5:]) for p in PEOPLE])
    assert evaluate(small, gold).summary()["sample_exits"] == ["p3"]  # preview: visible before publishing
    assert _members(small, "gold") == {"p1", "p3"}
    second = refresh(small, gold, now=NOW + timedelta(days=1))
    assert (second.sample_entries, second.sample_exits, second.size) == (["p4"], ["p3"], 2)
    assert _members(small, "gold") == {"p1", "p4"}
    assert [(o, c) for _, o, c, _, _ in _changes(small)] == [("p1", "enter"), ("p3", "enter"), ("p3", "exit"), ("p4", "enter")]


def test_a_changed_definition_is_a_new_version(small, tmp_path: Path) -> None:
    path = audience(tmp_path, "tier", "rule: {trait: credit_tier, op: '=', value: gold}\n")
    old = load_audience(path)
    refresh(small, old, now=NOW)
    new = load_audience(audience(tmp_path, "tier", "rule: {trait: credit_tier, op: in, value: [gold, silver]}\n"))
    preview = evaluate(small, new).summary()
    assert (preview["version"], preview["entries"], preview["exits"], preview["restated"], preview["sample_entries"]) == (new.version, 1, 0, 2, ["p2"])
    refresh(small, new, now=NOW + timedelta(days=1))
    assert small.rows("SELECT version FROM audience_versions WHERE audience = 'tier' ORDER BY published_at") == [(old.version,), (new.version,)]
    # members who stay are now held under the new version, with their entry time kept
    rows = small.rows("SELECT oneid, version, entered_at FROM audience_members FINAL WHERE audience = 'tier' ORDER BY oneid")
    assert [(o, v) for o, v, _ in rows] == [("p1", new.version), ("p2", new.version), ("p3", new.version)]
    assert rows[0][2] == NOW.replace(tzinfo=None) or rows[0][2] == NOW
    assert [(o, c, v) for _, o, c, v, _ in _changes(small)][-1] == ("p2", "enter", new.version)
    before = small.count("audience_members", final=False)
    refresh(small, new, now=NOW + timedelta(days=2))
    assert small.count("audience_members", final=False) == before


def test_cli_preview_and_refresh(small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "audiences"
    folder.mkdir()
    audience(folder, "gold", "rule: {trait: credit_tier, op: '=', value: gold}\n")
    monkeypatch.setenv("LASTMILE_AUDIENCES_DIR", str(folder))
    preview = runner.invoke(app, ["audience", "preview", "gold", "--json"])
    assert preview.exit_code == 0, preview.output
    assert '"size": 2' in preview.output and '"entries": 2' in preview.output
    assert runner.invoke(app, ["audience", "refresh", "--json"]).exit_code == 0
    assert _members(small, "gold") == {"p1", "p3"}
    missing = runner.invoke(app, ["audience", "preview", "nobody"])
    assert missing.exit_code == 2 and "no audience named nobody" in missing.output


# --- the shipped audiences on a dbt-built warehouse ----------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """A small simulation through OneID, then `dbt build` in-process (audience_traits and its tests)."""
    from lastmile import transform
    from tests.warehouses import simulated_home

    home = tmp_path_factory.mktemp("audiences") / "home"
    with simulated_home(home, ("run", "--orders", "2000", "--weeks", "4", "--through", "identity")) as cfg:
        result = transform.build(cfg)
        assert result.success, result.failures
        yield cfg


@pytest.mark.slow
def test_shipped_audiences_on_the_built_marts(built: Settings) -> None:
    warehouse = connect(built)
    assert warehouse.count("audience_traits", final=False) == warehouse.count("dim_customer", final=False) > 0
    audiences = {a.name: a for a in load_audiences(ROOT / "audiences")}
    results = {name: refresh(warehouse, a) for name, a in audiences.items()}
    gold = {r[0] for r in warehouse.rows("SELECT oneid FROM dim_customer WHERE credit_tier = 'gold'")}
    assert gold and select_members(warehouse, audiences["top_credit_tier"]) == gold == _members(warehouse, "top_credit_tier")

    # late-night meal-pack regulars, computed here from the marts and the raw orders
    people = warehouse.client.query_df("SELECT oneid, top_category, late_night_share FROM dim_customer")
    orders = warehouse.client.query_df(
        "SELECT e.oneid AS oneid, r.event_id AS event_id, r.occurred_at AS occurred_at FROM (SELECT event_id, occurred_at FROM raw_order FINAL) AS r "
        "INNER JOIN event_oneid AS e ON e.event_id = r.event_id AND e.event_type = 'order'")
    as_of = results["late_night_meal_pack_regulars"].as_of
    recent = orders[orders.occurred_at.dt.tz_localize(None) > (as_of - timedelta(days=30)).replace(tzinfo=None)]
    regular = set(recent.groupby("oneid").event_id.nunique().loc[lambda n: n >= 3].index)
    late = set(people[(people.top_category == "ready_meal") & (people.late_night_share >= 0.33)].oneid)
    assert regular & late and _members(warehouse, "late_night_meal_pack_regulars") == regular & late

    changes = warehouse.count("audience_membership_changes", final=False)
    assert changes == sum(r.size for r in results.values())
    assert all(not refresh(warehouse, a).entries for a in audiences.values())
    assert warehouse.count("audience_membership_changes", final=False) == changes


def test_refreshes_after_changes_publish_exactly_the_entries_and_exits(small, tmp_path: Path) -> None:
    """Several rounds of trait changes (some keeping the audience's size the same): after each
    refresh the published members are what the audience selects, and replaying the history
    (enter adds, exit removes) gives the same set, with no entry or exit written twice."""
    returners = load_audience(audience(tmp_path, "returners", "sql: packaging_returns >= 3\n"))
    rounds = [
        {"p2": 4, "p3": 5, "p5": 3},            # first publish: p2, p3, p5
        {"p2": 0, "p3": 5, "p5": 3, "p4": 6},   # p2 leaves, p4 enters: same size
        {"p2": 0, "p3": 5, "p5": 3, "p4": 6},   # unchanged
        {"p1": 9, "p2": 3},                     # p1 and p2 enter, p3, p4 and p5 leave
        {},                                     # everyone leaves
        {"p3": 3},
    ]
    for i, returns in enumerate(rounds):
        _traits(small, [(*p[:5], returns.get(p[0], 0), *p[6:]) for p in PEOPLE])
        expected = {o for o, n in returns.items() if n >= 3}
        published = _members(small, "returners") if i else set()
        result = refresh(small, returners, now=NOW + timedelta(days=i))
        assert (result.size, result.entries, result.exits) == (len(expected), len(expected - published), len(published - expected))
        assert _members(small, "returners") == expected
        replayed: set[str] = set()
        for _, oneid, change, _, _ in _changes(small):
            assert (oneid in replayed) == (change == "exit")
            (replayed.add if change == "enter" else replayed.discard)(oneid)
        assert replayed == expected


def test_a_membership_published_without_a_fingerprint_is_compared_in_full(small, tmp_path: Path) -> None:
    """A lost or missing fingerprint never makes a refresh skip a change or repeat an entry."""
    gold = load_audience(audience(tmp_path, "gold", "rule: {trait: credit_tier, op: '=', value: gold}\n"))
    refresh(small, gold, now=NOW)
    small.command("TRUNCATE TABLE audience_fingerprints")
    changes = small.count("audience_membership_changes", final=False)
    assert (refresh(small, gold, now=NOW + timedelta(hours=1)).entries, small.count("audience_membership_changes", final=False)) == (0, changes)
    _traits(small, [p if p[0] != "p1" else (*p[:4], "silver", *p[5:]) for p in PEOPLE])
    assert refresh(small, gold, now=NOW + timedelta(days=1)).sample_exits == ["p1"]
    assert _members(small, "gold") == {"p3"}


def test_event_rule_refreshes_publish_exact_entries_and_exits(small, tmp_path: Path) -> None:
    """Audiences counting events are compared and written in one evaluation: entries, exits,
    sizes and samples stay exact across new events and a later "now", and a refresh without
    a change writes nothing."""
    regulars = load_audience(audience(tmp_path, "regulars", "rule: {event: order, at_least: 3, days: 30}\n"))
    first = refresh(small, regulars, now=NOW)
    assert (first.size, first.entries, _members(small, "regulars")) == (2, 2, {"p1", "p5"})
    written = small.count("audience_membership_changes", final=False), small.count("audience_members", final=False)
    again = refresh(small, regulars, now=NOW + timedelta(hours=1))
    assert (again.size, again.entries, again.exits, again.sample_members) == (2, 0, 0, ["p1", "p5"])
    assert (small.count("audience_membership_changes", final=False), small.count("audience_members", final=False)) == written
    day = timedelta(days=1)
    _orders(small, [("e11", "p3", NOW - 4 * day), ("e12", "p3", NOW - 5 * day)])  # p3: 4 orders in 30 days
    second = refresh(small, regulars, NOW, now=NOW + day)
    assert (second.size, second.published_size, second.sample_entries, second.exits) == (3, 2, ["p3"], 0)
    # ten days later p1's order of 29 days ago has left the window: two orders, p1 exits
    later = refresh(small, regulars, NOW + 10 * day, now=NOW + 2 * day)
    expected = {"p3", "p5"}
    assert select_members(small, regulars, as_of=NOW + 10 * day) == _members(small, "regulars") == expected
    assert (later.size, later.published_size, later.sample_exits, later.entries) == (2, 3, ["p1"], 0)
    replayed: set[str] = set()
    for name, oneid, change, _, _ in _changes(small):
        (replayed.add if change == "enter" else replayed.discard)(oneid)
    assert replayed == expected


@pytest.mark.parametrize(("definition", "local"), [
    ("sql: packaging_returns >= 3 AND top_category IN ('tea', 'fruit')\n", True),
    ("rule: {all: [{trait: credit_tier, op: '=', value: gold}, {community: c1}]}\n", True),
    ("sql: first_seen_at >= now() - INTERVAL 30 DAY\n", False),
    ("sql: oneid IN (SELECT oneid FROM audience_members)\n", False),
    ("sql: packaging_returns > rand() % 3\n", False),
    ("rule: {event: order, at_least: 3, days: 30}\n", False),
])
def test_only_audiences_over_a_persons_own_row_are_evaluated_among_changed_people(tmp_path: Path, definition: str, local: bool) -> None:
    from lastmile.audiences.trait_changes import row_local

    assert row_local(load_audience(audience(tmp_path, "a", definition))) is local


def test_refreshes_among_changed_people_follow_every_build_in_between(small, tmp_path: Path) -> None:
    """Two audiences refreshed at different builds: each catches every change since the build
    it was published from (only the people who changed once it is the build before), a rebuild
    with the same rows writes nothing, and the history replays to the published members."""
    from lastmile.audiences.trait_changes import SNAPSHOTS

    gold = load_audience(audience(tmp_path, "gold", "rule: {trait: credit_tier, op: '=', value: gold}\n"))
    returners = load_audience(audience(tmp_path, "returners", "sql: packaging_returns >= 3\n"))

    def build(changes: dict[str, tuple[str, int]]) -> None:
        _traits(small, [(*p[:4], *changes.get(p[0], p[4:6]), *p[6:]) for p in PEOPLE])

    for i, a in enumerate((gold, returners)):
        refresh(small, a, now=NOW + timedelta(minutes=i))
    build({"p1": ("silver", 0), "p4": ("gold", 6)})          # gold: p1 out, p4 in; returners: p4 in
    assert (refresh(small, gold, now=NOW + timedelta(days=1)).sample_entries, _members(small, "gold")) == (["p4"], {"p3", "p4"})
    assert small.rows(f"SELECT changed FROM {SNAPSHOTS} ORDER BY created_at DESC LIMIT 1")[0][0] == 2
    build({"p1": ("silver", 0), "p4": ("gold", 6), "p2": ("gold", 0)})  # p2 joins gold, leaves returners
    # returners was published two builds ago: compared in full, both builds' changes caught
    second = refresh(small, returners, now=NOW + timedelta(days=2))
    assert (second.sample_entries, second.sample_exits, _members(small, "returners")) == (["p4"], ["p2"], {"p3", "p4", "p5"})
    third = refresh(small, gold, now=NOW + timedelta(days=3))   # among the one changed person
    assert (third.sample_entries, third.exits, third.size, _members(small, "gold")) == (["p2"], 0, 3, {"p2", "p3", "p4"})
    written = small.count("audience_membership_changes", final=False)
    build({"p1": ("silver", 0), "p4": ("gold", 6), "p2": ("gold", 0)})  # rebuilt, same rows
    assert [refresh(small, a, now=NOW + timedelta(days=4)).entries for a in (gold, returners)] == [0, 0]
    assert small.count("audience_membership_changes", final=False) == written
    for a in (gold, returners):
        replayed: set[str] = set()
        for name, oneid, change, _, _ in _changes(small):
            if name == a.name:
                (replayed.add if change == "enter" else replayed.discard)(oneid)
        assert replayed == _members(small, a.name) == select_members(small, a)


def test_refreshing_all_together_publishes_what_refreshing_each_would(small, tmp_path: Path) -> None:
    """``refresh_all`` writes the audiences over traits alone together after a rebuild: the same
    entries, exits, sizes and samples as refreshing each, event audiences refreshed on their own."""
    from lastmile.audiences import refresh_all

    folder = tmp_path / "together"
    folder.mkdir()
    audience(folder, "gold", "rule: {trait: credit_tier, op: '=', value: gold}\n")
    audience(folder, "returners", "sql: packaging_returns >= 3\n")
    audience(folder, "regulars", "rule: {event: order, at_least: 3, days: 30}\n")
    audiences = load_audiences(folder)
    first = refresh_all(small, audiences, now=NOW)
    assert [(r.audience.name, r.size, r.entries) for r in first] == [("gold", 2, 2), ("regulars", 2, 2), ("returners", 3, 3)]
    _traits(small, [(*p[:4], *{"p1": ("silver", 0), "p4": ("gold", 6)}.get(p[0], p[4:6]), *p[6:]) for p in PEOPLE])
    second = refresh_all(small, audiences, now=NOW + timedelta(days=1))
    assert [(r.size, r.published_size, r.sample_entries, r.sample_exits, r.sample_members) for r in second] == [
        (2, 2, ["p4"], ["p1"], ["p3", "p4"]), (2, 2, [], [], ["p1", "p5"]), (4, 3, ["p4"], [], ["p2", "p3", "p4", "p5"])]
    written = small.count("audience_membership_changes", final=False)
    again = refresh_all(small, audiences, now=NOW + timedelta(days=2))
    assert [(r.size, r.entries, r.exits) for r in again] == [(2, 0, 0), (2, 0, 0), (4, 0, 0)]
    assert small.count("audience_membership_changes", final=False) == written
    for a in audiences:
        assert _members(small, a.name) == select_members(small, a, as_of=NOW)
    # the stored fingerprints follow what was written: a preview finds nothing to change
    assert [(e.entries, e.exits, e.size) for e in (evaluate(small, a, as_of=NOW) for a in audiences)] == [(0, 0, 2), (0, 0, 2), (0, 0, 4)]
