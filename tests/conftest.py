"""Shared fixtures: every test that touches the warehouse gets its own LASTMILE_HOME."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lastmile.config import Settings, settings
from lastmile.warehouse import close_all


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """An empty data directory with the embedded warehouse and a fixed hashing key."""
    monkeypatch.setenv("LASTMILE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LASTMILE_HASH_KEY", "test-key-not-secret")
    monkeypatch.delenv("LASTMILE_CLICKHOUSE_URL", raising=False)
    close_all()
    yield settings()
    close_all()  # chDB holds one directory per process: release it for the next test
