"""Event contracts: the JSON Schemas in ``schemas/`` loaded, compiled and enforced.

The schema files are the one source of truth for event shapes. This module reads them (no
second hand-written list of fields), compiles each with jsonschema-rs (a Rust validator: the
ingest hot path spends ~4 µs on an order instead of ~22 µs) and turns every way an event can be wrong into a :class:`ContractError`
with a short machine-readable ``reason`` and a sentence a person can act on.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Callable

import jsonschema_rs
import orjson

#: Reasons an event is rejected; they are the ``reason`` column of the quarantine table.
REASONS = (
    "not_json",
    "oversized",
    "not_an_object",
    "unknown_event_type",
    "missing_field",
    "unexpected_field",
    "wrong_type",
    "invalid_value",
    "duplicate_key",
    "future_timestamp",
    "too_old",
    "warehouse_refused",
)

DEFAULT_MAX_EVENT_BYTES = 65536
DEFAULT_MAX_CLOCK_SKEW = timedelta(minutes=5)
#: Events older than this are quarantined (``too_old``): no business event of lastmile's
#: predates it, and a year 0001 or 1900 is a producer's placeholder, not a time.
DEFAULT_MIN_OCCURRED_AT = datetime(2000, 1, 1, tzinfo=timezone.utc)
#: What a ``DateTime64`` column stores; ClickHouse clamps anything outside without a word.
WAREHOUSE_TIME_RANGE = (datetime(1900, 1, 1, tzinfo=timezone.utc), datetime(2299, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc))
#: A UTF-8 byte-order mark: some Windows tools write one before the JSON; it is not content.
UTF8_BOM = b"\xef\xbb\xbf"
_WAREHOUSE_EPOCHS = (WAREHOUSE_TIME_RANGE[0].timestamp(), WAREHOUSE_TIME_RANGE[1].timestamp())
#: ``Int64`` columns hold integers of at most this magnitude.
_INT64_MAX = (1 << 63) - 1


class ContractError(ValueError):
    """An event broke its contract. ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str, event_type: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.event_type = event_type


def schemas_dir() -> Path:
    """Where the contracts live: ``$LASTMILE_SCHEMAS_DIR`` or the repository's ``schemas/``."""
    configured = os.environ.get("LASTMILE_SCHEMAS_DIR")
    path = Path(configured) if configured else Path(__file__).resolve().parent.parent / "schemas"
    if not path.is_dir():
        raise FileNotFoundError(f"event contracts not found in {path}; set LASTMILE_SCHEMAS_DIR")
    return path


@dataclass(frozen=True)
class Contract:
    """One event type's schema, its compiled validator and its warehouse table layout."""

    event_type: str
    schema: dict[str, Any] = field(repr=False)

    @property
    def table(self) -> str:
        return self.schema["x-clickhouse"]["table"]

    @property
    def order_by(self) -> list[str]:
        return list(self.schema["x-clickhouse"]["order_by"])

    @property
    def partition_by(self) -> str | None:
        return self.schema["x-clickhouse"].get("partition_by")

    @property
    def description(self) -> str:
        return self.schema.get("description", "")

    @property
    def properties(self) -> dict[str, Any]:
        return self.schema["properties"]

    @cached_property
    def _validator(self) -> jsonschema_rs.Validator:
        return jsonschema_rs.validator_for(self.schema, validate_formats=True)

    def validate(self, event: dict[str, Any]) -> None:
        """Raise :class:`ContractError` unless ``event`` satisfies this contract."""
        validator = self._validator
        if validator.is_valid(event):  # the hot path: a yes/no in Rust
            return
        raise _explain(list(validator.iter_errors(event)), self.event_type, self.schema)

    @cached_property
    def integer_fields(self) -> tuple[tuple[str | None, tuple[str, ...]], ...]:
        """Where the contract's integers sit: ``(None, names)`` at the top level, ``(field, names)``
        inside an object or in every object of an array ``field``.

        JSON Schema calls ``2.0`` an integer; ClickHouse refuses it for an integer column,
        so :meth:`normalise` writes such numbers as integers. (``Decimal`` columns read any
        JSON number, exponents included.)
        """
        found: dict[str | None, list[str]] = {}
        for name, spec in self.properties.items():
            if spec.get("type") == "integer":
                found.setdefault(None, []).append(name)
            inner = spec.get("properties") if spec.get("type") == "object" else (
                spec.get("items", {}).get("properties") if spec.get("type") == "array" else None)
            for sub, sub_spec in (inner or {}).items():
                if sub_spec.get("type") == "integer":
                    found.setdefault(name, []).append(sub)
        return tuple((container, tuple(names)) for container, names in found.items())

    @cached_property
    def time_fields(self) -> tuple[str, ...]:
        """Top-level ``date-time`` fields besides ``occurred_at`` (their values must fit the warehouse)."""
        return tuple(name for name, spec in self.properties.items()
                     if spec.get("format") == "date-time" and name != "occurred_at")

    def normalise(self, event: dict[str, Any]) -> bool:
        """Write integral floats of integer fields as integers (``2.0`` -> ``2``); True if any
        changed. Call after :meth:`validate` (which guarantees the floats are integral)."""
        changed = False
        for container, names in self.integer_fields:
            if container is None:
                holders: Any = (event,)
            else:
                holders = event.get(container)
                if isinstance(holders, dict):
                    holders = (holders,)
                elif not isinstance(holders, list):
                    continue
            for holder in holders:
                for name in names:
                    value = holder.get(name)
                    if type(value) is float:
                        if abs(value) > _INT64_MAX:
                            raise ContractError("invalid_value", f"{self.event_type}: field {name} = {value!r} "
                                                "does not fit a 64-bit integer", self.event_type)
                        holder[name] = int(value)
                        changed = True
        return changed


