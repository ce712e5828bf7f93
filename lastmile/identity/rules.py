"""The merge rules, loaded from ``rules.toml``: what may join two identifiers into one profile.

Why rules at all: plain connected components over every link produce "blob" profiles, one
group leader's phone gluing a whole building together. Why one file: the rules are a policy
the data team changes (and then rebuilds under), so they live in one documented place, not
in constants scattered through code. Why audit reasons are listed here: every link a rule
refuses is kept with the rule's name, so "why are these two not merged?" has an answer.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lastmile.identity.identifiers import (
    DEFAULT_STRENGTH,
    TYPE_CODES,
    TYPE_NAMES,
    Blocklist,
    IdentifierHasher,
    check,
)

#: The rules file shipped with the package; ``Rules.load(path)`` reads another one.
DEFAULT_RULES_PATH = Path(__file__).with_name("rules.toml")

#: Why a link was not used to merge. Extraction-time reasons (``empty``, ``malformed``,
#: ``blocked_value``, ``self_link``) are decided per event; graph reasons (``blocked_value``
#: for values blocked after they were stored, ``shared_identifier``, ``type_limit``,
#: ``merge_cap``) are decided on the whole link set at every resolve.
AUDIT_REASONS: tuple[str, ...] = (
    "empty",
    "malformed",
    "blocked_value",
    "self_link",
    "shared_identifier",
    "type_limit",
    "merge_cap",
)

#: Edge status codes of the vectorised graph; 0 means the link was used.
USED = 0
STATUS_REASONS: dict[int, str] = {1: "blocked_value", 2: "shared_identifier", 3: "type_limit", 4: "merge_cap"}
BLOCKED, SHARED, TYPE_LIMIT, MERGE_CAP = 1, 2, 3, 4


@dataclass(frozen=True)
class Rules:
    """A parsed rules file. Immutable: change rules by building a new one and rebuilding."""

    blocklist: Blocklist = field(default_factory=Blocklist)
    strength: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_STRENGTH))
    max_per_profile: Mapping[str, int] = field(
        default_factory=lambda: {"unionid": 1, "openid": 3, "phone": 2, "member_card": 2, "device_id": 5}
    )
    max_merges: int = 10
    strong_types: frozenset[str] = frozenset({"unionid", "openid", "member_card"})
    max_identities: Mapping[str, int] = field(
        default_factory=lambda: {"phone": 6, "device_id": 3, "member_card": 6, "openid": 8, "unionid": 8}
    )

    # -- loading -----------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Rules":
        """Read a rules file (default: the packaged ``rules.toml``)."""
        with open(path or DEFAULT_RULES_PATH, "rb") as fh:
            return cls.from_dict(tomllib.load(fh))

    @classmethod
    def default(cls) -> "Rules":
        """The packaged defaults."""
        return cls.load(DEFAULT_RULES_PATH)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Rules":
        """Rules from a parsed TOML document; missing keys keep the built-in defaults."""
        base = cls()
        blocked = dict(data.get("blocked", {}))
        raw_values = dict(blocked.get("values", {}))
        unknown = set(raw_values) - set(TYPE_NAMES)
        if unknown:
            raise ValueError(f"[blocked.values] has unknown identifier types: {sorted(unknown)}")
        # Test phones and configured values are compared after normalisation, so normalise
        # them here with a blocklist that does not yet contain them.
        plain = Blocklist(placeholders=frozenset(), reject_all_zero=False, reject_repeated_digit_phones=False,
                          test_phones=frozenset())
        test_phones = frozenset(
            v for v in (check("phone", p, plain).value for p in blocked.get("test_phones", base.blocklist.test_phones)) if v
        )
        values = {
            t: frozenset(v for v in (check(t, raw, plain).value for raw in raw_values.get(t, [])) if v)
            for t in TYPE_NAMES
        }
        blocklist = Blocklist(
            placeholders=frozenset(str(p).strip().lower() for p in blocked.get("placeholders", base.blocklist.placeholders)),
            reject_all_zero=bool(blocked.get("reject_all_zero", base.blocklist.reject_all_zero)),
            reject_repeated_digit_phones=bool(
                blocked.get("reject_repeated_digit_phones", base.blocklist.reject_repeated_digit_phones)
            ),
            test_phones=test_phones,
            values=values,
        )
        limits = dict(data.get("limits", {}))
        shared = dict(data.get("shared", {}))
        rules = cls(
            blocklist=blocklist,
            strength={**base.strength, **dict(data.get("strength", {}))},
            max_per_profile={**base.max_per_profile, **dict(limits.get("max_per_profile", {}))},
            max_merges=int(limits.get("max_merges", base.max_merges)),
            strong_types=frozenset(shared.get("strong_types", base.strong_types)),
            max_identities={**base.max_identities, **dict(shared.get("max_identities", {}))},
        )
        rules.validate()
        return rules

    def validate(self) -> None:
        """Refuse rules that name unknown types or make no sense (limits below one)."""
        for name, table in (("strength", self.strength), ("limits.max_per_profile", self.max_per_profile),
                            ("shared.max_identities", self.max_identities)):
            unknown = set(table) - set(TYPE_NAMES)
            if unknown:
                raise ValueError(f"{name} has unknown identifier types: {sorted(unknown)}")
        if set(self.strong_types) - set(TYPE_NAMES):
            raise ValueError(f"shared.strong_types has unknown identifier types: {sorted(self.strong_types)}")
        if any(v < 1 for v in self.max_per_profile.values()):
            raise ValueError("limits.max_per_profile values must be >= 1")
        if self.max_merges < 0:
            raise ValueError("limits.max_merges must be >= 0")

    def with_changes(self, **changes: Any) -> "Rules":
        """A copy with some fields replaced (mappings are merged), e.g. for a rebuild."""
        merged: dict[str, Any] = {}
        for key, value in changes.items():
            current = getattr(self, key)
            merged[key] = {**current, **value} if isinstance(current, Mapping) and isinstance(value, Mapping) else value
        rules = replace(self, **merged)
        rules.validate()
        return rules

    # -- views the vectorised graph needs ----------------------------------------------

    def blocked_tokens(self, hasher: IdentifierHasher) -> frozenset[str]:
        """Tokens of values blocked by value (test phones, ``[blocked.values]``).

        The graph stores tokens only, so a value blocked *after* its links were stored is
        found again by hashing the blocked value with the same key.
        """
        tokens = {hasher.token("phone", v) for v in self.blocklist.test_phones}
        for id_type in TYPE_NAMES:
            tokens.update(hasher.token(id_type, v) for v in self.blocklist.configured(id_type))
        return frozenset(tokens)

    def strength_by_code(self) -> np.ndarray:
        """``strength[type_code]`` as an array."""
        return np.array([self.strength[t] for t in TYPE_NAMES], dtype=np.int64)

    def limit_by_code(self) -> np.ndarray:
        """``max_per_profile[type_code]`` as an array."""
        return np.array([self.max_per_profile[t] for t in TYPE_NAMES], dtype=np.int64)

    def shared_threshold_by_code(self) -> np.ndarray:
        """``max_identities[type_code]`` as an array (absent types: never shared)."""
        big = np.iinfo(np.int64).max
        return np.array([self.max_identities.get(t, big) for t in TYPE_NAMES], dtype=np.int64)

    def strong_by_code(self) -> np.ndarray:
        """Boolean mask ``is_strong[type_code]``."""
        mask = np.zeros(len(TYPE_NAMES), dtype=bool)
        for t in self.strong_types:
            mask[TYPE_CODES[t]] = True
        return mask
