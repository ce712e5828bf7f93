"""Identifier types, their normalisation and their keyed hashing.

Why normalise before anything else: the same neighbour types ``138 0013 8000`` in the
mini-program and ``+86 138-0013-8000`` at the store counter. Unless both become
``+8613800138000`` before hashing, the keyed hashes differ and one person becomes two
profiles. Why reject junk here: placeholder values (``"0"``, ``"null"``, the all-zero iOS
advertising id, ``11111111111`` typed to get past a form) are shared by thousands of
people; one of them in the graph is enough to glue those people into one "blob" profile,
the failure users of Segment Unify and RudderStack Profiles complain about most.

Direct identifiers leave this module only as tokens from :class:`IdentifierHasher`; the
resolver and the warehouse never see a phone number.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable


class IdType(str, Enum):
    """The five kinds of identifier the event contracts carry (the keys of ``buyer``, ...)."""

    UNIONID = "unionid"
    OPENID = "openid"
    MEMBER_CARD = "member_card"
    PHONE = "phone"
    DEVICE_ID = "device_id"


#: Fixed small-integer code per type, used in the vectorised graph (``int8`` columns) and
#: stable across releases because persisted rows may carry it. Never renumber.
TYPE_CODES: dict[str, int] = {t.value: i for i, t in enumerate(IdType)}
TYPE_NAMES: tuple[str, ...] = tuple(t.value for t in IdType)

#: Default strength: how surely one value means one person. A unionid is issued by WeChat to
#: exactly one account; an openid too, but one person has one per mini-program; a member card
#: can be lent; a phone can be a group leader's; a tablet is shared by a household. The rules
#: file can override these; they order edge processing and OneID naming.
DEFAULT_STRENGTH: dict[str, int] = {
    "unionid": 50,
    "openid": 40,
    "member_card": 30,
    "phone": 20,
    "device_id": 10,
}

#: Values people, SDKs and forms put in a field when they have nothing to put there.
DEFAULT_PLACEHOLDERS: frozenset[str] = frozenset(
    {"", "0", "-", "null", "nil", "none", "undefined", "unknown", "n/a", "na", "test", "(null)"}
)

#: Numbers used on forms and in demos rather than owned by a person (configurable in rules.toml).
DEFAULT_TEST_PHONES: frozenset[str] = frozenset({"+8613800000000", "+8613900000000", "+8613000000000"})

#: Longest value kept per type. The event contracts accept any identifier value (a junk one
#: must not cost the sale), so a value longer than any real identifier is refused here.
MAX_LENGTH: dict[str, int] = {"unionid": 64, "openid": 64, "member_card": 32, "phone": 32, "device_id": 64}

_PHONE_SEPARATORS = re.compile(r"[\s\-().\u00a0\u3000]")
_DIGITS = re.compile(r"^\+?\d+$")
_MAINLAND_MOBILE = re.compile(r"^1[3-9]\d{9}$")
_ZERO_LIKE = re.compile(r"^[0\W_]+$")
_CARD_SEPARATORS = re.compile(r"[\s\-]")


@dataclass(frozen=True, slots=True)
class Normalized:
    """Outcome of :func:`check`: a canonical ``value`` or a rejection ``reason`` (+ ``detail``).

    ``reason`` is ``None`` on success, else one of ``empty``, ``blocked_value`` or
    ``malformed``; ``detail`` names the rule (``placeholder``, ``all_zero``,
    ``repeated_digits``, ``test_number``, ``configured``, ``not_a_mobile_number``,
    ``too_long``, ...).
    """

    value: str | None
    reason: str | None = None
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class Blocklist:
    """Which normalised values are refused, per type. Built from ``rules.toml`` ([blocked]).

    Kept separate from :class:`~lastmile.identity.rules.Rules` so :func:`normalize` can be
    used (and tested) without loading the rules file.
    """

    placeholders: frozenset[str] = DEFAULT_PLACEHOLDERS
    reject_all_zero: bool = True
    reject_repeated_digit_phones: bool = True
    test_phones: frozenset[str] = DEFAULT_TEST_PHONES
    values: dict[str, frozenset[str]] = field(default_factory=dict)

    def configured(self, id_type: str) -> frozenset[str]:
        """Normalised values of ``id_type`` that the operator listed as blocked."""
        return self.values.get(id_type, frozenset())


DEFAULT_BLOCKLIST = Blocklist()


def _type_name(id_type: str | IdType) -> str:
    name = id_type.value if isinstance(id_type, IdType) else str(id_type)
    if name not in TYPE_CODES:
        raise ValueError(f"unknown identifier type {name!r}; known: {', '.join(TYPE_NAMES)}")
    return name


def _normalize_phone(raw: str) -> Normalized:
    """Mainland mobiles to ``+86`` + 11 digits; other ``+``/``00`` numbers kept as E.164."""
    compact = _PHONE_SEPARATORS.sub("", raw)
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if not _DIGITS.match(compact):
        return Normalized(None, "malformed", "not_digits")
    digits = compact.lstrip("+")
    if compact.startswith("+") or (len(digits) == 13 and digits.startswith("86")):
        if digits.startswith("86"):
            national = digits[2:]
        else:
            # Another country: E.164 allows at most 15 digits, and at least 8 is realistic.
            if not 8 <= len(digits) <= 15:
                return Normalized(None, "malformed", "bad_length")
            return Normalized("+" + digits)
    else:
        national = digits
    if len(national) == 11 and (len(set(national)) == 1 or len(set(national[1:])) == 1):
        # 11111111111, 13333333333: typed to get past a form, so let the blocklist judge.
        return Normalized("+86" + national)
    if not _MAINLAND_MOBILE.match(national):
        return Normalized(None, "malformed", "not_a_mobile_number")
    return Normalized("+86" + national)


def _normalize_other(name: str, raw: str) -> Normalized:
    value = raw.strip()
    if name == "member_card":
        value = _CARD_SEPARATORS.sub("", value).upper()
    elif name == "device_id":
        # Android ids and IDFAs are hex; SDKs disagree on case.
        value = value.lower()
    return Normalized(value)


def check(id_type: str | IdType, raw: object, blocklist: Blocklist = DEFAULT_BLOCKLIST) -> Normalized:
    """Normalise ``raw`` as an identifier of ``id_type``, or say why it cannot be used.

    Blocking is judged on the normalised value so ``"+86 139 0000 0000"`` and
    ``"13900000000"`` are refused alike.
    """
    name = _type_name(id_type)
    if raw is None:
        return Normalized(None, "empty", "missing")
    text = str(raw).strip()
    if not text:
        return Normalized(None, "empty", "blank")
    if len(text) > MAX_LENGTH[name]:
        return Normalized(None, "malformed", "too_long")
    if text.lower() in blocklist.placeholders:
        return Normalized(None, "blocked_value", "placeholder")
    if blocklist.reject_all_zero and _ZERO_LIKE.match(text):
        return Normalized(None, "blocked_value", "all_zero")
    result = _normalize_phone(text) if name == "phone" else _normalize_other(name, text)
    if result.value is None:
        return result
    value = result.value
    if not value:
        return Normalized(None, "empty", "blank")
    if name == "phone":
        national = value[3:] if value.startswith("+86") else value[1:]
        if len(national) == 11 and (len(set(national)) == 1 or len(set(national[1:])) == 1):
            if blocklist.reject_repeated_digit_phones:
                return Normalized(None, "blocked_value", "repeated_digits")
            if not _MAINLAND_MOBILE.match(national):
                return Normalized(None, "malformed", "not_a_mobile_number")
        if value in blocklist.test_phones:
            return Normalized(None, "blocked_value", "test_number")
    if value in blocklist.configured(name):
        return Normalized(None, "blocked_value", "configured")
    return Normalized(value)


def normalize(id_type: str | IdType, raw: object, blocklist: Blocklist = DEFAULT_BLOCKLIST) -> str | None:
    """Canonical form of ``raw``, or ``None`` when it is unusable (see :func:`check` for why)."""
    return check(id_type, raw, blocklist).value


class IdentifierHasher:
    """Keyed BLAKE2b tokens for normalised identifiers.

    Why keyed: phone numbers have ~10^9 possible values, so a plain hash is reversed by
    enumeration in minutes; without the key nobody can. Why the type is in the MAC input: a
    member card ``"13800138000"`` and the phone ``"13800138000"`` are different things and
    must not become the same node. Tokens are 32 hex characters (128 bits): fixed width, so the
    graph can factorise them fast, and collision-free in practice.
    """

    DIGEST_BYTES = 16

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("IdentifierHasher needs a non-empty secret key")
        if len(key) > 64:
            # BLAKE2b keys are at most 64 bytes; longer secrets are first condensed.
            key = hmac.new(b"lastmile-identity-key", key, hashlib.sha256).digest()
        self._key = key

    def token(self, id_type: str | IdType, normalized: str) -> str:
        """The token of an already-normalised identifier (see :func:`normalize`)."""
        name = _type_name(id_type)
        mac = hashlib.blake2b(key=self._key, digest_size=self.DIGEST_BYTES, person=b"lastmile-oneid")
        mac.update(name.encode())
        mac.update(b"\x00")
        mac.update(normalized.encode())
        return mac.hexdigest()

    def tokens(self, id_type: str | IdType, values: Iterable[str]) -> list[str]:
        """Tokens of many normalised values of one type (for blocklists and bulk loads)."""
        return [self.token(id_type, v) for v in values]