def _field_name(path: list[str | int]) -> str:
    """``['items', 1, 'qty']`` -> ``items[1].qty``, the way people write it."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _condition(schema: dict[str, Any], schema_path: list[str | int]) -> str:
    """`` (required when movement is receipt)`` for a field an ``allOf``/``if``/``then`` rule of the
    contract requires, so the producer learns why a field optional elsewhere is missing here."""
    if len(schema_path) < 3 or schema_path[0] != "allOf" or schema_path[2] != "then":
        return ""
    rule = schema.get("allOf", [])[schema_path[1]] if isinstance(schema_path[1], int) else {}
    consts = [f"{name} is {spec['const']}" for name, spec in rule.get("if", {}).get("properties", {}).items()
              if isinstance(spec, dict) and "const" in spec]
    return f" (required when {' and '.join(consts)})" if consts else ""


def _explain(errors: list[Any], event_type: str, schema: dict[str, Any] | None = None) -> ContractError:
    """The first problem, in words: which field, what was expected, what came."""
    first = errors[0]
    kind = type(first.kind).__name__
    where = _field_name(list(first.instance_path))
    if kind == "Required":
        missing = [e.kind.property for e in errors if type(e.kind).__name__ == "Required" and list(e.instance_path) == list(first.instance_path)]
        prefix = f"{where}." if where else ""
        names = ", ".join(prefix + name for name in missing)
        why = _condition(schema or {}, list(first.schema_path))
        return ContractError("missing_field", f"{event_type}: missing required field {names}{why}", event_type)
    if kind == "AdditionalProperties":
        extra = ", ".join(sorted(first.kind.unexpected))
        inside = f" in {where}" if where else ""
        return ContractError("unexpected_field", f"{event_type}: unexpected field {extra}{inside}; the contract does not allow it", event_type)
    got = json.dumps(first.instance, ensure_ascii=False, default=str)
    if len(got) > 80:
        got = got[:77] + "..."
    where = where or "(event)"
    if kind == "Type":
        expected = " or ".join(str(t) for t in first.kind.types)
        return ContractError("wrong_type", f"{event_type}: field {where} must be {expected}, got {got}", event_type)
    if kind == "Format" and first.kind.format == "date-time" and isinstance(first.instance, str):
        try:
            read_time(first.instance)
            why = "it is not an RFC 3339 date-time (a 'T' between date and time, seconds included)"
        except ValueError as exc:
            why = str(exc)
        return ContractError(
            "invalid_value",
            f"{event_type}: field {where} = {got}: {why}; e.g. 2026-11-20T16:05:00+08:00",
            event_type,
        )
    if kind == "Format":
        return ContractError("invalid_value", f"{event_type}: field {where} must be a {first.kind.format}, got {got}", event_type)
    return ContractError("invalid_value", f"{event_type}: field {where}: {first.message}", event_type)


@lru_cache(maxsize=None)
def _load(directory: str) -> dict[str, Contract]:
    found: dict[str, Contract] = {}
    for path in sorted(Path(directory).glob("*.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        event_type = schema["properties"]["event_type"]["const"]
        found[event_type] = Contract(event_type, schema)
    if not found:
        raise FileNotFoundError(f"no event contracts (*.json) in {directory}")
    return found


def contracts() -> dict[str, Contract]:
    """All contracts by event type, loaded once from :func:`schemas_dir`."""
    return _load(str(schemas_dir()))


def contract(event_type: str) -> Contract:
    try:
        return contracts()[event_type]
    except KeyError:
        raise ContractError(
            "unknown_event_type",
            f"unknown event_type {event_type!r}; known: {', '.join(sorted(contracts()))}",
        ) from None


def parse_timestamp(value: str) -> datetime:
    """ISO 8601 with offset (``Z`` allowed) to an aware UTC datetime."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("timestamp has no UTC offset")
    return parsed.astimezone(timezone.utc)


