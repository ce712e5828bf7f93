"""OneID through the real pipeline: Beam ingest → identity tables → event_oneid, profiles, forget."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from lastmile.cli import app
from lastmile.config import Settings
from lastmile.identity.audit import audit
from lastmile.identity.forget import forget
from lastmile.identity.rules import Rules
from lastmile.identity.store import _STATE_SCHEMA, KeptState, _state_frames, rebuild, resolve_pending
from lastmile.ingest import Ingestor, write
from lastmile.privacy import Identifiers
from lastmile.warehouse import connect, migrate
from pipelines import beam_ingest
from tests.factories import event

runner = CliRunner()


def ingest(home: Settings, name: str, events: list[dict]) -> None:
    directory = home.home / name
    directory.mkdir(parents=True)
    by_type: dict[str, list[bytes]] = {}
    for e in events:
        by_type.setdefault(e["event_type"], []).append(orjson.dumps(e))
    for event_type, lines in by_type.items():
        (directory / f"{event_type}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    beam_ingest.run(directory)


def oneid_of(event_id: str) -> str:
    rows = connect().rows("SELECT oneid FROM event_oneid WHERE event_id = {e:String}", {"e": event_id})
    return rows[0][0] if rows else ""


def order(order_id: str, at: str, **buyer: str) -> dict:
    return event("order", occurred_at=at, order_id=order_id, buyer=buyer)


def pickup(order_id: str, at: str, role: str = "buyer", **collector: str) -> dict:
    return event("pickup", occurred_at=at, order_id=order_id, collector_role=role, collector=collector)


def test_ordered_in_the_mini_program_picked_up_with_a_phone_is_one_person(home: Settings) -> None:
    o = order("ord-1", "2026-11-02T10:00:00+08:00", openid="oA-1", unionid="uA-1")
    p = pickup("ord-1", "2026-11-02T18:00:00+08:00", phone="13912345678")
    family = pickup("ord-2", "2026-11-03T18:00:00+08:00", role="family", phone="13787654321")
    o2 = order("ord-2", "2026-11-03T10:00:00+08:00", openid="oA-1")
    ingest(home, "day1", [o, p, o2, family])
    assert oneid_of(o["event_id"]) == oneid_of(p["event_id"]) == oneid_of(o2["event_id"]) != ""
    assert oneid_of(family["event_id"]) != oneid_of(o["event_id"]), "a family member's phone is not the buyer's"


def test_group_chat_orders_on_the_leaders_phone_stay_with_each_neighbour(home: Settings) -> None:
    leader = "13600001111"
    orders = [order(f"ord-{i}", f"2026-11-0{1 + i % 5}T16:00:00+08:00", phone=leader, openid=f"oN-{i}") for i in range(9)]
    ingest(home, "chat", orders)
    owners = {oneid_of(o["event_id"]) for o in orders}
    assert len(owners) == 9, "the leader's phone must not glue neighbours together"
    shared = connect().rows("SELECT count() FROM identity_nodes FINAL WHERE shared AND id_type = 'phone'")
    assert shared == [(1,)]


def test_a_later_link_merges_profiles_and_the_older_oneid_survives(home: Settings) -> None:
    first = order("ord-1", "2026-10-01T10:00:00+08:00", openid="oB-1")
    second = order("ord-2", "2026-10-05T10:00:00+08:00", member_card="MC-88812")
    ingest(home, "before", [first, second])
    old_first, old_second = oneid_of(first["event_id"]), oneid_of(second["event_id"])
    assert old_first != old_second
    link = event("identify", occurred_at="2026-10-09T09:00:00+08:00", reason="issue_member_card",
                 identifiers={"openid": "oB-1", "member_card": "MC-88812"})
    ingest(home, "after", [link])
    assert oneid_of(first["event_id"]) == oneid_of(second["event_id"]) == old_first
    changes = connect().rows("SELECT kind, from_oneid, to_oneid FROM identity_changes FINAL WHERE kind = 'merge'")
    assert ("merge", old_second, old_first) in changes
    assert connect().rows("SELECT survivor FROM identity_oneids FINAL WHERE oneid = {o:String}", {"o": old_second}) == [(old_first,)]


def test_reingesting_adds_no_evidence_and_changes_nothing(home: Settings) -> None:
    events = [order("ord-1", "2026-10-01T10:00:00+08:00", openid="oC-1", phone="13911112222")]
    ingest(home, "a", events)
    before = connect().rows("SELECT token, oneid FROM identity_nodes FINAL ORDER BY token")
    (home.home / "a").rename(home.home / "b")
    beam_ingest.run(home.home / "b")
    runs = connect().rows("SELECT run, links_added FROM identity_runs ORDER BY run")
    assert runs[-1][1] == 0
    assert connect().rows("SELECT token, oneid FROM identity_nodes FINAL ORDER BY token") == before


def test_rule_change_splits_on_rebuild_and_logs_it(home: Settings) -> None:
    # The phone is the only bridge between the mini-program account and the member card.
    online = order("ord-1", "2026-10-01T10:00:00+08:00", openid="oD-1", phone="13933334444")
    store = order("ord-2", "2026-10-02T10:00:00+08:00", member_card="MC-4711", phone="13933334444")
    ingest(home, "a", [online, store])
    assert oneid_of(online["event_id"]) == oneid_of(store["event_id"])
    ids = Identifiers(home)
    stricter = Rules.from_dict({"blocked": {"values": {"phone": ["13933334444"]}}})
    outcome = rebuild(connect(), stricter, stricter.blocked_tokens(ids.hasher))
    assert outcome.splits == 1
    assert oneid_of(online["event_id"]) != oneid_of(store["event_id"])
    logged = connect().rows("SELECT kind FROM identity_changes FINAL WHERE kind = 'split'")
    assert logged == [("split",)]
    assert connect().rows("SELECT oneid FROM identity_nodes FINAL WHERE token = {t:String}",
                          {"t": ids.token("phone", "13933334444")}) == [("",)]


def test_forget_removes_the_person_anonymises_events_and_survives_replay(home: Settings) -> None:
    mine = [order("ord-1", "2026-10-01T10:00:00+08:00", openid="oE-1", phone="13955556666"),
            pickup("ord-1", "2026-10-01T18:00:00+08:00", phone="13955556666")]
    other = [order("ord-2", "2026-10-01T11:00:00+08:00", openid="oF-1", phone="13977778888")]
    (home.home / "events").mkdir(parents=True)
    ingest(home, "events/day", mine + other)
    (home.home / "events" / "day" / "broken.jsonl").write_text('{"event_type": "order", "buyer": {"phone": "13955556666"}\n')
    beam_ingest.run(home.home / "events" / "day")
    warehouse = connect()
    people = "SELECT uniqExact(oneid) FROM identity_nodes FINAL WHERE oneid != ''"
    assert warehouse.scalar(people) == 2
    ids = Identifiers(home)
    report = forget(warehouse, ids, "phone", "139 5555 6666")
    assert report.identifiers == 2 and report.touched["raw_order"] == 1 and report.touched["raw_pickup"] == 1
    assert report.touched["quarantine"] == 1
    token = ids.token("phone", "13955556666")
    assert warehouse.scalar("SELECT count() FROM raw_order WHERE buyer_phone = {t:String}", {"t": token}) == 0
    assert warehouse.count("raw_order") == 2, "the order still counts in sales"
    assert warehouse.scalar(people) == 1, "the person is gone from OneID"
    # replaying the same files must not bring the person back
    beam_ingest.run(home.home / "events" / "day")
    assert warehouse.scalar("SELECT count() FROM raw_order FINAL WHERE buyer_phone = {t:String}", {"t": token}) == 0
    assert warehouse.scalar("SELECT count() FROM identity_nodes FINAL WHERE token = {t:String}", {"t": token}) == 0
    again = forget(warehouse, Identifiers(home, forgotten=frozenset({token})), "phone", "13955556666")
    assert not again.anything
    assert warehouse.scalar("SELECT count() FROM forget_log") == 2


def test_audit_reports_shared_identifiers_and_sizes(home: Settings) -> None:
    leader = "13600002222"
    ingest(home, "chat", [order(f"ord-{i}", "2026-11-02T16:00:00+08:00", phone=leader, openid=f"oG-{i}") for i in range(8)])
    result = audit(connect())
    assert result.shared_identifiers == {"phone": 1}
    assert result.refused_by_reason["shared_identifier"] == 8
    assert result.most_connected[0]["shared"] is True and result.most_connected[0]["links"] == 8
    assert result.cluster_max == 1


def test_identity_cli_commands(home: Settings) -> None:
    ingest(home, "a", [order("ord-1", "2026-10-01T10:00:00+08:00", openid="oH-1", phone="13922223333")])
    assert json.loads(runner.invoke(app, ["identity", "audit", "--json"]).stdout)["profiles"] == 1
    assert json.loads(runner.invoke(app, ["identity", "rebuild", "--json"]).stdout)["splits"] == 0
    bad = runner.invoke(app, ["forget", "--phone", "0"])
    assert bad.exit_code == 2 and "not a usable identifier" in bad.output
    none = runner.invoke(app, ["forget"])
    assert none.exit_code == 2 and "exactly one identifier" in none.output
    done = json.loads(runner.invoke(app, ["forget", "--openid", "oH-1", "--json"]).stdout)
    assert done["identifiers"] == 2


@pytest.mark.slow
def test_default_simulation_meets_the_identity_targets(home: Settings) -> None:
    # The identity part of the main job: simulate the default community, ingest (OneID runs
    # in the ingest), evaluate against the simulator's ground truth.
    for command in (["simulate"], ["ingest"]):
        result = runner.invoke(app, [*command, "--json"])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["identity", "evaluate", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["pairwise_precision"] >= 0.995
    assert figures["pairwise_recall"] >= 0.97
    assert figures["largest_cluster_persons"] == 1, "the largest profile is one real person, not a blob"


@pytest.mark.parametrize("pickup_first", [False, True], ids=["order-then-pickup", "pickup-then-order"])
def test_pickup_by_the_buyer_links_across_ingests_in_either_order(home: Settings, pickup_first: bool) -> None:
    """The cross-event evidence is derived incrementally: a pickup arriving in a later ingest than
    its order (or a late order after its pickup) still makes one person."""
    o = order("ord-7", "2026-11-02T10:00:00+08:00", openid="oC-7")
    p = pickup("ord-7", "2026-11-02T18:00:00+08:00", phone="13911112222")
    other = order("ord-8", "2026-11-02T11:00:00+08:00", member_card="MC-00321")
    first, second = ([p], [o]) if pickup_first else ([o], [p])
    ingest(home, "first", [*first, other])
    ingest(home, "second", second)
    assert oneid_of(o["event_id"]) == oneid_of(p["event_id"]) != ""
    assert oneid_of(other["event_id"]) != oneid_of(o["event_id"])


def _state(warehouse) -> dict[str, list[tuple]]:
    """The versioned state tables as the warehouse holds them (latest version, run left out)."""
    return {table: sorted(warehouse.rows(f"SELECT {', '.join(cols)} FROM {table} FINAL"))
            for table, cols in _STATE_SCHEMA.items() if table in ("identity_nodes", "identity_edges", "identity_oneids")}


def test_a_kept_resolver_writes_only_what_changed_and_stays_what_the_warehouse_holds(home: Settings) -> None:
    warehouse = connect()
    migrate(warehouse)
    identifiers = Identifiers(home)
    ingestor, rules = Ingestor(identifiers), identifiers.rules
    blocked = rules.blocked_tokens(identifiers.hasher)
    steps = [
        [order("ord-1", "2026-10-01T10:00:00+08:00", openid="oK-1"), order("ord-2", "2026-10-02T10:00:00+08:00", member_card="MC-501")],
        [event("identify", occurred_at="2026-10-03T09:00:00+08:00", reason="issue_member_card",
               identifiers={"openid": "oK-1", "member_card": "MC-501"})],  # a merge
        [order("ord-3", "2026-10-04T10:00:00+08:00", openid="oK-2", phone="13955556666")],
    ]
    kept = KeptState()
    for i, events in enumerate(steps):
        write(warehouse, ingestor.process(f"test:{i}", [(n, orjson.dumps(e)) for n, e in enumerate(events)]))
        resolve_pending(warehouse, rules, blocked, kept)
        # What the kept resolver holds is what the warehouse holds, after every run.
        in_memory = {t: sorted(map(tuple, f.itertuples(index=False)))
                     for t, f in _state_frames(kept.resolver).items() if t in _state(warehouse)}
        assert in_memory == _state(warehouse), f"after step {i}"
    assert kept.loads == 1, "the state is read from the warehouse once, then kept"

    node_versions = connect().rows("SELECT count() FROM identity_nodes")[0][0]
    resolve_pending(warehouse, rules, blocked, kept)  # nothing new
    assert connect().rows("SELECT count() FROM identity_nodes")[0][0] == node_versions, "an idle run rewrote nodes"

    # Another resolver ran meanwhile (here: the batch path's): the kept copy is stale and is reloaded.
    resolve_pending(warehouse, rules, blocked)
    before = _state(warehouse)
    resolve_pending(warehouse, rules, blocked, kept)
    assert kept.loads == 2
    assert _state(warehouse) == before
    # And the kept runs left a state that loads back to the same resolution.
    rebuild(warehouse, rules, blocked)
    assert _state(warehouse) == before
    assert len({oid for _, oid in connect().rows(
        "SELECT token, oneid FROM identity_nodes FINAL WHERE oneid != ''")}) == 2, "oK-1+MC-501 merged, oK-2+phone"


def test_a_resolution_leaves_the_warehouse_lock_free_while_it_computes(home: Settings, monkeypatch) -> None:
    """The stream worker writes batches while OneID resolves: the resolver's arithmetic runs
    without the warehouse lock, and a batch written meanwhile is resolved by the next run."""
    import threading

    from lastmile.identity.resolver import IdentityResolver

    warehouse = connect()
    migrate(warehouse)
    identifiers = Identifiers(home)
    ingestor, rules = Ingestor(identifiers), identifiers.rules
    blocked = rules.blocked_tokens(identifiers.hasher)
    lock = threading.Lock()
    first = order("ord-1", "2026-10-01T10:00:00+08:00", openid="oK-1", phone="13911112222")
    meanwhile = order("ord-2", "2026-10-01T11:00:00+08:00", openid="oK-9")
    held_while_resolving: list[bool] = []
    real_resolve = IdentityResolver.resolve

    def resolve(self: IdentityResolver):
        held_while_resolving.append(lock.locked())
        if len(held_while_resolving) == 1:  # a batch arrives while the first run computes
            with lock:
                write(warehouse, ingestor.process("test:1", [(0, orjson.dumps(meanwhile))]))
        return real_resolve(self)

    monkeypatch.setattr(IdentityResolver, "resolve", resolve)
    write(warehouse, ingestor.process("test:0", [(0, orjson.dumps(first))]))
    kept = KeptState()
    resolve_pending(warehouse, rules, blocked, kept, lock=lock)
    assert oneid_of(first["event_id"]) != "" and oneid_of(meanwhile["event_id"]) == ""
    resolve_pending(warehouse, rules, blocked, kept, lock=lock)
    assert held_while_resolving == [False, False]
    assert not lock.locked()
    assert oneid_of(meanwhile["event_id"]) not in ("", oneid_of(first["event_id"])), "the batch written meanwhile is resolved next"
