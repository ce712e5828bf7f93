"""Ground truth for *evaluation only*: the simulator's personas mapped onto OneIDs.

``$LASTMILE_HOME/truth/`` exists only for simulated data sets and is never read on a product
path (serving, scoring, the policy). Training reads it solely to label and score the
spending-health model, as an offline evaluation harness would.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import orjson

from lastmile.config import Settings


class NoGroundTruth(RuntimeError):
    """The data directory has no simulator ground truth (real data)."""


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise NoGroundTruth(f"{path} not found: ground truth exists only for simulated data")
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def oneid_persons(cfg: Settings) -> dict[str, str]:
    """OneID -> the person most of its orders really belong to (truth/orders.jsonl)."""
    from lastmile.warehouse import connect

    order_person = {r["order_id"]: r["person_id"] for r in _jsonl(cfg.home / "truth" / "orders.jsonl")}
    rows = connect(cfg).rows(
        "SELECT e.oneid, o.order_id FROM raw_order AS o FINAL "
        "INNER JOIN event_oneid AS e ON e.event_id = o.event_id AND e.event_type = 'order' WHERE e.oneid != ''")
    votes: dict[str, Counter] = defaultdict(Counter)
    for oneid, order_id in rows:
        if order_id in order_person:
            votes[oneid][order_person[order_id]] += 1
    return {oneid: c.most_common(1)[0][0] for oneid, c in votes.items()}


def persons(cfg: Settings) -> dict[str, dict]:
    return {r["person_id"]: r for r in _jsonl(cfg.home / "truth" / "persons.jsonl")}


def persona_labels(cfg: Settings) -> dict[str, str]:
    """OneID -> persona (young_night, senior_health, family, impulse)."""
    people = persons(cfg)
    return {oneid: people[p]["persona"] for oneid, p in oneid_persons(cfg).items() if p in people}
