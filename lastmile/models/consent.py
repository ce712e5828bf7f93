"""Declared dietary needs: the medical exception to the spending-health recommendation cap.

No event carries a dietary need: the contracts (schemas/*.json) have no such field, and in
the simulator the flag lives only in ``truth/persons.jsonl``. A real operator collects it
through a health-declaration / consent form, so lastmile takes it from a **reference table
loaded explicitly**, ``ref_dietary_declarations`` (oneid, dietary_need, declared_at, source),
from a JSONL file the operator exports. The feature build turns it into the
``customer_consent`` feature view, so serving reads it online like any other feature.

:func:`simulated_declarations` writes such a file for a *simulated* data set from the
simulator's truth (the stand-in for the form); product code never reads ``truth/``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from lastmile.config import Settings

DDL = """
CREATE TABLE IF NOT EXISTS ref_dietary_declarations (
    oneid String, dietary_need Bool, declared_at DateTime64(3, 'UTC'), source LowCardinality(String),
    _loaded_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(_loaded_at) ORDER BY oneid
COMMENT 'Declared dietary needs (health-declaration form): exempts a customer from the spending-health recommendation cap.'
"""


def health_data_consented(features: dict[str, Any]) -> bool:
    """Whether a person's health fields may be shown (to a reader entitled to health data at all).

    The declaration is the consent: a person tells the operator of a dietary need on the
    health-declaration form for it to be used, and nothing else tells lastmile anything about
    their health. So a person with a declaration on file (the ``customer_consent`` view holds a
    value) has consented; a person without one has neither health data nor consent.
    """
    return features.get("dietary_need_declared") is not None


def load_dietary_declarations(cfg: Settings, path: Path) -> int:
    """Load a JSONL export of declarations (oneid, dietary_need, declared_at, source); returns rows."""
    from lastmile.warehouse import connect

    w = connect(cfg)
    w.command(DDL)
    lines = [line for line in Path(path).read_bytes().splitlines() if line.strip()]
    for line in lines:
        row = orjson.loads(line)
        missing = {"oneid", "dietary_need", "declared_at"} - set(row)
        if missing:
            raise ValueError(f"{path}: a declaration lacks {sorted(missing)}: {line[:120]!r}")
    if lines:
        w.insert_json_lines("ref_dietary_declarations", lines)
    return len(lines)


def simulated_declarations(cfg: Settings, out: Path | None = None) -> Path:
    """Simulation only: the declarations a health form would have collected, from truth/."""
    from lastmile.models.evaluation import oneid_persons, persons

    people = persons(cfg)
    out = out or cfg.home / "reference" / "dietary_declarations.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc).isoformat()
    rows = [{"oneid": oneid, "dietary_need": True, "declared_at": start, "source": "simulated_health_form"}
            for oneid, p in sorted(oneid_persons(cfg).items()) if people.get(p, {}).get("dietary_need")]
    out.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return out
