"""Kafka topics of the real-time path and how each event type is keyed.

One topic per event type, ``lastmile.<event_type>``, carrying the contracts' JSON as it is
(the same bytes a file line would hold), so a producer needs nothing but the schemas. The
key decides the partition, and Kafka keeps order only within a partition, so each type is
keyed by what its order matters for:

* ``order``, ``pickup``, ``review``, ``return`` by ``order_id`` - a pickup, a review or a
  claim must not overtake the order it refers to in the same partition;
* ``locker_telemetry`` by ``compartment_id`` - readings of one compartment stay in time order;
* ``inventory`` by ``warehouse_id`` - a front warehouse's receipts, write-offs and counts stay
  in order, so a count is never read before the receipt it counted;
* ``identify`` and ``consent`` by the person's strongest identifier - one person's bindings,
  and grants and withdrawals, stay in order.

Identifier keys are digests, not the values: keys show up in broker tooling and logs, and
a partitioning key need not be readable. Packaging returns carry no order, so they are
keyed by the claimant like identify events.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from lastmile.identity.identifiers import TYPE_NAMES
from lastmile.simulator.config import EVENT_TYPES

PREFIX = "lastmile."
#: Contract-violating messages, with the reason (the quarantine table's rows, as JSON).
QUARANTINE_TOPIC = "lastmile.quarantine"
#: Triggers for marketing automation (compensation, welcome), as JSON.
ACTIONS_TOPIC = "lastmile.actions"
#: Partitions of each event topic when lastmile creates it (a real cluster may differ).
DEFAULT_PARTITIONS = 4

#: Which field keys each event type; ``None`` means "the strongest identifier".
_KEY_FIELD: dict[str, str] = {
    "order": "order_id",
    "pickup": "order_id",
    "review": "order_id",
    "return": "order_id",
    "locker_telemetry": "compartment_id",
    "inventory": "warehouse_id",
}
#: The identifier object of each type that names a person (for identify keys and packaging returns).
_PERSON_OBJECT: dict[str, str] = {"identify": "identifiers", "return": "claimant", "consent": "subject"}


def topic_for(event_type: str) -> str:
    """``lastmile.<event_type>``."""
    return PREFIX + event_type


def event_topics() -> list[str]:
    """The topics the worker consumes, one per event type of the contracts.

    The simulated types come first, then any contract the simulator does not write.
    """
    from lastmile.contracts import contracts

    return [topic_for(t) for t in (*EVENT_TYPES, *sorted(set(contracts()) - set(EVENT_TYPES)))]


def event_type_of(topic: str) -> str:
    """Inverse of :func:`topic_for`."""
    if not topic.startswith(PREFIX):
        raise ValueError(f"{topic!r} is not a lastmile topic")
    return topic[len(PREFIX):]


def strongest_identifier(identifiers: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(id_type, value)`` of the strongest identifier present (unionid first, device last)."""
    for id_type in TYPE_NAMES:
        value = identifiers.get(id_type)
        if isinstance(value, str) and value:
            return id_type, value
    return None


def message_key(event_type: str, event: Mapping[str, Any]) -> bytes | None:
    """The Kafka key for an event (``None`` when it has nothing to key on: a malformed event)."""
    field = _KEY_FIELD.get(event_type)
    if field is not None:
        value = event.get(field)
        if isinstance(value, str) and value:
            return value.encode()
    person = event.get(_PERSON_OBJECT.get(event_type, ""))
    if isinstance(person, Mapping):
        found = strongest_identifier(person)
        if found is not None:
            id_type, value = found
            return hashlib.blake2b(f"{id_type}:{value}".encode(), digest_size=16).hexdigest().encode()
    return None