_RFC3339_SECOND = re.compile(r"(T\d\d:\d\d:)60")


def read_time(text: str) -> tuple[datetime, str]:
    """An RFC 3339 time as an aware datetime, with the text the warehouse should be given.

    JSON Schema's ``date-time`` is RFC 3339, which allows a lowercase ``t``/``z`` and a leap
    second (``23:59:60``); Python and ClickHouse read neither. Both are rewritten (upper case;
    a leap second becomes ``59.999``, the last millisecond a ``DateTime64(3)`` can hold
    before it). Raises ``ValueError`` naming what is actually wrong.
    """
    canonical = text
    if "t" in text or "z" in text:
        canonical = canonical.upper()
    if ":60" in canonical:
        canonical = _RFC3339_SECOND.sub(r"\g<1>59.999", canonical, count=1)
        canonical = re.sub(r"(59\.999)\.\d+", r"\1", canonical)
    try:
        moment = datetime.fromisoformat(canonical)
    except ValueError as exc:
        reason = str(exc)
        if reason.startswith("Invalid isoformat string"):
            reason = "it is not an ISO 8601 date-time"
        raise ValueError(reason) from None
    if moment.tzinfo is None:
        raise ValueError("it has no UTC offset (add one, e.g. +08:00 or Z)")
    return moment, canonical


