"""Every contract accepts a good event and rejects each kind of bad one with an actionable reason."""

from __future__ import annotations

from datetime import datetime, timezone

import jsonschema
import orjson
import pytest

from lastmile.contracts import REASONS, ContractError, EventParser, contracts
from tests.factories import BASE, event, packaging_return

EVENT_TYPES = sorted(BASE)
FIXED_NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def parser() -> EventParser:
    return EventParser(now=lambda: FIXED_NOW)


def reject(parser: EventParser, payload: bytes | dict) -> ContractError:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    with pytest.raises(ContractError) as caught:
        parser.parse(raw)
    assert caught.value.reason in REASONS
    return caught.value


def test_every_schema_file_is_a_valid_draft7_schema_with_the_envelope() -> None:
    assert set(contracts()) == set(EVENT_TYPES)
    for contract in contracts().values():
        jsonschema.Draft7Validator.check_schema(contract.schema)
        assert {"event_id", "event_type", "schema_version", "occurred_at", "source"} <= set(contract.schema["required"])
        assert contract.order_by[-1] == "event_id", "raw tables deduplicate on event_id"


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_good_event_is_accepted(parser: EventParser, event_type: str) -> None:
    good = event(event_type)
    assert parser.parse(orjson.dumps(good)) == good


def test_packaging_return_is_accepted(parser: EventParser) -> None:
    assert parser.parse(orjson.dumps(packaging_return()))["kind"] == "packaging"


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_missing_field_names_the_field(parser: EventParser, event_type: str) -> None:
    field = next(f for f in contracts()[event_type].schema["required"] if f not in ("event_type",))
    error = reject(parser, event(event_type, **{field: None}))
    assert error.reason == "missing_field"
    assert field in str(error)


@pytest.mark.parametrize(
    ("event_type", "field", "bad"),
    [
        ("locker_telemetry", "temperature_c", "3.2"),
        ("order", "items", {"sku": "x"}),
        ("pickup", "code_verified", "yes"),
        ("return", "amount", "12"),
        ("review", "stars", 4.5),
        ("identify", "identifiers", ["13800138000"]),
    ],
)
def test_wrong_type_says_what_was_expected(parser: EventParser, event_type: str, field: str, bad: object) -> None:
    error = reject(parser, event(event_type, **{field: bad}))
    assert error.reason == "wrong_type"
    assert field in str(error) and "must be" in str(error)


def test_nested_wrong_type_points_into_the_item(parser: EventParser) -> None:
    good = event("order")
    good["items"][1]["qty"] = "two"
    error = reject(parser, good)
    assert error.reason == "wrong_type"
    assert "items[1].qty" in str(error)


@pytest.mark.parametrize(
    ("event_type", "overrides", "words"),
    [
        ("review", {"stars": 6}, "maximum of 5"),
        ("locker_telemetry", {"door": "ajar"}, '"open" or "closed"'),
        ("order", {"channel": "telegram"}, "mini_program"),
        ("order", {"items": []}, "less than 1 item"),
        ("order", {"buyer": {}}, "less than 1 property"),
        ("identify", {"identifiers": {"phone": "13800138000"}}, "less than 2 properties"),
        ("order", {"occurred_at": "20/11/2026 16:05"}, "date-time"),
        ("order", {"occurred_at": "2026-11-20T16:05:00"}, "offset"),
        ("order", {"schema_version": 2}, "1 was expected"),
    ],
)
def test_invalid_value_is_explained(parser: EventParser, event_type: str, overrides: dict, words: str) -> None:
    error = reject(parser, event(event_type, **overrides))
    assert error.reason == "invalid_value"
    assert words in str(error)


def test_claim_needs_its_order_reason_and_amount(parser: EventParser) -> None:
    error = reject(parser, event("return", order_id=None, reason=None))
    assert error.reason == "missing_field"
    assert "order_id" in str(error) and "reason" in str(error)


def test_packaging_return_needs_its_box(parser: EventParser) -> None:
    bad = packaging_return()
    del bad["box_id"]
    assert reject(parser, bad).reason == "missing_field"


def test_unexpected_field_is_named(parser: EventParser) -> None:
    error = reject(parser, event("pickup", courier="Lao Wang"))
    assert error.reason == "unexpected_field"
    assert "courier" in str(error)


def test_unknown_event_type_lists_the_known_ones(parser: EventParser) -> None:
    bad = event("review")
    bad["event_type"] = "rating"
    error = reject(parser, bad)
    assert error.reason == "unknown_event_type"
    assert "rating" in str(error) and "review" in str(error)


@pytest.mark.parametrize("payload", [b"{", b"not json at all", b'{"event_type": "order",', b"\xff\xfe{}"])
def test_not_json(parser: EventParser, payload: bytes) -> None:
    assert reject(parser, payload).reason == "not_json"


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"order"', b"42", b"null"])
def test_json_that_is_not_an_object(parser: EventParser, payload: bytes) -> None:
    assert reject(parser, payload).reason == "not_an_object"


def test_oversized_payload(parser: EventParser) -> None:
    big = event("review", text="好" * 2000)
    big["tags"] = ["x" * 32] * 20
    raw = orjson.dumps(big) + b" " * 70_000
    error = reject(parser, raw)
    assert error.reason == "oversized"
    assert "65536" in str(error)


