"""Bad-data injection: which lines of a file go wrong, and how.

Three kinds, each recorded line by line in ``truth/injected.jsonl``:

* ``malformed``: an extra, broken copy of a real event (with its own event_id) right after
  it, in one of six ways the contract parser must reject, each mapped to the parser reason
  it should produce (truncated JSON, wrong type, missing field, unknown event_type, future
  timestamp, oversized payload);
* ``duplicate``: an exact re-send (same bytes, same event_id) a few lines later;
* ``late``: a real event moved far later in the file (2-20% of the file), arriving late.

Malformed lines are *added*, not substituted, so the valid world stays complete: every order
still has its events, and the truth files describe all valid lines.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import orjson

from lastmile.contracts import contracts

from .config import SimulationConfig

MALFORMED_KINDS = ("truncated", "wrong_type", "missing_field", "unknown_event_type", "future_timestamp", "oversized")
#: The ``ContractError.reason`` each malformed kind must produce.
EXPECTED_REASON = {
    "truncated": "not_json",
    "wrong_type": "wrong_type",
    "missing_field": "missing_field",
    "unknown_event_type": "unknown_event_type",
    "future_timestamp": "future_timestamp",
    "oversized": "oversized",
}
#: Short event-id prefix per event type (ids look like ``ev-ord-000001234``).
ID_PREFIX = {"locker_telemetry": "tel", "order": "ord", "pickup": "pik", "return": "ret", "review": "rev", "identify": "idn",
             "inventory": "inv", "consent": "con"}
_WRONG_TYPE_FIELD = {"locker_telemetry": "temperature_c", "order": "total_amount", "pickup": "code_verified",
                     "return": "claimant", "review": "stars", "identify": "identifiers", "inventory": "qty",
                     "consent": "granted"}
OVERSIZE_BYTES = 70_000  # comfortably over the 64 KiB payload limit


@dataclass
class Plan:
    """Per file: what happens after each source line (0-based index into the valid lines)."""

    n_source: int
    late: set[int] = field(default_factory=set)
    capture: set[int] = field(default_factory=set)
    #: position -> actions to run right after source line ``position`` was handled;
    #: an action is (kind, source index, detail).
    actions: dict[int, list[tuple[str, int, str]]] = field(default_factory=dict)
    special: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def make_plan(n: int, cfg: SimulationConfig, rng: np.random.Generator) -> Plan:
    plan = Plan(n)
    if n < 10:
        return plan
    n_mal, n_dup, n_late = (round(n * s) for s in (cfg.malformed_share, cfg.duplicate_share, cfg.late_share))
    d_min, d_max = max(1, n // 50), max(2, n // 5)
    perm = rng.permutation(n)
    late = perm[perm < n - d_min][:n_late]
    rest = perm[~np.isin(perm, late)][: n_mal + n_dup]
    mal, dup = np.sort(rest[:n_mal]), np.sort(rest[n_mal:])
    late = np.sort(late)

    kinds = [MALFORMED_KINDS[k % len(MALFORMED_KINDS)] for k in range(len(mal))]
    order = rng.permutation(len(kinds))
    for k, i in zip(order.tolist(), mal.tolist()):
        plan.actions.setdefault(i, []).append(("malformed", i, kinds[k]))
    for i, d in zip(dup.tolist(), rng.integers(1, max(2, min(2000, n // 20)), len(dup)).tolist()):
        plan.actions.setdefault(min(n - 1, i + d), []).append(("duplicate", i, ""))
    for i, d in zip(late.tolist(), rng.integers(d_min, d_max, len(late)).tolist()):
        plan.actions.setdefault(min(n - 1, i + d), []).append(("late", i, ""))
    plan.late = set(late.tolist())
    plan.capture = set(mal.tolist()) | set(dup.tolist()) | plan.late
    plan.special = np.array(sorted(plan.capture | set(plan.actions)), dtype=np.int64)
    for pos in plan.actions:  # stable, deterministic order of several actions at one position
        plan.actions[pos].sort(key=lambda a: (("malformed", "duplicate", "late").index(a[0]), a[1]))
    return plan


def malform(line: bytes, event_type: str, kind: str, new_id: str, rnd: random.Random) -> bytes:
    """A broken variant of ``line`` that the contract parser must reject for ``kind``'s reason."""
    event = orjson.loads(line)
    event["event_id"] = new_id
    if kind == "truncated":
        raw = orjson.dumps(event)
        cut = int(len(raw) * rnd.uniform(0.3, 0.9))
        while raw[cut] & 0xC0 == 0x80:  # never split a UTF-8 character: the line stays text
            cut -= 1
        return raw[:cut]
    if kind == "wrong_type":
        name = _WRONG_TYPE_FIELD[event_type]
        value = event[name]
        event[name] = list(value.values()) if isinstance(value, dict) else str(value).lower()
    elif kind == "missing_field":
        required = [f for f in contracts()[event_type].schema["required"] if f not in ("event_id", "event_type")]
        del event[rnd.choice(required)]
    elif kind == "unknown_event_type":
        event["event_type"] = rnd.choice((f"{event_type}_v2", "heartbeat", "order_created", "locker_status"))
    elif kind == "future_timestamp":
        at = event["occurred_at"]
        event["occurred_at"] = str(int(at[:4]) + 10) + at[4:]
    elif kind == "oversized":
        event["debug_dump"] = "x" * OVERSIZE_BYTES
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    return orjson.dumps(event)
