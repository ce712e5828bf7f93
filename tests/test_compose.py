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


def _lastmile_services(spec: dict) -> dict[str, dict]:
    """Services built from this repository (they run the lastmile CLI)."""
    return {name: s for name, s in spec["services"].items() if s.get("build")}


def _container_port(mapping: str) -> str:
    return mapping.split(":")[-1].split("/")[0]


def test_the_full_stack_is_there() -> None:
    services = compose()["services"]
    for name in ("kafka", "clickhouse", "redis", "flink-jobmanager", "flink-taskmanager", "worker", "api", "lastmile"):
        assert name in services, f"{name} is missing from the stack"
    kafka_env = services["kafka"]["environment"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"] and not any("ZOOKEEPER" in k for k in kafka_env), "KRaft, no ZooKeeper"
    assert services["worker"]["command"][0] == "stream"
    assert services["api"]["command"][0] == "serve"
    assert any(_container_port(p) == "8000" for p in services["api"]["ports"])
    assert "8000" in " ".join(services["api"]["healthcheck"]["test"])


def test_every_lastmile_service_reads_known_variables_pointing_at_the_stack() -> None:
    spec = compose()
    services = spec["services"]
    ports = {name: {_container_port(p) for p in s.get("ports", [])} for name, s in services.items()}
    ports["kafka"] |= {listener.rsplit(":", 1)[1] for listener in services["kafka"]["environment"]["KAFKA_LISTENERS"].split(",")}
    for name, service in _lastmile_services(spec).items():
        env = service["environment"]
        assert set(env) <= set(VARIABLES), f"{name}: unknown variables {set(env) - set(VARIABLES)}"
        assert env["LASTMILE_CLICKHOUSE_URL"] == "http://clickhouse:8123", name
        host, port = env["LASTMILE_KAFKA_BOOTSTRAP"].split(":")
        assert host in services and port in ports[host], f"{name}: {env['LASTMILE_KAFKA_BOOTSTRAP']} is not a service port"
        assert "clickhouse" in service["depends_on"], f"{name} must wait for ClickHouse"
    kafka_listeners = services["kafka"]["environment"]["KAFKA_LISTENERS"]
    assert "PLAINTEXT://:9092" in kafka_listeners


def test_files_mounted_from_the_repository_exist() -> None:
    for name, service in compose()["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).is_file() or (ROOT / source).is_dir(), f"{name} mounts missing {source}"
    build = ROOT / "Dockerfile"
    assert build.is_file()


def test_analyst_user_can_only_read() -> None:
    import xml.etree.ElementTree as ET

    mounts = compose()["services"]["clickhouse"]["volumes"]
    source = next(m.split(":")[0] for m in mounts if "users.d" in m)
    root = ET.parse(ROOT / source).getroot()
    analyst = root.find("users/analyst")
    assert analyst is not None
    profile = root.find(f"profiles/{analyst.findtext('profile')}")
    assert profile is not None and profile.findtext("readonly") == "1"
    assert [q.text for q in analyst.findall("grants/query")] == ["GRANT SELECT ON lastmile.*"]
    password_env = analyst.find("password").get("from_env")
    assert password_env in compose()["services"]["clickhouse"]["environment"]


def _required_from_env(value: str) -> bool:
    """A compose value that must come from .env: `${VAR:?…}` (compose refuses to start without it)."""
    return value.startswith("${") and ":?" in value and value.endswith("}")


def test_redis_has_a_password_from_env_and_is_not_published() -> None:
    redis = compose()["services"]["redis"]
    assert not redis.get("ports"), "Redis must not be published"
    assert "--requirepass" in " ".join(redis["command"])
    assert _required_from_env(redis["environment"]["REDIS_PASSWORD"])
    assert "--requirepass \"$$REDIS_PASSWORD\"" in " ".join(redis["command"])
    assert "REDISCLI_AUTH" in redis["environment"], "the healthcheck must authenticate"
    for name, service in _lastmile_services(compose()).items():
        assert _required_from_env(service["environment"]["LASTMILE_REDIS_PASSWORD"]), name


def test_clickhouse_passwords_come_from_env() -> None:
    spec = compose()
    assert _required_from_env(spec["services"]["clickhouse"]["environment"]["CLICKHOUSE_PASSWORD"])
    assert _required_from_env(spec["services"]["clickhouse"]["environment"]["CLICKHOUSE_ANALYST_PASSWORD"])
    for name, service in _lastmile_services(spec).items():
        assert _required_from_env(service["environment"]["LASTMILE_CLICKHOUSE_PASSWORD"]), name
    raw = (ROOT / "docker-compose.yml").read_text()
    assert "PASSWORD:-" not in raw, "no password may default to a value written in the compose file"


def _bound_to_loopback(mapping: str) -> bool:
    return str(mapping).startswith(("127.0.0.1:", "[::1]:", "localhost:"))


def test_no_published_port_lacks_credentials() -> None:
    """Published to other hosts (not loopback-only): only services that check credentials.

    ClickHouse's HTTP interface checks users and passwords (from .env); the API checks API
    keys and `lastmile serve` refuses to start without one (test_api_auth). Everything else
    (Kafka, the Flink UI) has no credentials and may only listen on the host's loopback.
    """
    spec = compose()
    credentialed = {"clickhouse", "api"}
    for name, service in spec["services"].items():
        for mapping in service.get("ports", []):
            assert _bound_to_loopback(mapping) or name in credentialed, f"{name} publishes {mapping} without credentials"
    api = spec["services"]["api"]
    assert api["command"][0] == "serve" and not any("auth" in str(a) or "key" in str(a) for a in api["command"])
    users = spec["services"]["clickhouse"]["environment"]
    assert users.get("CLICKHOUSE_USER") and _required_from_env(users["CLICKHOUSE_PASSWORD"])


def test_env_example_has_placeholders_for_every_password() -> None:
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
    raw = (ROOT / "docker-compose.yml").read_text()
    required = {line.split("${", 1)[1].split(":?", 1)[0] for line in raw.splitlines() if ":?" in line}
    for name in required:
        assert name in example, f"{name} missing from .env.example"
        if "PASSWORD" in name or "KEY" in name:
            assert "change-me" in example[name], f"{name} in .env.example must be a placeholder, not a usable secret"


def test_the_image_carries_every_folder_the_code_reads_beside_the_package() -> None:
    """The main job in the image runs dbt, Feast and the audiences from folders beside `lastmile/`."""
    import re

    copied = set(re.findall(r"^COPY (\S+) \./", (ROOT / "Dockerfile").read_text(), re.M))
    for folder in ("lastmile", "pipelines", "schemas", "dbt", "feature_store", "audiences"):
        assert folder in copied, f"the Dockerfile does not COPY {folder}/ (the code reads it at run time)"
