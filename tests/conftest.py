"""Shared fixtures: every test that touches the warehouse gets its own LASTMILE_HOME.

``home`` runs each such test twice: on the embedded warehouse (chDB), and on a ClickHouse
server when ``LASTMILE_TEST_CLICKHOUSE_URL`` points at one (each test then gets a database of
its own, dropped afterwards). No server can run on the development machines, so the server
variant is skipped there; the code under test is the same, only the DSN differs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lastmile.config import Settings, settings
from lastmile.warehouse import close_all

SERVER_URL = os.environ.get("LASTMILE_TEST_CLICKHOUSE_URL", "")


@pytest.fixture(params=["embedded", "server"])
def home(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """An empty data directory and warehouse, with a fixed hashing key."""
    monkeypatch.setenv("LASTMILE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LASTMILE_HASH_KEY", "test-key-not-secret")
    database = ""
    if request.param == "server":
        if not SERVER_URL:
            pytest.skip("no ClickHouse server: set LASTMILE_TEST_CLICKHOUSE_URL=http://host:8123 to run this variant")
        database = f"lastmile_test_{uuid.uuid4().hex[:12]}"
        monkeypatch.setenv("LASTMILE_CLICKHOUSE_URL", SERVER_URL)
        monkeypatch.setenv("LASTMILE_CLICKHOUSE_DATABASE", database)
    else:
        monkeypatch.delenv("LASTMILE_CLICKHOUSE_URL", raising=False)
    close_all()
    yield settings()
    if database:
        from lastmile.warehouse import connect

        connect().command(f"DROP DATABASE IF EXISTS `{database}`")
    close_all()  # chDB holds one directory per process: release it for the next test


@pytest.fixture(scope="session")
def trained_warehouse(tmp_path_factory: pytest.TempPathFactory):
    """The default simulation (20,000 orders, 8 weeks) with the feature store materialized and
    both models trained: built once, shared by the model and API tests (read-only for them).

    Returns ``(home, recommender, spending)``; enter :func:`tests.warehouses.feature_home`
    with ``home`` to use it.
    """
    from tests.feature_warehouse import build_feature_warehouse
    from lastmile.models.recommender import train_recommender
    from lastmile.models.spending import train_spending
    from tests.warehouses import feature_home

    home = tmp_path_factory.mktemp("trained") / "home"
    with feature_home(home) as cfg:
        build_feature_warehouse(home, orders=20000, weeks=8)
        reco = train_recommender(cfg, max_users=800)
        spend = train_spending(cfg)
    return home, reco, spend
