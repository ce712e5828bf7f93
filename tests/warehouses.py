"""Simulated warehouses for the slow tests of the marts (dbt, quality gate, report).

The main job runs in its own process, as a user runs it: chDB is released when it exits,
and the test process never has to load PyFlink.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lastmile.config import Settings, settings
from lastmile.warehouse import close_all


def run_main_job(home: Path, *args: str) -> None:
    """`lastmile <args>` in its own process with ``home`` as LASTMILE_HOME."""
    env = {**os.environ, "LASTMILE_HOME": str(home), "LASTMILE_HASH_KEY": "test-key-not-secret", "DO_NOT_TRACK": "1"}
    env.pop("LASTMILE_CLICKHOUSE_URL", None)
    out = subprocess.run([str(Path(sys.executable).with_name("lastmile")), *args], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


@contextmanager
def simulated_home(home: Path, *commands: tuple[str, ...]) -> Iterator[Settings]:
    """Run ``commands`` (e.g. ``("simulate", ...)``, ``("ingest",)``) into ``home``; yield its settings."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LASTMILE_HOME", str(home))
        mp.setenv("LASTMILE_HASH_KEY", "test-key-not-secret")
        mp.delenv("LASTMILE_CLICKHOUSE_URL", raising=False)
        mp.setenv("DO_NOT_TRACK", "1")
        close_all()
        for command in commands:
            run_main_job(home, *command)
        yield settings()
        close_all()


@contextmanager
def feature_home(home: Path) -> Iterator[Settings]:
    """Point the environment at ``home`` (embedded warehouse, SQLite online store) while inside."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LASTMILE_HOME", str(home))
        mp.setenv("LASTMILE_HASH_KEY", "test-key-not-secret")
        mp.delenv("LASTMILE_CLICKHOUSE_URL", raising=False)
        mp.delenv("LASTMILE_FEAST_ONLINE_STORE", raising=False)
        mp.setenv("DO_NOT_TRACK", "1")
        close_all()
        yield settings()
        close_all()


@contextmanager
def empty_embedded_warehouse(home: Path) -> Iterator[tuple[Settings, "Warehouse"]]:
    """A fresh, migrated embedded warehouse under ``home`` for a whole test module.

    Opening one per test would dominate a module of small tests; each test then uses people or
    events of its own.
    """
    from lastmile.warehouse import Warehouse, connect, migrate  # noqa: F401 (Warehouse: the annotation)

    with pytest.MonkeyPatch.context() as env:
        env.setenv("LASTMILE_HOME", str(home))
        env.setenv("LASTMILE_HASH_KEY", "test-key-not-secret")
        env.delenv("LASTMILE_CLICKHOUSE_URL", raising=False)
        close_all()
        cfg = settings()
        store = connect(cfg)
        migrate(store)
        yield cfg, store
        close_all()
