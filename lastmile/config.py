"""All configuration in one place: environment variables with documented defaults.

Every component reads :func:`settings`; nothing else looks at ``os.environ``. The README's
configuration table is generated from :data:`VARIABLES`, so the two cannot drift apart.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

#: name -> (default, description). Defaults select the embedded, laptop-sized stack.
VARIABLES: dict[str, tuple[str, str]] = {
    "LASTMILE_HOME": ("./.lastmile", "Data directory: simulated events, the embedded warehouse, secrets, reports."),
    "LASTMILE_CLICKHOUSE_URL": ("", "Empty: embedded chDB in $LASTMILE_HOME/warehouse. http(s)://host:8123 selects a ClickHouse server."),
    "LASTMILE_CLICKHOUSE_USER": ("default", "ClickHouse user (server mode)."),
    "LASTMILE_CLICKHOUSE_PASSWORD": ("", "ClickHouse password (server mode)."),
    "LASTMILE_CLICKHOUSE_DATABASE": ("lastmile", "Database holding lastmile's tables."),
    "LASTMILE_HASH_KEY": ("", "Secret key for the keyed hashes of direct identifiers. Empty: generated once into $LASTMILE_HOME/hash.key."),
    "LASTMILE_BEAM_RUNNER": ("DirectRunner", "Beam runner for ingest (DirectRunner, FlinkRunner, DataflowRunner)."),
    "LASTMILE_INGEST_CHUNK_MB": ("8", "Input read per chunk in the ingest pipeline: the unit one worker validates and one insert per table writes."),
    "LASTMILE_INGEST_WORKERS": ("0", "Processes validating events in the Beam ingest; 0 = one per core for inputs over 32 MiB, else in-process."),
    "LASTMILE_MAX_EVENT_BYTES": ("65536", "Largest accepted event payload; larger ones are quarantined."),
    "LASTMILE_MAX_CLOCK_SKEW_S": ("300", "How far in the future an event's occurred_at may be before it is quarantined."),
    "LASTMILE_KAFKA_BOOTSTRAP": ("", "Empty: the development broker on loopback. host:port selects real Kafka."),
    "LASTMILE_FEAST_ONLINE_STORE": ("", "Empty: Feast online store in SQLite at $LASTMILE_HOME/feast/online.db. redis://host:6379[/db] selects Redis."),
    "LASTMILE_FEAST_REPO": ("", "Feast repository directory. Empty: the feature_store/ shipped with lastmile."),
    "LASTMILE_FLINK_JOBMANAGER": ("", "Empty: PyFlink's embedded mini-cluster. host:port submits the telemetry job to a Flink cluster."),
    "LASTMILE_FLINK_KAFKA_JAR": ("", "Path or URL of flink-sql-connector-kafka 4.0.x, needed when the telemetry job reads Kafka on a cluster."),
}


def _env(name: str) -> str:
    return os.environ.get(name, VARIABLES[name][0])


@dataclass(frozen=True)
class Settings:
    """A snapshot of the configuration. Build one with :func:`settings`."""

    home: Path
    clickhouse_url: str
    clickhouse_user: str
    clickhouse_password: str
    clickhouse_database: str
    hash_key: str
    beam_runner: str
    ingest_chunk_bytes: int
    ingest_workers: int
    max_event_bytes: int
    max_clock_skew_s: int
    kafka_bootstrap: str
    feast_online_store: str
    feast_repo: str
    flink_jobmanager: str
    flink_kafka_jar: str

    @property
    def embedded(self) -> bool:
        """True when the warehouse is chDB in-process rather than a ClickHouse server."""
        return not self.clickhouse_url

    @property
    def warehouse_dir(self) -> Path:
        return self.home / "warehouse"

    @property
    def events_dir(self) -> Path:
        return self.home / "events"

    def hash_key_bytes(self) -> bytes:
        """The identifier-hashing secret; generated and kept in ``$LASTMILE_HOME`` if unset.

        A generated key is fine for a demo, but production must set LASTMILE_HASH_KEY from a
        secret store: losing the key makes old hashes unmatchable with new ones.
        """
        if self.hash_key:
            return self.hash_key.encode()
        path = self.home / "hash.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip().encode()


@lru_cache(maxsize=None)
def _cached(key: tuple[tuple[str, str], ...]) -> Settings:
    env = dict(key)
    return Settings(
        home=Path(env["LASTMILE_HOME"]).expanduser().resolve(),
        clickhouse_url=env["LASTMILE_CLICKHOUSE_URL"],
        clickhouse_user=env["LASTMILE_CLICKHOUSE_USER"],
        clickhouse_password=env["LASTMILE_CLICKHOUSE_PASSWORD"],
        clickhouse_database=env["LASTMILE_CLICKHOUSE_DATABASE"],
        hash_key=env["LASTMILE_HASH_KEY"],
        beam_runner=env["LASTMILE_BEAM_RUNNER"],
        ingest_chunk_bytes=max(1, int(float(env["LASTMILE_INGEST_CHUNK_MB"]) * (1 << 20))),
        ingest_workers=int(env["LASTMILE_INGEST_WORKERS"]),
        max_event_bytes=int(env["LASTMILE_MAX_EVENT_BYTES"]),
        max_clock_skew_s=int(env["LASTMILE_MAX_CLOCK_SKEW_S"]),
        kafka_bootstrap=env["LASTMILE_KAFKA_BOOTSTRAP"],
        feast_online_store=env["LASTMILE_FEAST_ONLINE_STORE"],
        feast_repo=env["LASTMILE_FEAST_REPO"],
        flink_jobmanager=env["LASTMILE_FLINK_JOBMANAGER"],
        flink_kafka_jar=env["LASTMILE_FLINK_KAFKA_JAR"],
    )


def settings() -> Settings:
    """Current settings from the environment (cached per distinct environment)."""
    return _cached(tuple((name, _env(name)) for name in VARIABLES))
