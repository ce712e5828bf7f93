"""Event audiences refreshed among the people whose membership can have changed.

A small warehouse (40 people, ~120 orders over 60 days, ``event_oneid`` as a table written with
the events) goes through the builds a day brings: new events, "now" moving so orders leave the
windows, a traits rebuild, a OneID merge and a changed definition. After each refresh every
audience's published members, and its history replayed, equal the full evaluation of its rule.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from lastmile.audiences import load_audience, refresh, refresh_all, select_members
from lastmile.audiences import event_changes
from lastmile.warehouse import connect, migrate
from tests.test_audiences import _members, _traits, audience

NOW = datetime(2026, 5, 31, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)
CATEGORIES = ("ready_meal", "tea", "fruit")

RULES = {
    "regulars": "rule: {event: order, at_least: 3, days: 30}\n",
    "recent_ready_meal": "rule: {all: [{trait: top_category, op: '=', value: ready_meal}, {event: order, days: 14}]}\n",
    "quiet_this_week": "rule: {not: {event: order, hours: 168}}\n",
}


def _people(n: int, changed: dict[int, str] | None = None, without: int | None = None) -> list[tuple]:
    rows = []
    for i in range(n):
        if i == without:
            continue
        category = (changed or {}).get(i, CATEGORIES[i % 3])
        rows.append((f"p{i:02d}", "c1", "b1", "l1", "gold", 0, 0.1, category))
    return rows


class Orders:
    """Raw orders and their OneID links, appended as an ingest writes them."""

    def __init__(self, warehouse) -> None:
        self.warehouse = warehouse
        self.n = 0

    def add(self, rows: list[tuple[str, datetime]]) -> None:
        events = []
        for oneid, at in rows:
            self.n += 1
            events.append((f"e{self.n}", oneid, at))
        self.warehouse.insert_rows("raw_order", [(e, "order", f"o-{e}", at.replace(tzinfo=None)) for e, _, at in events],
                                   ["event_id", "event_type", "order_id", "occurred_at"])
        self.warehouse.insert_rows("event_oneid", [("order", e, o) for e, o, _ in events], ["event_type", "event_id", "oneid"])


def _replayed(warehouse, name: str) -> set[str]:
    members: set[str] = set()
    for oneid, change in warehouse.rows("SELECT oneid, toString(change) FROM audience_membership_changes "
                                        "WHERE audience = {a:String} ORDER BY at", {"a": name}):
        (members.add if change == "enter" else members.discard)(oneid)
    return members


@pytest.mark.parametrize("home", ["embedded"], indirect=True)
def test_incremental_refreshes_equal_full_evaluation_across_builds(home, tmp_path: Path) -> None:
    warehouse = connect(home)
    migrate(warehouse)
    warehouse.command("CREATE TABLE IF NOT EXISTS event_oneid (event_type String, event_id String, oneid String) "
                      "ENGINE = MergeTree ORDER BY event_id")
    _traits(warehouse, _people(42))
    rng = random.Random(5)
    orders = Orders(warehouse)
    orders.add([(f"p{rng.randrange(40):02d}", NOW - timedelta(seconds=rng.randrange(60 * 86400))) for _ in range(120)])
    audiences = {name: load_audience(audience(tmp_path, name, body)) for name, body in RULES.items()}
    step = [0]

    def build(as_of: datetime) -> dict[str, int]:
        step[0] += 1
        sizes = {}
        # together (candidates staged once for audiences published from the same state), and
        # each on its own on odd steps
        at = NOW + step[0] * timedelta(minutes=1)
        results = (refresh_all(warehouse, list(audiences.values()), as_of, now=at) if step[0] % 2 == 0
                   else [refresh(warehouse, a, as_of, now=at) for a in audiences.values()])
        for (name, a), result in zip(audiences.items(), results):
            full = select_members(warehouse, a, as_of=as_of)
            assert _members(warehouse, name) == _replayed(warehouse, name) == full, (step[0], name)
            assert result.size == len(full)
            sizes[name] = result.size
        return sizes

    build(NOW)
    stored = warehouse.rows("SELECT argMax(tuple(events_as_of, events_ingested, events_links), updated_at) "
                            "FROM audience_fingerprints WHERE audience = 'regulars'")[0][0]
    before = event_changes.EventState.stored(*stored)
    assert before.links.startswith("table/")
    # new orders: only their people are candidates while "now" stays
    orders.add([("p03", NOW - 2 * DAY), ("p03", NOW - 3 * DAY), ("p03", NOW - 4 * DAY), ("p07", NOW - DAY)])
    compiled = audiences["regulars"].compile()
    assert event_changes.stage_candidates(warehouse, "probe", compiled, before,
                                          event_changes.current_state(warehouse, compiled, NOW), traits_changed=False)
    keys = {k for (k,) in warehouse.rows(event_changes.AMONG, {"candidates": "probe"})}
    assert keys == {warehouse.scalar("SELECT sipHash64('p03')"), warehouse.scalar("SELECT sipHash64('p07')")}
    links = warehouse.rows(f"SELECT DISTINCT oneid FROM ({event_changes.AMONG_LINKS})", {"candidates": "probe"})
    assert sorted(r[0] for r in links) == ["p03", "p07"]
    event_changes.drop(warehouse, "probe")
    build(NOW)
    # "now" moves on: orders age out of the 7, 14 and 30 day windows, and the newest come in
    orders.add([(f"p{rng.randrange(40):02d}", NOW + timedelta(hours=rng.randrange(1, 72))) for _ in range(6)])
    build(NOW + 3 * DAY)
    build(NOW + 9 * DAY)
    # a traits rebuild: p00, p01 and p04 change category, p02 has no row any more
    _traits(warehouse, _people(42, changed={0: "tea", 1: "ready_meal", 4: "ready_meal"}, without=2))
    build(NOW + 9 * DAY)
    # OneID merges p40 (two recent orders) into p41 (one): their links are rewritten, which
    # is compared in full once, and p41 now has three
    orders.add([("p40", NOW + 8 * DAY), ("p40", NOW + 7 * DAY), ("p41", NOW + 6 * DAY)])
    build(NOW + 9 * DAY)
    warehouse.command("ALTER TABLE event_oneid UPDATE oneid = 'p41' WHERE oneid = 'p40' SETTINGS mutations_sync = 1")
    merged = build(NOW + 9 * DAY)
    assert "p41" in _members(warehouse, "regulars") and "p40" not in _members(warehouse, "regulars")
    # a new version of a rule is compared in full, the next refresh among candidates again
    audiences["regulars"] = load_audience(audience(tmp_path, "regulars", "rule: {event: order, at_least: 2, days: 30}\n"))
    assert build(NOW + 9 * DAY)["regulars"] >= merged["regulars"]
    orders.add([("p10", NOW + 9 * DAY - timedelta(hours=1)), ("p10", NOW + 8 * DAY)])
    build(NOW + 10 * DAY)
    assert "p10" in _members(warehouse, "regulars")
