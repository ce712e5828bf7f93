"""Configuration lives in one place and the README documents all of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lastmile.config import VARIABLES, settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_documents_every_variable_with_its_default() -> None:
    text = README.read_text(encoding="utf-8")
    for name, (default, _) in VARIABLES.items():
        line = next((row for row in text.splitlines() if row.startswith(f"| `{name}` |")), None)
        assert line is not None, f"{name} missing from the README's configuration table"
        assert (f"`{default}`" if default else "(empty)") in line


def test_embedded_by_default_and_server_by_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LASTMILE_HOME", str(tmp_path))
    monkeypatch.delenv("LASTMILE_CLICKHOUSE_URL", raising=False)
    assert settings().embedded and settings().warehouse_dir == tmp_path / "warehouse"
    monkeypatch.setenv("LASTMILE_CLICKHOUSE_URL", "http://clickhouse:8123")
    assert not settings().embedded


def test_generated_hash_key_is_stable_and_private(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LASTMILE_HOME", str(tmp_path))
    monkeypatch.delenv("LASTMILE_HASH_KEY", raising=False)
    first = settings().hash_key_bytes()
    assert first == settings().hash_key_bytes() and len(first) == 64
    assert (tmp_path / "hash.key").stat().st_mode & 0o077 == 0