class EventParser:
    """Turns raw payloads into valid events or :class:`ContractError`.

    Holds the limits (payload size, clock skew, earliest event time) so the hot path does
    not look them up per event. ``now`` is injectable so tests and backfills can judge
    "future" against a fixed clock. Limits left unset come from :func:`lastmile.config.settings`.
    """

    def __init__(
        self,
        *,
        max_bytes: int | None = None,
        max_clock_skew: timedelta | None = None,
        min_occurred_at: datetime | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        from lastmile.config import settings

        cfg = settings()
        self.max_bytes = cfg.max_event_bytes if max_bytes is None else max_bytes
        self.max_clock_skew = timedelta(seconds=cfg.max_clock_skew_s) if max_clock_skew is None else max_clock_skew
        self.min_occurred_at = cfg.min_occurred_at if min_occurred_at is None else min_occurred_at
        self._min_ts = self.min_occurred_at.timestamp()
        self._now = now
        self._contracts = contracts()
        self._limit_ts = 0.0
        self._limit_checked = -1.0
        self._epochs: dict[str, tuple[float, str]] = {}

    def _future_limit(self) -> float:
        """now + allowed skew, as epoch seconds; recomputed at most once a second (hot path)."""
        tick = time.monotonic()
        if tick - self._limit_checked >= 1.0:
            self._limit_ts = (self._now() + self.max_clock_skew).timestamp()
            self._limit_checked = tick
        return self._limit_ts

    def _epoch(self, text: str, field_name: str, event_type: str) -> tuple[float, str]:
        """A time field as epoch seconds and its canonical text, remembered: readings of one
        tick share their timestamp (every compartment reports on the minute), so most events
        skip the parse."""
        found = self._epochs.get(text)
        if found is not None:
            return found
        try:
            moment, canonical = read_time(text)
        except ValueError as exc:
            raise ContractError(
                "invalid_value",
                f"{event_type}: field {field_name} = {text!r}: {exc}; "
                "e.g. 2026-11-20T16:05:00+08:00",
                event_type,
            ) from None
        if len(self._epochs) >= 4096:
            self._epochs.clear()
        found = self._epochs[text] = (moment.timestamp(), canonical)
        return found

    @staticmethod
    def _stored(epoch: float, text: str, field_name: str, event_type: str) -> None:
        """Refuse a time a ``DateTime64`` column cannot hold (ClickHouse would clamp it silently)."""
        if not _WAREHOUSE_EPOCHS[0] <= epoch <= _WAREHOUSE_EPOCHS[1]:
            low, high = WAREHOUSE_TIME_RANGE
            raise ContractError(
                "invalid_value",
                f"{event_type}: field {field_name} = {text!r} is outside the times the warehouse stores "
                f"({low:%Y-%m-%d} to {high:%Y-%m-%d} UTC)",
                event_type,
            )

    def parse(self, raw: bytes | str) -> dict[str, Any]:
        """Decode, validate and return one event; raise :class:`ContractError` if it is bad."""
        return self.judge(raw)[0]

    def judge(self, raw: bytes | str) -> tuple[dict[str, Any], bytes | None]:
        """Like :meth:`parse`, and also the payload as it may be stored verbatim: the raw
        bytes (without a byte-order mark), or None when the event had to be rewritten to
        match its columns (numbers, times) and must be serialised again."""
        size = len(raw)
        if size > self.max_bytes:
            raise ContractError("oversized", f"payload is {size} bytes; the limit is {self.max_bytes}")
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogatepass")
        if raw[:3] == UTF8_BOM:
            raw = raw[3:]
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ContractError("not_json", f"not valid JSON: {exc}") from None
        if isinstance(event, dict):
            _refuse_duplicate_keys(raw, event)
        return self.check(event), (None if self._rewritten else raw)

    def check(self, event: Any) -> dict[str, Any]:
        """Validate an already-decoded event (and write its numbers and times as the warehouse reads them)."""
        if not isinstance(event, dict):
            raise ContractError("not_an_object", f"an event must be a JSON object, got {type(event).__name__}")
        event_type = event.get("event_type")
        if not isinstance(event_type, str):
            raise ContractError("missing_field", "missing required field event_type (a string naming the contract)")
        found = self._contracts.get(event_type)
        if found is None:
            raise ContractError(
                "unknown_event_type",
                f"unknown event_type {event_type!r}; known: {', '.join(sorted(self._contracts))}",
            )
        found.validate(event)
        rewritten = found.normalise(event)
        text = event["occurred_at"]
        epoch, canonical = self._epoch(text, "occurred_at", event_type)
        if canonical != text:
            event["occurred_at"], rewritten = canonical, True
        if epoch > self._future_limit():
            raise ContractError(
                "future_timestamp",
                f"{event_type}: occurred_at {text} is in the future "
                f"(more than {int(self.max_clock_skew.total_seconds())} s after now)",
                event_type,
            )
        if epoch < self._min_ts:
            raise ContractError(
                "too_old",
                f"{event_type}: occurred_at {text} is before {self.min_occurred_at.isoformat()}, the earliest "
                "time lastmile accepts (LASTMILE_MIN_OCCURRED_AT)",
                event_type,
            )
        self._stored(epoch, text, "occurred_at", event_type)
        for name in found.time_fields:
            value = event.get(name)
            if value is not None:
                epoch, canonical = self._epoch(value, name, event_type)
                self._stored(epoch, value, name, event_type)
                if canonical != value:
                    event[name], rewritten = canonical, True
        self._rewritten = rewritten
        return event

    _rewritten = False


def _refuse_duplicate_keys(raw: bytes, event: dict[str, Any]) -> None:
    """Raise ``duplicate_key`` if an object of ``raw`` names a key twice.

    A JSON parser keeps one of the two values silently (orjson and the validator the last,
    ClickHouse refuses the row), so the producer's intent is unknown: the event is rejected.

    Fast path (a microsecond or two): every key is followed by a colon, and a colon
    elsewhere can only sit inside a text. Serialised again, the decoded event keeps one
    colon per key it kept and the texts of those keys and values; a dropped duplicate takes
    its key's colon and its texts' colons with it. So, unless the payload writes characters
    as ``\\u00..`` escapes (which could hide a colon), the two colon counts are equal exactly
    when no key was repeated; with such escapes the payload is parsed again, pair by pair.
    Serialising also refuses a payload nested too deeply for anything to walk.
    """
    event_type = event.get("event_type")
    event_type = event_type[:64] if isinstance(event_type, str) and event_type else None
    try:
        again = orjson.dumps(event)
    except orjson.JSONEncodeError:
        raise ContractError("invalid_value", "the event is nested too deeply; no contract has values nested like that",
                            event_type) from None
    if b"\\u00" not in raw:
        if raw.count(b":") == again.count(b":"):
            return
    try:
        json.loads(raw, object_pairs_hook=_no_duplicates)
    except _Duplicate as duplicate:
        raise ContractError(
            "duplicate_key",
            f"key {duplicate.key!r} appears twice in one object; send each field once",
            event_type,
        ) from None
    except (ValueError, RecursionError):
        pass  # orjson read it; the standard library's stricter corners are not this check's business


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return out
