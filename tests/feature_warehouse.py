"""Test support: one small warehouse with the feature store applied and materialized.

Used by tests/test_features*.py, tests/test_models*.py and tests/test_api*.py (one
module-scoped warehouse each) and by bench/serving.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from lastmile.config import Settings, settings


def build_feature_warehouse(home: Path, orders: int = 3000, weeks: int = 4, dbt: bool = False,
                            declarations: bool = True, materialize: bool = True) -> tuple[Settings, dict[str, float]]:
    """Simulate + ingest (the CLI commands ``lastmile run`` chains, without the cold chain
    stage: no feature reads telemetry analytics), build the feature models with dbt (``dbt run
    --select +tag:features``; ``dbt=True``: the whole ``dbt build`` first), apply the feature
    store and materialize it. The caller must have set LASTMILE_HOME=home."""
    from typer.testing import CliRunner

    from lastmile import transform
    from lastmile.cli import app
    from lastmile.features.store import apply, materialize as do_materialize
    from lastmile.features.tables import FEATURE_SELECTION, FEATURE_SELECTION_WITH_UPSTREAM
    from lastmile.models.consent import load_dietary_declarations, simulated_declarations

    timings: dict[str, float] = {}
    t = time.perf_counter()
    cfg = settings()
    assert cfg.home == Path(home).resolve(), "set LASTMILE_HOME before building"
    for command in (["simulate", "--orders", str(orders), "--weeks", str(weeks)], ["ingest"]):
        result = CliRunner().invoke(app, [*command, "--json"])
        if result.exit_code != 0:
            raise RuntimeError(f"lastmile {command[0]} failed: {result.output[-2000:]}") from result.exception
    timings["run"] = time.perf_counter() - t
    t = time.perf_counter()
    if dbt:
        transform.build(cfg)
    result = transform.run(cfg, select=FEATURE_SELECTION if dbt else FEATURE_SELECTION_WITH_UPSTREAM)
    assert result.success, result.failures
    timings["dbt"] = time.perf_counter() - t
    if declarations:
        load_dietary_declarations(cfg, simulated_declarations(cfg))
    t = time.perf_counter()
    apply(cfg, run_dbt=False)
    timings["apply"] = time.perf_counter() - t
    if materialize:
        t = time.perf_counter()
        do_materialize(cfg)
        timings["materialize"] = time.perf_counter() - t
    return cfg, timings
