"""Identifier rendering and the OneID ground truth that falls out of it.

Every identifier value written into any event goes through :meth:`IdentityBook.show`, which
decides how it appears (clean, typed messily, or replaced by junk) and records the raw value
against its true owner. So ``truth/identifiers.jsonl`` covers exactly the values the events
contain, with the traps marked: shared household tablets, a leader's phone used on
neighbours' orders, junk placeholders.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from .world import JUNK_IDS, JUNK_PHONES, Person

ID_TYPES = ("phone", "unionid", "openid", "member_card", "device_id")


def normalise(id_type: str, raw: str) -> str:
    """What an identity resolver should reduce a raw value to (E.164 for phones)."""
    value = raw.strip()
    if id_type == "phone":
        digits = "".join(ch for ch in value if ch.isdigit())
        if len(digits) == 13 and digits.startswith("86"):
            digits = digits[2:]
        return "+86" + digits if len(digits) == 11 else value
    return value


def _messy_phone(d: str, rnd: random.Random) -> str:
    k = rnd.randrange(6)
    if k == 0:
        return f"{d[:3]} {d[3:7]} {d[7:]}"
    if k == 1:
        return f"+86 {d}"
    if k == 2:
        return f"86{d}"
    if k == 3:
        return f" {d} "
    if k == 4:
        return f"{d[:3]}-{d[3:7]}-{d[7:]}"
    return f"+86{d}"


def _padded(v: str, rnd: random.Random) -> str:
    k = rnd.randrange(3)
    return f" {v}" if k == 0 else (f"{v} " if k == 1 else f" {v} ")


@dataclass
class _Entry:
    id_type: str
    value: str
    owner: str | None
    junk: bool
    shared_kind: bool
    users: dict[str, None] = field(default_factory=dict)  # ordered set of person ids


class IdentityBook:
    """Renders identifier values into events and remembers who each raw value belongs to."""

    def __init__(self, rnd: random.Random, messy_share: float, junk_share: float) -> None:
        self.rnd = rnd
        self.messy_share = messy_share
        self.junk_share = junk_share
        self._entries: dict[tuple[str, str], _Entry] = {}

    def show(self, id_type: str, value: str, owner: Person, user: Person | None = None, *,
             messy: float = 1.0, junk: bool = True, shared: bool = False) -> str:
        """The raw form of ``owner``'s ``value`` as ``user`` shows it in one event.

        ``messy`` scales the config's messy share for this channel (typing a phone into a
        group chat is messier than a locker keypad); ``junk`` allows a placeholder instead;
        ``shared`` marks a value that is shared by nature (a household tablet).
        """
        rnd = self.rnd
        if junk and self.junk_share and rnd.random() < self.junk_share:
            raw = rnd.choice(JUNK_PHONES) if id_type == "phone" else rnd.choice(JUNK_IDS)
            if id_type == "member_card":
                raw = "0"
            self._note(id_type, raw, None, None, junk=True, shared=False)
            return raw
        raw = value
        if messy and rnd.random() < self.messy_share * messy:
            raw = _messy_phone(value, rnd) if id_type == "phone" else _padded(value, rnd)
        self._note(id_type, raw, owner.person_id, (user or owner).person_id, junk=False, shared=shared)
        return raw

    def _note(self, id_type: str, raw: str, owner: str | None, user: str | None, *, junk: bool, shared: bool) -> None:
        key = (id_type, raw)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(id_type, raw, owner, junk, shared)
        elif entry.owner != owner:  # would be a minting bug: one raw value, two owners
            raise AssertionError(f"{id_type} {raw!r} owned by {entry.owner} and {owner}")
        if user is not None:
            entry.users[user] = None
        entry.shared_kind = entry.shared_kind or shared

    def truth_rows(self) -> list[dict[str, Any]]:
        """truth/identifiers.jsonl, one row per raw value, sorted for byte-stable output.

        ``shared`` and ``persons`` describe the identifier itself (all raw spellings of one
        normalised value together): a leader's phone is shared even in the spelling only the
        leader ever typed.
        """
        users_of: dict[tuple[str, str], dict[str, None]] = {}
        shared_of: dict[tuple[str, str], bool] = {}
        for e in self._entries.values():
            if e.junk:
                continue
            canon = (e.id_type, normalise(e.id_type, e.value))
            users_of.setdefault(canon, {}).update(e.users)
            shared_of[canon] = shared_of.get(canon, False) or e.shared_kind
        rows = []
        for key in sorted(self._entries):
            e = self._entries[key]
            norm = normalise(e.id_type, e.value)
            if e.junk:
                users: list[str] = []
                shared = False
            else:
                users = sorted(users_of[(e.id_type, norm)])
                shared = shared_of[(e.id_type, norm)] or len(users) > 1
            rows.append({
                "id_type": e.id_type,
                "value": e.value,
                "normalised": norm,
                "person_id": e.owner,
                "shared": shared,
                "persons": users,
                "junk": e.junk,
            })
        return rows
