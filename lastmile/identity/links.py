"""From a validated event to identity links: which identifiers were seen together, when.

Every event contract carries at most one identifier object naming one person as a channel
saw them (``order.buyer``, ``pickup.collector``, ...). All identifiers inside that object are
linked pairwise; that is the only evidence the resolver merges on. Values that cannot be used
(placeholders, malformed phones) are not dropped silently: they come back as links with a
``reason`` so the audit can count them, but without their raw value, which is personal data.

What this module does not decide: whether a link is trustworthy. A group leader's phone typed
as ``buyer.phone`` on group-chat orders for neighbours, or a household tablet's ``device_id``,
looks like any other link here; the rules, evaluated on the whole graph, catch them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import combinations
from typing import Any, Iterable, Mapping

from lastmile.identity.identifiers import TYPE_CODES, TYPE_NAMES, Blocklist, IdentifierHasher, Normalized, check

#: Which field holds the person's identifiers, per event type. locker_telemetry has none.
IDENTIFIER_OBJECT: dict[str, str] = {
    "order": "buyer",
    "pickup": "collector",
    "return": "claimant",
    "review": "reviewer",
    "identify": "identifiers",
    "consent": "subject",
}

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class Link:
    """One observation: identifiers ``a`` and ``b`` seen together in one event.

    Three shapes share this type so a batch is one flat list (and one frame):

    * a link: ``a_*`` and ``b_*`` set, ``reason`` None;
    * a sighting: ``b_type``/``b_token`` None: ``a`` was the only usable identifier of the
      event; it still gets a profile;
    * a refusal: ``reason`` set (``empty``, ``malformed``, ``blocked_value``, ``self_link``);
      ``a_token`` is empty when the value itself was refused (its raw value is not kept).

    Tokens are :class:`~lastmile.identity.identifiers.IdentifierHasher` tokens; times are
    UTC epoch milliseconds (event time, not arrival time).
    """

    a_type: str
    a_token: str
    b_type: str | None
    b_token: str | None
    occurred_at_ms: int
    event_id: str
    event_type: str
    role: str
    reason: str | None = None
    detail: str | None = None

    @property
    def is_sighting(self) -> bool:
        return self.reason is None and self.b_token is None


def epoch_ms(timestamp: str | datetime) -> int:
    """ISO 8601 with offset (or an aware datetime) to UTC epoch milliseconds."""
    moment = datetime.fromisoformat(timestamp) if isinstance(timestamp, str) else timestamp
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {timestamp!r} has no UTC offset")
    return (moment - _EPOCH) // _MS



#: (id_type, raw value) -> (check result, token or None); see ``cache`` in :func:`extract_links`.
Observations = dict[tuple[str, Any], tuple[Normalized, "str | None"]]
_CACHE_LIMIT = 500_000


def _observed(values: Mapping[str, Any], role: str, blocklist: Blocklist, hasher: IdentifierHasher,
              stamp: tuple[int, str, str], cache: Observations | None) -> tuple[list[tuple[str, str, str]], list[Link]]:
    """Usable (type, token, role) triples of one identifier object, plus refusals."""
    usable: list[tuple[str, str, str]] = []
    refused: list[Link] = []
    occurred, event_id, event_type = stamp
    for id_type in TYPE_NAMES:  # fixed order: links come out canonical whatever the JSON key order
        if id_type not in values:
            continue
        raw = values[id_type]
        hit = cache.get((id_type, raw)) if cache is not None and isinstance(raw, str) else None
        if hit is None:
            checked = check(id_type, raw, blocklist)
            hit = (checked, hasher.token(id_type, checked.value or "") if checked.ok else None)
            if cache is not None and isinstance(raw, str):
                if len(cache) > _CACHE_LIMIT:
                    cache.clear()
                cache[(id_type, raw)] = hit
        result, token = hit
        if token is not None:
            usable.append((id_type, token, role))
        else:
            refused.append(Link(id_type, "", None, None, occurred, event_id, event_type, role,
                                result.reason, result.detail))
    return usable, refused


def extract_links(event: Mapping[str, Any], hasher: IdentifierHasher,
                  blocklist: Blocklist | None = None, cache: Observations | None = None) -> list[Link]:
    """Identity observations of one validated event (any type; none for locker telemetry).

    All usable identifiers of the event's identifier object are linked pairwise; an
    ``identify`` with ``previous_phone`` (a number change) links the old number to each of
    them too, so history follows the person. Pass the rules' ``blocklist`` so refusals follow
    the configured policy. ``cache`` (a dict the caller keeps, for one hasher and blocklist)
    saves normalising and hashing the same value again: people repeat their identifiers.
    """
    event_type = str(event.get("event_type", ""))
    field_name = IDENTIFIER_OBJECT.get(event_type)
    if field_name is None:
        return []
    found = event.get(field_name)
    # dict first: the ABC check costs a fifth of this function on the ingest hot path.
    if not isinstance(found, dict) and not isinstance(found, Mapping):
        return []
    blocklist = blocklist or Blocklist()
    stamp = (epoch_ms(event["occurred_at"]), str(event["event_id"]), event_type)
    usable, links = _observed(event[field_name], field_name, blocklist, hasher, stamp, cache)
    if event_type == "identify" and "previous_phone" in event:
        previous, refused = _observed({"phone": event["previous_phone"]}, "previous_phone", blocklist, hasher, stamp, cache)
        usable += previous
        links += refused
    seen: dict[tuple[str, str], str] = {}
    for id_type, token, role in usable:
        if (id_type, token) in seen:
            # The same identifier twice in one event (previous_phone equal to phone): a link
            # from a value to itself is no evidence of anything.
            links.append(Link(id_type, token, id_type, token, *stamp, role, "self_link", seen[(id_type, token)]))
        else:
            seen[(id_type, token)] = role
    distinct = sorted(seen, key=lambda item: (TYPE_CODES[item[0]], item[1]))
    if len(distinct) == 1:
        (id_type, token), = distinct
        links.append(Link(id_type, token, None, None, *stamp, seen[(id_type, token)]))
    for (a_type, a_token), (b_type, b_token) in combinations(distinct, 2):
        role = seen[(a_type, a_token)] if seen[(a_type, a_token)] == seen[(b_type, b_token)] else "previous_phone"
        links.append(Link(a_type, a_token, b_type, b_token, *stamp, role))
    return links


def links_from_events(events: Iterable[Mapping[str, Any]], hasher: IdentifierHasher,
                      blocklist: Blocklist | None = None) -> list[Link]:
    """:func:`extract_links` over many events, flattened."""
    out: list[Link] = []
    for event in events:
        out.extend(extract_links(event, hasher, blocklist))
    return out
