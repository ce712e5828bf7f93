"""The messages on ``lastmile.actions``: what marketing automation and procurement consume.

Journey sends (:func:`lastmile.journeys.scheduler.actions`: the cold-chain compensation, the
welcome, the replenishment nudge and every other journey) and batch-quality alerts
(:mod:`lastmile.batches.monitor`) share one shape. Every action has a deterministic
``action_id`` (a journey step id, an alert id), so consumers deduplicate on it: actions are
at-least-once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True)
class Action:
    """One message on ``lastmile.actions``."""

    action_id: str
    action: str
    event_id: str
    event_type: str
    occurred_at: str
    person: str | None  # token of the strongest identifier, when the event names a person
    details: dict[str, Any] = field(default_factory=dict)

    def key(self) -> bytes:
        return self.action_id.encode()

    def to_json(self) -> bytes:
        return orjson.dumps(self)  # orjson serialises dataclasses natively (as asdict would, without the deep copy)
