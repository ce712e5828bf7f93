"""Shared helpers for the identity tests (no tests here): realistic events, readable clusters.

Identifiers are written as ``("phone", "138 0013 8000")`` (type, value as typed); helpers turn
them into the tokens the resolver sees, so expected clusters read like the business case.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from lastmile.identity import IdentifierHasher, IdentityResolver, Rules, extract_links, normalize

from tests.factories import event

HASHER = IdentifierHasher(b"test-key-not-a-secret-0123456789")
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=timezone(timedelta(hours=8)))

Ident = tuple[str, str]


def at(minutes: int) -> str:
    """An event time ``minutes`` after 2026-11-01 09:00 Beijing time."""
    return (T0 + timedelta(minutes=minutes)).isoformat()


def token(ident: Ident) -> str:
    id_type, raw = ident
    value = normalize(id_type, raw)
    assert value is not None, ident
    return HASHER.token(id_type, value)


def _event(event_type: str, minute: int, event_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """A contract-valid event from the shared factories, at ``minute``, with ``fields`` replaced."""
    overrides = {"occurred_at": at(minute), **fields}
    if event_id:
        overrides["event_id"] = event_id
    return event(event_type, **overrides)


def order(minute: int, event_id: str | None = None, source: str = "mini_program", **buyer: str) -> dict[str, Any]:
    return _event("order", minute, event_id, source=source, channel=source, buyer=buyer)


def pickup(minute: int, role: str = "buyer", **collector: str) -> dict[str, Any]:
    return _event("pickup", minute, collector_role=role, collector=collector)


def review(minute: int, **reviewer: str) -> dict[str, Any]:
    return _event("review", minute, reviewer=reviewer)


def claim(minute: int, **claimant: str) -> dict[str, Any]:
    return _event("return", minute, claimant=claimant)


def identify(minute: int, reason: str = "bind_phone", previous_phone: str | None = None, **ids: str) -> dict[str, Any]:
    return _event("identify", minute, identifiers=ids, reason=reason, previous_phone=previous_phone)


def resolver_for(rules: Rules | None = None, blocked: Iterable[Ident] = ()) -> IdentityResolver:
    rules = rules or Rules.default()
    return IdentityResolver(rules, rules.blocked_tokens(HASHER) | {token(b) for b in blocked})


def feed(resolver: IdentityResolver, events: Iterable[dict[str, Any]]) -> None:
    for event in events:
        resolver.add(extract_links(event, HASHER, resolver.rules.blocklist))


def partition_of(groups: Iterable[Iterable[Ident]]) -> frozenset[frozenset[str]]:
    return frozenset(frozenset(token(i) for i in group) for group in groups)


def oneid_named_after(ident: Ident) -> str:
    """The OneID a profile gets when ``ident`` is its earliest, strongest identifier."""
    from lastmile.identity.graph import oneid_names
    import pyarrow as pa

    return oneid_names(pa.array([token(ident)]))[0]