def test_timestamp_in_the_future(parser: EventParser) -> None:
    error = reject(parser, event("order", occurred_at="2026-11-23T20:30:00+08:00"))  # 12:30 UTC > now + 5 min
    assert error.reason == "future_timestamp"
    assert "future" in str(error)


def test_small_clock_skew_is_tolerated(parser: EventParser) -> None:
    assert parser.parse(orjson.dumps(event("order", occurred_at="2026-11-23T20:03:00+08:00")))


def test_byte_order_mark_does_not_make_a_valid_event_unreadable(parser: EventParser) -> None:
    good = event("order")
    assert parser.parse(b"\xef\xbb\xbf" + orjson.dumps(good)) == good


@pytest.mark.parametrize(("tail", "key"), [
    (b',"stars":5}', "stars"),
    (b',"reviewer":{"openid":"a","openid" : "b"}}', "openid"),
    (b',"\\u0073tars":5,"text":"a\\u003a"}', "stars"),
])
def test_duplicate_key_is_its_own_reason(parser: EventParser, tail: bytes, key: str) -> None:
    """The validator would keep one of the two values silently; which one the producer meant is unknown."""
    payload = orjson.dumps(event("review", reviewer=None))[:-1] + tail
    error = reject(parser, payload)
    assert error.reason == "duplicate_key"
    assert f"'{key}' appears twice" in str(error)


def test_keys_that_only_look_repeated_are_not_duplicates(parser: EventParser) -> None:
    """A colon after a quote inside a text, or blanks before a key's colon, are not keys."""
    good = event("review", text='他说 "好": 新鲜', tags=['a":b'])
    raw = orjson.dumps(good).replace(b'"stars":', b'"stars"  :')
    assert parser.parse(raw) == good


@pytest.mark.parametrize("occurred_at", ["1900-01-01T00:00:00+00:00", "0001-01-01T00:00:00+08:00", "1999-12-31T23:59:59Z"])
def test_an_event_before_the_earliest_accepted_time_is_too_old(parser: EventParser, occurred_at: str) -> None:
    error = reject(parser, event("order", occurred_at=occurred_at))
    assert error.reason == "too_old"
    assert "2000-01-01" in str(error) and "LASTMILE_MIN_OCCURRED_AT" in str(error)


def test_the_earliest_accepted_time_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LASTMILE_MIN_OCCURRED_AT", "2020-01-01")
    strict = EventParser(now=lambda: FIXED_NOW)
    assert reject(strict, event("order", occurred_at="2019-06-01T00:00:00+08:00")).reason == "too_old"
    assert strict.parse(orjson.dumps(event("order", occurred_at="2020-06-01T00:00:00+08:00")))


def test_a_slot_time_the_warehouse_cannot_hold_is_refused(parser: EventParser) -> None:
    error = reject(parser, event("order", delivery_slot_start="0001-01-01T00:00:00+08:00"))
    assert error.reason == "invalid_value"
    assert "delivery_slot_start" in str(error) and "1900-01-01" in str(error)


@pytest.mark.parametrize(("written", "stored"), [
    ("2026-11-20t16:05:00z", "2026-11-20T16:05:00Z"),
    ("2026-06-30T23:59:60Z", "2026-06-30T23:59:59.999Z"),
])
def test_rfc3339_times_python_cannot_read_are_rewritten_not_refused(parser: EventParser, written: str, stored: str) -> None:
    event_, verbatim = parser.judge(orjson.dumps(event("order", occurred_at=written)))
    assert event_["occurred_at"] == stored
    assert verbatim is None, "a rewritten event is serialised again, not stored as received"


@pytest.mark.parametrize(("occurred_at", "words"), [
    ("2026-02-29T10:00:00+08:00", "day is out of range for month"),
    ("2026-11-20 16:05:00+08:00", "not an RFC 3339 date-time"),
    ("2026-11-20T16:05:00", "no UTC offset"),
    ("20/11/2026 16:05", "not an ISO 8601 date-time"),
])
def test_a_bad_time_is_told_what_is_actually_wrong(parser: EventParser, occurred_at: str, words: str) -> None:
    error = reject(parser, event("order", occurred_at=occurred_at))
    assert error.reason == "invalid_value"
    assert words in str(error) and "occurred_at" in str(error)
    if "no UTC offset" not in words:
        assert "offset" not in str(error).split(";")[0], "a time that has an offset is not told it lacks one"


def test_integral_numbers_are_written_as_their_columns_read_them(parser: EventParser) -> None:
    good = event("order", schema_version=1.0)
    good["items"][0]["qty"] = 2.0
    parsed, verbatim = parser.judge(orjson.dumps(good))
    assert type(parsed["schema_version"]) is int and type(parsed["items"][0]["qty"]) is int
    assert verbatim is None
    untouched = orjson.dumps(event("locker_telemetry"))
    assert parser.judge(untouched)[1] == untouched, "an event that needs nothing is stored as received"


@pytest.mark.parametrize("junk", ["null", "", "undefined", 13800000000, None, "x" * 200])
def test_a_junk_identifier_does_not_break_the_contract(parser: EventParser, junk: object) -> None:
    """Identity rules refuse junk identifiers with their reason; the sale itself is valid."""
    assert parser.parse(orjson.dumps(event("order", buyer={"phone": junk})))["buyer"] == {"phone": junk}
