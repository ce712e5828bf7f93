"""Acceptance: on the default simulation every injected excursion is found, and nothing else.

The simulator records the excursions it injected (``truth/excursions.jsonl``: compartment,
start and end of the run of out-of-range readings) and the brief door-open spikes that must
not count (``truth/door_spikes.jsonl``). An excursion is found when the job reports one in the
same compartment overlapping it; a reported excursion with no injected one is a false alarm.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from lastmile.config import settings
from lastmile.warehouse import close_all, connect

pytestmark = pytest.mark.slow


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc).replace(tzinfo=None)


def _truth(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    simulator = pytest.importorskip("lastmile.simulator")
    from pipelines import beam_ingest, flink_telemetry

    root = tmp_path_factory.mktemp("coldchain-sim")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LASTMILE_HOME", str(root / "home"))
        mp.setenv("LASTMILE_HASH_KEY", "test-key-not-secret")
        mp.delenv("LASTMILE_CLICKHOUSE_URL", raising=False)
        close_all()
        cfg = settings()
        out = root / "sim"
        simulator.simulate(simulator.SimulationConfig(seed=42, orders=5000), out)
        beam_ingest.run(out / "events", cfg=cfg)
        report = flink_telemetry.run(out / "events", cfg)
        warehouse = connect(cfg)
        found = warehouse.rows("SELECT compartment_id, started_at, last_out_at FROM coldchain_excursions FINAL")
        claims = warehouse.rows("SELECT decision, count() FROM claim_decisions FINAL GROUP BY decision")
        yield {"report": report, "found": found, "claims": dict(claims),
               "excursions": _truth(out / "truth" / "excursions.jsonl"),
               "spikes": _truth(out / "truth" / "door_spikes.jsonl")}
        close_all()


def _overlaps(row: tuple, truth: dict[str, Any]) -> bool:
    comp, start, last_out = row
    return comp == truth["compartment_id"] and start <= _instant(truth["end"]) and last_out >= _instant(truth["start"])


def test_every_injected_excursion_is_found(simulated: dict[str, Any]) -> None:
    assert simulated["excursions"], "the default simulation injects excursions"
    missed = [t for t in simulated["excursions"] if not any(_overlaps(r, t) for r in simulated["found"])]
    assert missed == []


def test_no_excursion_is_reported_where_none_was_injected(simulated: dict[str, Any]) -> None:
    false_alarms = [r for r in simulated["found"] if not any(_overlaps(r, t) for t in simulated["excursions"])]
    assert false_alarms == []
    assert len(simulated["found"]) == len(simulated["excursions"])


def test_door_spikes_do_not_count(simulated: dict[str, Any]) -> None:
    assert simulated["spikes"], "the default simulation injects door spikes"
    on_spikes = [s for s in simulated["spikes"] if any(_overlaps(r, s) for r in simulated["found"])]
    assert on_spikes == []


def test_affected_orders_get_claim_decisions(simulated: dict[str, Any]) -> None:
    report = simulated["report"]
    assert report.excursions == len(simulated["excursions"])
    assert sum(simulated["claims"].values()) > 0
