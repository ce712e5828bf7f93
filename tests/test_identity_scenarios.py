"""The OneID scenario catalogue: small realistic event stories and the profiles they must give.

Each scenario is a list of steps (add events, resolve, rebuild under new rules, forget) and
the expected clusters after the last step, written with identifiers as typed. Extra checks
(refusal reasons, change-log kinds, which identifier names the OneID) pin down the rules.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from lastmile.identity import IdentityResolver, Rules
from lastmile.identity.state import from_rows, to_rows

from lastmile.contracts import EventParser

from tests.factories import event
from tests.test_identity_support import (
    HASHER,
    Ident,
    claim,
    feed,
    identify,
    oneid_named_after,
    order,
    partition_of,
    pickup,
    resolver_for,
    review,
    token,
)

U1, U2, U0 = ("unionid", "oU-1a2b"), ("unionid", "oU-9z8y"), ("unionid", "oU-0000x")
O1, O2, O3, O4 = ("openid", "oQ-01"), ("openid", "oQ-02"), ("openid", "oQ-03"), ("openid", "oQ-04")
P1, P2, P_NEW = ("phone", "138 0013 8000"), ("phone", "+86 139-1234-5678"), ("phone", "8615012345678")
M1, M2 = ("member_card", "VIP 0001"), ("member_card", "VIP-0002")
D1, D2 = ("device_id", "A1B2-C3D4"), ("device_id", "ffee-0011")
LEADER = ("phone", "186 2000 1111")
TABLET = ("device_id", "TAB-HOUSE-7")


def ids(*idents: Ident) -> dict[str, str]:
    """Identifier object for an event: {type: value as typed}."""
    return {t: v for t, v in idents}


@dataclass
class Scenario:
    name: str
    steps: list[tuple[str, Any]]
    expected: list[list[Ident]]
    rules: Rules | None = None
    refused: dict[str, int] = field(default_factory=dict)  # reason -> links/values refused
    last_change_kinds: list[str] | None = None
    named_after: list[Ident] = field(default_factory=list)  # these identifiers name their profile


def run(s: Scenario) -> tuple[IdentityResolver, Any]:
    resolver = resolver_for(s.rules)
    report = None
    for action, arg in s.steps:
        if action == "add":
            feed(resolver, arg)
        elif action == "resolve":
            report = resolver.resolve()
        elif action == "rebuild":
            rules, blocked = arg
            blocked_tokens = (rules or resolver.rules).blocked_tokens(HASHER) | {token(b) for b in blocked}
            report = resolver.rebuild(rules, blocked_tokens)
        elif action == "forget":
            report = resolver.forget([token(i) for i in arg]).report
        else:  # pragma: no cover
            raise ValueError(action)
    if not s.steps or s.steps[-1][0] == "add":
        report = resolver.resolve()
    return resolver, report


def refusal_counts(resolver: IdentityResolver) -> Counter[str]:
    rows = to_rows(resolver)
    counts: Counter[str] = Counter(rows["identity_refusals"]["reason"])
    edges = rows["identity_edges"]
    counts.update(edges.loc[edges["status"] != "used", "status"])
    return counts


group_chat = "group_chat"

SCENARIOS = [
    Scenario("simple_link", [("add", [order(0, **ids(P1, O1))])], [[P1, O1]], named_after=[O1]),
    Scenario("chain", [("add", [order(0, **ids(O1, P1)), identify(5, **ids(P1, U1)), identify(9, "issue_member_card", **ids(U1, M1))])],
             [[O1, P1, U1, M1]], named_after=[O1]),
    Scenario("fan_in", [("add", [review(0, **ids(U1, O1)), claim(3, **ids(U1, O2)), order(7, **ids(U1, O3))])],
             [[U1, O1, O2, O3]], named_after=[U1]),
    Scenario("fan_out", [("add", [order(0, **ids(U1, O1, P1, M1, D1))])], [[U1, O1, P1, M1, D1]], named_after=[U1]),
    Scenario("diamond", [("add", [order(0, **ids(O1, P1)), order(1, **ids(O1, M1)), identify(2, **ids(P1, U1)),
                                  identify(3, "issue_member_card", **ids(M1, U1))])], [[O1, P1, M1, U1]]),
    Scenario("disjoint", [("add", [order(0, **ids(O1, P1)), order(0, **ids(O2, P2))])], [[O1, P1], [O2, P2]]),
    # A device between two strong identifiers never seen together would look like a household
    # tablet (rules: device_id = 1 identity), so here the review shows the card with the openid.
    Scenario("long_chain", [("add", [order(0, **ids(O1, P1)), identify(1, **ids(P1, U1)), identify(2, "issue_member_card", **ids(U1, M1)),
                                     pickup(3, **ids(M1, D1)), review(4, **ids(M1, D1, O2)), claim(5, **ids(O2, M2)),
                                     order(6, **ids(M2, P2)), pickup(7, **ids(P2, D2))])],
             [[O1, P1, U1, M1, D1, O2, M2, P2, D2]], named_after=[O1]),
    Scenario("late_identify_after_orders",
             [("add", [order(0, **ids(O1, P1)), order(10, **ids(U1, M1))]), ("resolve", None),
              ("add", [identify(60, **ids(P1, U1))])],
             [[O1, P1, U1, M1]], last_change_kinds=["merge"], named_after=[O1]),
    Scenario("reverse_order",
             [("add", [identify(60, **ids(P1, U1))]), ("resolve", None),
              ("add", [order(10, **ids(U1, M1))]), ("resolve", None), ("add", [order(0, **ids(O1, P1))])],
             [[O1, P1, U1, M1]], named_after=[O1]),
    Scenario("shared_leader_phone",
             [("add", [order(i, source=group_chat, **ids(LEADER, ("openid", f"oQ-n{i}"))) for i in range(8)]
               + [identify(30, **ids(LEADER, U0))])],
             [[LEADER]] + [[("openid", f"oQ-n{i}")] for i in range(8)] + [[U0]],
             refused={"shared_identifier": 9}),
    Scenario("shared_household_device",
             [("add", [order(0, **ids(U1, O1, TABLET)), order(5, **ids(U2, O2, TABLET))])],
             [[U1, O1], [U2, O2], [TABLET]], refused={"shared_identifier": 4}),
    Scenario("blocked_value",
             [("add", [order(0, **{"openid": "oQ-01", "phone": "13800000000"}), order(1, **{"openid": "oQ-02", "phone": "13800000000"}),
                       order(2, **{"openid": "oQ-03", "unionid": "null"}), pickup(3, **{"openid": "oQ-04", "device_id": "00000000-0000-0000-0000-000000000000"}),
                       order(4, **{"unionid": "oU-1a2b", "phone": "11111111111"})])],
             [[O1], [O2], [O3], [O4], [U1]], refused={"blocked_value": 5}),
    Scenario("type_limit_with_priority",
             # The phone link to another person's unionid is older, but weaker than the
             # openid-unionid link, which is applied first; the phone link then breaks the
             # one-unionid limit and is refused. Arrival order alone would have let the
             # phone steal the openid.
             [("add", [identify(0, **ids(U0, P1)), order(1, **ids(O1, P1)), identify(2, "login", **ids(U1, O1))])],
             [[U1, O1], [U0, P1]], refused={"type_limit": 1}),
    Scenario("merge_cap",
             [("add", [identify(0, "login", **ids(U1, O1)), identify(1, "login", **ids(U1, O2)),
                       identify(2, "issue_member_card", **ids(U1, M1)), identify(3, **ids(U1, P1))])],
             [[U1, O1, O2], [M1], [P1]], rules=Rules.default().with_changes(max_merges=2), refused={"merge_cap": 2}),
    Scenario("self_link",
             [("add", [identify(0, "change_phone", previous_phone="+86 138 0013 8000", **ids(P1, O1))])],
             [[P1, O1]], refused={"self_link": 1}),
    Scenario("rapid_re_merge",
             [("add", [order(0, **ids(P1, O1)), order(1, **ids(U1, O2))]), ("resolve", None),
              ("add", [identify(2, "login", **ids(O1, U1))]), ("resolve", None),
              ("add", [identify(3, "login", **ids(O1, U1)), order(4, **ids(P1, O2))]), ("resolve", None)],
             [[P1, O1, U1, O2]], last_change_kinds=[], named_after=[O1]),
    Scenario("phone_number_change",
             [("add", [order(0, **ids(P1, O1)), identify(100, "change_phone", previous_phone="13800138000", **ids(P_NEW, O1)),
                       pickup(200, **ids(P_NEW, D1))])],
             [[P1, P_NEW, O1, D1]], named_after=[O1]),
    Scenario("rule_change_splits_on_rebuild",
             [("add", [identify(0, **ids(U1, P2)), order(5, **ids(O2, P2))]), ("resolve", None),
              ("rebuild", (None, [P2]))],
             [[U1], [O2]], last_change_kinds=["split"], named_after=[U1]),
    Scenario("forget_person",
             [("add", [order(0, **ids(O1, P1)), order(1, **ids(U2, O2, P2))]), ("resolve", None),
              ("forget", [U2, O2, P2])],
             [[O1, P1]], last_change_kinds=["removed"]),
    Scenario("forget_one_identifier_splits",
             [("add", [order(0, **ids(O1, P1)), identify(1, **ids(P1, U1))]), ("resolve", None), ("forget", [P1])],
             [[O1], [U1]], last_change_kinds=["split"], named_after=[O1]),
    Scenario("replay_same_batch",
             [("add", [order(0, event_id="ev-fixed-0001", **ids(O1, P1)), order(1, event_id="ev-fixed-0002", **ids(P1, U1))]),
              ("resolve", None),
              ("add", [order(0, event_id="ev-fixed-0001", **ids(O1, P1)), order(1, event_id="ev-fixed-0002", **ids(P1, U1))]),
              ("resolve", None)],
             [[O1, P1, U1]], last_change_kinds=[], named_after=[O1]),
    Scenario("same_string_different_types",
             [("add", [order(0, **{"openid": "oQ-01", "phone": "13800138000"}), order(1, **{"unionid": "oU-1a2b", "member_card": "13800138000"})])],
             [[O1, P1], [U1, ("member_card", "13800138000")]]),
    Scenario("sighting_alone",
             [("add", [review(0, **ids(O3)), event("locker_telemetry")])],
             [[O3]]),
    Scenario("naming_tie_prefers_strongest",
             [("add", [identify(0, "register", **ids(P1, U1, O1))])], [[P1, U1, O1]], named_after=[U1]),
    Scenario("leader_collects_for_neighbours",
             # a leader opening lockers for many neighbours' orders with the neighbours' openids
             [("add", [pickup(i, role="leader", **ids(LEADER, ("openid", f"oQ-p{i}"))) for i in range(7)]
               + [order(50, **ids(("openid", "oQ-p0"), U1))])],
             [[LEADER], [("openid", "oQ-p0"), U1]] + [[("openid", f"oQ-p{i}")] for i in range(1, 7)],
             refused={"shared_identifier": 7}),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(scenario: Scenario) -> None:
    resolver, report = run(scenario)
    assert resolver.partition() == partition_of(scenario.expected)
    counts = refusal_counts(resolver)
    for reason, n in scenario.refused.items():
        assert counts[reason] == n, (reason, counts)
    if scenario.last_change_kinds is not None:
        assert sorted({c.kind for c in report.changes}) == sorted(set(scenario.last_change_kinds)), report.changes
    for ident in scenario.named_after:
        assert resolver.oneid_of(token(ident)) == oneid_named_after(ident)


def test_scenario_events_honour_the_contracts() -> None:
    parser = EventParser()
    for scenario in SCENARIOS:
        for action, arg in scenario.steps:
            if action == "add":
                for ev in arg:
                    parser.check(ev)


def test_catalogue_is_large_enough() -> None:
    assert len({s.name for s in SCENARIOS}) == len(SCENARIOS) >= 20


def test_merge_keeps_older_oneid_and_maps_the_other() -> None:
    resolver = resolver_for()
    feed(resolver, [order(0, **ids(O1, P1)), order(10, **ids(U1, M1))])
    resolver.resolve()
    younger = resolver.oneid_of(token(U1))
    feed(resolver, [identify(20, **ids(P1, U1))])
    report = resolver.resolve()
    older = oneid_named_after(O1)
    assert report.remap() == {younger: older}
    assert resolver.survivor(younger) == older and resolver.survivor(older) == older
    oneids = to_rows(resolver)["identity_oneids"].set_index("oneid")["survivor"].to_dict()
    assert oneids == {older: older, younger: older}


def test_split_after_rule_change_revives_the_merged_oneid() -> None:
    resolver = resolver_for()
    feed(resolver, [order(0, **ids(O1, P1)), order(10, **ids(U1, M1))])
    resolver.resolve()
    feed(resolver, [identify(20, **ids(P1, U1))])
    resolver.resolve()
    # the phone is found to be a test number: blocking it splits the profile again
    report = resolver.rebuild(blocked_tokens={token(P1)})
    assert {(c.kind, c.from_oneid, c.to_oneid) for c in report.changes} == {
        ("split", oneid_named_after(O1), oneid_named_after(U1))}
    assert resolver.survivor(oneid_named_after(U1)) == oneid_named_after(U1)
    # relaxing the rule merges them back, under the older name
    report = resolver.rebuild(blocked_tokens=set())
    assert report.remap() == {oneid_named_after(U1): oneid_named_after(O1)}


def test_forget_returns_what_it_removed_and_leaves_no_trace() -> None:
    resolver = resolver_for()
    feed(resolver, [order(0, **ids(O1, P1)), order(1, **{"openid": "oQ-01", "unionid": "null"}), order(2, **ids(U2, O2))])
    resolver.resolve()
    gone = resolver.forget([token(O1), token(P1), "not-a-known-token"])
    assert gone.tokens == sorted([token(O1), token(P1)])
    assert gone.links == 1
    rows = to_rows(resolver)
    assert not rows["identity_nodes"]["token"].isin([token(O1), token(P1)]).any()
    assert not rows["identity_edges"][["token_a", "token_b"]].isin([token(O1), token(P1)]).any().any()
    assert resolver.partition() == partition_of([[U2, O2]])
    assert resolver.survivor(oneid_named_after(O1)) is None


def test_state_round_trips_through_rows() -> None:
    resolver = resolver_for()
    feed(resolver, [order(0, **ids(O1, P1)), order(10, **ids(U1, M1)), order(11, **{"openid": "oQ-03", "unionid": "0"})])
    resolver.resolve()
    feed(resolver, [identify(20, **ids(P1, U1))])
    resolver.resolve()
    restored = from_rows(IdentityResolver(resolver.rules, resolver.blocked_tokens), to_rows(resolver))
    assert restored.resolve().changes == []
    assert restored.clusters() == resolver.clusters()
    assert restored.survivor(oneid_named_after(U1)) == oneid_named_after(O1)
    # and continues: a new link merges into the restored profile under its old name
    feed(restored, [order(30, **ids(O3, M1))])
    report = restored.resolve()
    assert restored.oneid_of(token(O3)) == oneid_named_after(O1)
    assert report.remap() == {oneid_named_after(O3): oneid_named_after(O1)}
    assert len(restored.refusals) == 1
