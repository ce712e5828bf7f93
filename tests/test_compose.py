"""docker-compose.yml cannot run here (no Docker engine), so it is checked statically."""

from __future__ import annotations

from pathlib import Path

import yaml

from lastmile.config import VARIABLES

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_service_has_a_healthcheck() -> None:
    services = compose()["services"]
    assert services, "no services"
    for name, service in services.items():
        assert "healthcheck" in service and service["healthcheck"]["test"], f"{name} has no healthcheck"


def test_lastmile_reads_only_variables_it_knows_and_points_at_the_server() -> None:
    env = compose()["services"]["lastmile"]["environment"]
    assert set(env) <= set(VARIABLES), set(env) - set(VARIABLES)
    assert env["LASTMILE_CLICKHOUSE_URL"] == "http://clickhouse:8123"
    ports = compose()["services"]["clickhouse"]["ports"]
    assert any(p.split(":")[-1].split()[0] == "8123" for p in ports)


def test_env_example_covers_every_required_variable() -> None:
    example = (ROOT / ".env.example").read_text()
    raw = (ROOT / "docker-compose.yml").read_text()
    for line in raw.splitlines():
        if ":?" in line:
            name = line.split("${", 1)[1].split(":?", 1)[0]
            assert f"{name}=" in example, f"{name} is required by compose but missing from .env.example"


def test_named_volumes_are_declared() -> None:
    spec = compose()
    declared = set(spec.get("volumes", {}))
    for service in spec["services"].values():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"volume {source} is not declared"
