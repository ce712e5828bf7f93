"""great-expectations gates: pass on a clean simulation, fail on what the contracts cannot catch.

One small warehouse for the module (simulate + ingest + `dbt run`); the later tests spoil
it on purpose, so they run in file order and the clean check comes first.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lastmile import quality, transform
from lastmile.config import Settings, settings
from lastmile.warehouse import connect
from tests.warehouses import simulated_home

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("quality") / "home"
    with simulated_home(home, ("simulate", "--orders", "3000", "--weeks", "3"), ("ingest",)) as current:
        built = transform.run(current)
        assert built.success, built.failures
        yield current

def failed_keys(result: quality.QualityResult) -> set[tuple[str, str | None]]:
    return {(f.suite.rsplit(".", 1)[-1], f.column) for f in result.failed}

def test_clean_simulation_passes_every_gate(cfg: Settings) -> None:
    result = quality.check(cfg)
    assert result.success, [str(f) for f in result.failed] + result.missing
    assert result.evaluated >= 70
    assert {d.name for d in quality.DATASETS} == set(result.datasets)
    assert result.datasets["raw_order"] > 2500
    assert result.data_docs is not None and result.data_docs.exists()
    assert (cfg.home / "quality" / "snapshots" / "raw_order.parquet").exists()

def test_raw_gate_catches_broken_references(cfg: Settings) -> None:
    wh = connect(cfg)
    # An order for a community nobody knows, and reviews of orders that never existed:
    # each event is valid on its own, so only a cross-table check can see it.
    wh.command("INSERT INTO raw_order SELECT * REPLACE (concat(event_id, '-x') AS event_id, concat(order_id, '-x') AS order_id, "
               "'C99' AS community_id) FROM raw_order FINAL ORDER BY event_id LIMIT 1")
    reviews = wh.count("raw_review")
    wh.command(f"INSERT INTO raw_review SELECT * REPLACE (concat(event_id, '-x') AS event_id, concat(order_id, '-ghost') AS order_id) "
               f"FROM raw_review FINAL ORDER BY event_id LIMIT {max(5, reviews // 50)}")
    result = quality.check(cfg, layers=("raw",))
    assert not result.success
    keys = failed_keys(result)
    assert ("raw_order", "community_known") in keys
    assert ("raw_order", "building_in_community") in keys
    assert ("raw_review", "order_known") in keys
    assert not any(suite.startswith("lastmile.mart") for suite in (f.suite for f in result.failed))

def test_freshness_gate(cfg: Settings) -> None:
    result = quality.check(cfg, layers=("raw",), freshness_hours=1e-6)
    assert ("raw_freshness", "hours_since_ingest") in failed_keys(result)

def test_mart_gate_catches_credit_inflation_and_missing_marts(cfg: Settings) -> None:
    wh = connect(cfg)
    wh.command("ALTER TABLE neighbor_credit_score UPDATE credit_tier = 'gold' WHERE credit_tier = 'silver'",
               settings={"mutations_sync": 2})
    wh.command("DROP TABLE spending_health")
    result = quality.check(cfg, layers=("mart",))
    assert not result.success
    assert ("neighbor_credit_tiers", "gold_share") in failed_keys(result)
    assert any(m.startswith("spending_health") for m in result.missing)
