"""Normalisation, keyed hashing, the rules file and link extraction."""

from __future__ import annotations

from pathlib import Path

import pytest

from lastmile.contracts import EventParser
from lastmile.identity import AUDIT_REASONS, Blocklist, IdentifierHasher, Rules, check, extract_links, normalize
from lastmile.identity.identifiers import DEFAULT_STRENGTH, TYPE_NAMES

from tests.factories import event
from tests.test_identity_support import HASHER, identify, order


@pytest.mark.parametrize("raw", ["13800138000", "138 0013 8000", "+86 138-0013-8000", "8613800138000",
                                 "008613800138000", "+8613800138000", " (138) 0013.8000 ", "138\u30000013\u30008000"])
def test_mainland_mobiles_become_e164(raw: str) -> None:
    assert normalize("phone", raw) == "+8613800138000"


@pytest.mark.parametrize("raw, reason, detail", [
    ("", "empty", "blank"), ("   ", "empty", "blank"), (None, "empty", "missing"),
    ("0", "blocked_value", "placeholder"), ("null", "blocked_value", "placeholder"), ("NULL", "blocked_value", "placeholder"),
    ("undefined", "blocked_value", "placeholder"), ("None", "blocked_value", "placeholder"),
    ("00000000000", "blocked_value", "all_zero"), ("11111111111", "blocked_value", "repeated_digits"),
    ("+86 133 3333 3333", "blocked_value", "repeated_digits"), ("13800000000", "blocked_value", "test_number"),
    ("+86 139 0000 0000", "blocked_value", "test_number"),
    ("12345", "malformed", "not_a_mobile_number"), ("021-6234-5678", "malformed", "not_a_mobile_number"),
    ("138OO138000", "malformed", "not_digits"), ("+1 23", "malformed", "bad_length"),
])
def test_unusable_phones_say_why(raw: object, reason: str, detail: str) -> None:
    result = check("phone", raw)
    assert (result.value, result.reason, result.detail) == (None, reason, detail)


def test_foreign_numbers_are_kept_in_e164() -> None:
    assert normalize("phone", "+852 9123 4567") == "+85291234567"
    assert normalize("phone", "00852 9123 4567") == "+85291234567"


def test_other_identifiers_are_trimmed_and_canonicalised() -> None:
    assert normalize("openid", "  oQ7x-9fa2 ") == "oQ7x-9fa2"  # case kept: WeChat ids are case-sensitive
    assert normalize("member_card", " vip 0001-23 ") == "VIP000123"
    assert normalize("device_id", " A1B2-C3D4 ") == "a1b2-c3d4"
    assert check("device_id", "00000000-0000-0000-0000-000000000000").detail == "all_zero"
    assert check("unionid", "undefined").reason == "blocked_value"


def test_blocking_is_configurable() -> None:
    lenient = Blocklist(reject_repeated_digit_phones=False, test_phones=frozenset())
    assert normalize("phone", "13800000000", lenient) == "+8613800000000"
    custom = Blocklist(values={"member_card": frozenset({"VIP0000"})})
    assert check("member_card", "vip 0000", custom).detail == "configured"


def test_unknown_type_is_an_error() -> None:
    with pytest.raises(ValueError):
        normalize("email", "a@b.c")


def test_tokens_are_keyed_typed_and_stable() -> None:
    h1, h2 = IdentifierHasher(b"key-one"), IdentifierHasher(b"key-two")
    assert h1.token("phone", "+8613800138000") == h1.token("phone", "+8613800138000")
    assert h1.token("phone", "+8613800138000") != h2.token("phone", "+8613800138000")
    assert h1.token("phone", "13800138000") != h1.token("member_card", "13800138000")
    token = h1.token("openid", "oQ7x")
    assert len(token) == 32 and int(token, 16) >= 0 and "oQ7x" not in token
    with pytest.raises(ValueError):
        IdentifierHasher(b"")


def test_rules_file_loads_with_documented_defaults() -> None:
    rules = Rules.default()
    assert dict(rules.max_per_profile) == {"unionid": 1, "openid": 3, "phone": 2, "member_card": 2, "device_id": 5}
    assert dict(rules.strength) == DEFAULT_STRENGTH
    assert rules.strong_types == {"unionid", "openid", "member_card"}
    assert "+8613800000000" in rules.blocklist.test_phones
    assert {"type_limit", "merge_cap", "shared_identifier", "blocked_value", "self_link"} <= set(AUDIT_REASONS)


def test_rules_reject_nonsense(tmp_path: Path) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text("[limits]\nmax_per_profile = { email = 1 }\n")
    with pytest.raises(ValueError, match="email"):
        Rules.load(bad)
    bad.write_text("[limits]\nmax_per_profile = { phone = 0 }\n")
    with pytest.raises(ValueError):
        Rules.load(bad)


def test_blocked_values_in_rules_are_normalised_and_hashed(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[blocked.values]\nphone = ["+86 186 2000 1111"]\n')
    rules = Rules.load(path)
    assert "+8618620001111" in rules.blocklist.configured("phone")
    assert HASHER.token("phone", "+8618620001111") in rules.blocked_tokens(HASHER)


def test_every_event_type_yields_links_of_its_identifier_object() -> None:
    parser = EventParser()
    expected_roles = {"order": "buyer", "pickup": "collector", "return": "claimant", "review": "reviewer", "identify": "identifiers"}
    for event_type, role in expected_roles.items():
        ev = parser.check(event(event_type))
        links = extract_links(ev, HASHER)
        assert links and {l.role for l in links} == {role}
        assert all(l.event_id == ev["event_id"] and l.event_type == event_type for l in links)
    assert extract_links(parser.check(event("locker_telemetry")), HASHER) == []


def test_all_identifiers_of_one_object_are_linked_pairwise() -> None:
    links = extract_links(order(0, unionid="u1", openid="o1", phone="13800138000"), HASHER)
    assert len(links) == 3 and all(l.b_token for l in links)
    assert {(l.a_type, l.b_type) for l in links} == {("unionid", "openid"), ("unionid", "phone"), ("openid", "phone")}
    assert links[0].occurred_at_ms == 1_793_494_800_000  # 2026-11-01T09:00+08:00 = 01:00 UTC


def test_change_phone_links_previous_phone() -> None:
    links = extract_links(identify(0, "change_phone", previous_phone="139 1234 5678", phone="150 1234 5678", openid="o1"), HASHER)
    old = HASHER.token("phone", "+8613912345678")
    assert sum(old in (l.a_token, l.b_token) for l in links) == 2
    assert any(l.role == "previous_phone" for l in links)


def test_refused_values_are_reported_without_their_value() -> None:
    links = extract_links(order(0, openid="o1", phone="11111111111"), HASHER)
    refused = [l for l in links if l.reason]
    assert [(l.a_type, l.a_token, l.reason, l.detail) for l in refused] == [("phone", "", "blocked_value", "repeated_digits")]
    assert [l.is_sighting for l in links if not l.reason] == [True]
    assert all("11111111111" not in repr(l) for l in links)


def test_type_names_are_fixed() -> None:
    # persisted rows carry these codes: never renumber
    assert TYPE_NAMES == ("unionid", "openid", "member_card", "phone", "device_id")
