"""How good are the profiles? Pairwise precision and recall against a ground truth.

The truth (the simulator's ``truth/identifiers.jsonl``, or any file of ``id_type``,
``value``, ``person_id`` lines) says which person each raw identifier belongs to. Values are
normalised and hashed with the warehouse's key, so the comparison runs on tokens and the
truth never has to enter the warehouse.

Pairwise metrics (the entity-resolution standard): among all pairs of identifiers placed in
the same profile, the share that truly belong to one person (precision: over-merging lowers
it); among all pairs that truly belong to one person, the share placed in one profile
(recall: under-merging lowers it). Identifiers the truth marks shared (a household tablet,
a leader's phone) belong to several people and are left out; junk values too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from lastmile.privacy import Identifiers
from lastmile.warehouse import Warehouse


@dataclass(frozen=True)
class Evaluation:
    pairwise_precision: float
    pairwise_recall: float
    largest_cluster: int
    largest_cluster_persons: int
    profiles: int
    persons: int
    identifiers_evaluated: int
    identifiers_missing: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _pairs(n: int) -> int:
    return n * (n - 1) // 2


def load_truth(path: Path, identifiers: Identifiers) -> dict[str, str]:
    """token -> person for every usable, unshared identifier in the truth file."""
    truth: dict[str, str] = {}
    with path.open("rb") as handle:
        for line in handle:
            row = orjson.loads(line)
            if row.get("junk") or row.get("shared") or not row.get("person_id"):
                continue
            token = identifiers.token(row["id_type"], row["value"])
            if token is not None:
                truth[token] = row["person_id"]
    if not truth:
        raise ValueError(f"no usable identifiers in the truth file {path}")
    return truth


def evaluate(warehouse: Warehouse, truth: dict[str, str]) -> Evaluation:
    """Compare the warehouse's OneID assignment with ``truth`` (token -> person)."""
    predicted = dict(warehouse.rows("SELECT token, oneid FROM identity_nodes FINAL WHERE oneid != ''"))
    cells: Counter[tuple[str, str]] = Counter()
    missing = 0
    for token, person in truth.items():
        oneid = predicted.get(token)
        if oneid is None:
            missing += 1
            continue
        cells[(oneid, person)] += 1
    by_profile: Counter[str] = Counter()
    by_person: Counter[str] = Counter()
    persons_in: dict[str, set[str]] = {}
    for (oneid, person), n in cells.items():
        by_profile[oneid] += n
        by_person[person] += n
        persons_in.setdefault(oneid, set()).add(person)
    together = sum(_pairs(n) for n in cells.values())
    predicted_pairs = sum(_pairs(n) for n in by_profile.values())
    true_pairs = sum(_pairs(n) for n in by_person.values())
    largest, size = max(by_profile.items(), key=lambda kv: (kv[1], kv[0])) if by_profile else ("", 0)
    return Evaluation(
        pairwise_precision=round(together / predicted_pairs, 5) if predicted_pairs else 1.0,
        pairwise_recall=round(together / true_pairs, 5) if true_pairs else 1.0,
        largest_cluster=size,
        largest_cluster_persons=len(persons_in.get(largest, ())),
        profiles=len(by_profile),
        persons=len(by_person),
        identifiers_evaluated=sum(cells.values()),
        identifiers_missing=missing,
    )
