"""All configuration in one place: environment variables with documented defaults.

Every component reads :func:`settings`; nothing else looks at ``os.environ``. The README's
configuration table is generated from :data:`VARIABLES`, so the two cannot drift apart.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

#: name -> (default, description). Defaults select the embedded, laptop-sized stack.
VARIABLES: dict[str, tuple[str, str]] = {
    "LASTMILE_HOME": ("./.lastmile", "Data directory: simulated events, the embedded warehouse, secrets, reports."),
    "LASTMILE_CLICKHOUSE_URL": ("", "Empty: embedded chDB in $LASTMILE_HOME/warehouse. http(s)://host:8123 selects a ClickHouse server."),
    "LASTMILE_CLICKHOUSE_USER": ("default", "ClickHouse user (server mode)."),
    "LASTMILE_CLICKHOUSE_PASSWORD": ("", "ClickHouse password (server mode)."),
    "LASTMILE_CLICKHOUSE_DATABASE": ("lastmile", "Database holding lastmile's tables."),
    "LASTMILE_WAREHOUSE_USERS": ("", "Users and roles (TOML, passwords as sha256 hex) of `warehouse serve` and `stream --serve-port`. Empty: $LASTMILE_HOME/warehouse_users.toml, created with one generated reader at first serve."),
    "LASTMILE_HASH_KEY": ("", "Secret key for the keyed hashes of direct identifiers. Empty: generated once into $LASTMILE_HOME/hash.key."),
    "LASTMILE_BEAM_RUNNER": ("DirectRunner", "Beam runner for ingest (DirectRunner, FlinkRunner, DataflowRunner)."),
    "LASTMILE_INGEST_CHUNK_MB": ("8", "Input read per chunk in the ingest pipeline: the unit one worker validates and one insert per table writes."),
    "LASTMILE_INGEST_WORKERS": ("0", "Processes validating events in the Beam ingest; 0 = one per core for inputs over 32 MiB, else in-process."),
    "LASTMILE_MAX_EVENT_BYTES": ("65536", "Largest accepted event payload; larger ones are quarantined."),
    "LASTMILE_MAX_CLOCK_SKEW_S": ("300", "How far in the future an event's occurred_at may be before it is quarantined."),
    "LASTMILE_MIN_OCCURRED_AT": ("2000-01-01T00:00:00+00:00", "Earliest accepted occurred_at (ISO 8601 with offset); older events are quarantined as too_old."),
    "LASTMILE_KAFKA_BOOTSTRAP": ("", "Empty: the development broker on loopback. host:port selects real Kafka."),
    "LASTMILE_FEAST_ONLINE_STORE": ("", "Empty: Feast online store in SQLite at $LASTMILE_HOME/feast/online.db. redis://host:6379[/db] selects Redis (rediss:// over TLS)."),
    "LASTMILE_REDIS_PASSWORD": ("", "Password of the Redis online store (its requirepass); empty: none."),
    "LASTMILE_API_KEYS_FILE": ("", "API keys of `lastmile serve` (JSON, secrets stored as sha256; `lastmile api-key create`). Empty: $LASTMILE_HOME/api/keys.json."),
    "LASTMILE_API_AUDIT_LOG": ("", "Append-only log of API reads of personal data (who, what, whose, when). Empty: $LASTMILE_HOME/api/audit.jsonl."),
    "LASTMILE_API_RATE_PER_MINUTE": ("600", "Requests a minute a new API key may make (token bucket, bursts of a tenth); `api-key create --rate-per-minute` sets a key's own."),
    "LASTMILE_FEAST_REPO": ("", "Feast repository directory. Empty: the feature_store/ shipped with lastmile."),
    "LASTMILE_FLINK_JOBMANAGER": ("", "Empty: PyFlink's embedded mini-cluster. host:port submits the telemetry job to a Flink cluster."),
    "LASTMILE_FLINK_KAFKA_JAR": ("", "Path or URL of flink-sql-connector-kafka 4.0.x, needed when the telemetry job reads Kafka on a cluster."),
    "LASTMILE_BUSINESS_TZ": ("Asia/Shanghai", "IANA time zone of the business calendar: where days, weeks and months end for every mart, feature and live counter (passed to dbt as var business_tz)."),
    "LASTMILE_AUDIENCES_DIR": ("", "Folder of audience definitions (*.yml, `lastmile audience`). Empty: audiences/ shipped with lastmile at the repository root."),
    "LASTMILE_JOURNEYS_DIR": ("", "Folder of journey definitions (*.yml, `lastmile journey`). Empty: journeys/ shipped with lastmile at the repository root."),
    "LASTMILE_AUDIENCE_DESTINATIONS": ("", "YAML file of audience destinations (Kafka topic, signed webhooks; `lastmile audience publish`). Empty: $LASTMILE_HOME/destinations.yml; no file: no destinations."),
    "LASTMILE_CONTACT_RULES": ("", "YAML file of contact rules (frequency caps, quiet hours, spending-health cap, leader exports). Empty: contact_rules.yml at the repository root."),
    "LASTMILE_STOCKING_COST_SHARE": ("0.65", "Unit cost of a SKU as a share of its unit price when a receipt carries no unit cost: what writing off one unit loses (stocking plan)."),
    "LASTMILE_STOCKING_GOODWILL_SHARE": ("1.0", "Goodwill lost with each unit of demand a front warehouse cannot serve, as a share of the unit price, on top of the margin: a lost order costs margin + goodwill (stocking plan)."),
    "LASTMILE_STOCKING_HOLDING_SHARE": ("0.01", "Cost of keeping a unit on a front warehouse's shelf one more day, as a share of its unit cost (cold space, capital): what a long-life leftover costs (stocking plan)."),
    "LASTMILE_POOL_KM": ("2.0", "Communities at most this many km apart may cover each other's shortfall from surplus stock (stocking plan `pool_from`); 0 turns pooling off."),
    "LASTMILE_POOL_UNIT_COST": ("0.5", "Cost in CNY of moving one unit between neighbouring front warehouses (picking, the van's detour): a surplus moves only when this is below the unit's cost, and the stocking replay counts it (stocking plan)."),
}


class HashKeyConflict(ValueError):
    """Two different hash keys are configured for one data directory."""

    whole_message = True  # the command line prints it uncut: both fingerprints and what to do


#: The constant a key's fingerprint is an HMAC of (versioned, so it can change deliberately).
KEY_FINGERPRINT_CONTEXT = b"lastmile hash key fingerprint v1"


def key_fingerprint(key: bytes) -> str:
    """A short, non-reversible name for a hash key: equal keys, equal fingerprints.

    An HMAC of a constant under the key: it says whether two keys are the same and nothing
    about the key (it cannot be turned back into the key, nor used to hash an identifier).
    """
    import hashlib
    import hmac

    return hmac.new(key, KEY_FINGERPRINT_CONTEXT, hashlib.sha256).hexdigest()[:16]


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
    min_occurred_at: datetime
    kafka_bootstrap: str
    feast_online_store: str
    redis_password: str
    api_keys_file: str
    api_audit_log: str
    api_rate_per_minute: int
    feast_repo: str
    flink_jobmanager: str
    flink_kafka_jar: str
    #: IANA zone name of the business calendar (validated: an unknown zone fails at start-up).
    business_tz: str = "Asia/Shanghai"
    warehouse_users: str = ""
    audiences_dir: str = ""
    audience_destinations: str = ""
    contact_rules: str = ""
    journeys_dir: str = ""
    stocking_cost_share: float = 0.65
    stocking_goodwill_share: float = 1.0
    stocking_holding_share: float = 0.01
    pool_km: float = 2.0
    pool_unit_cost: float = 0.5

    @property
    def embedded(self) -> bool:
        """True when the warehouse is chDB in-process rather than a ClickHouse server."""
        return not self.clickhouse_url

    @property
    def business_zone(self) -> "ZoneInfo":
        """The business time zone (``LASTMILE_BUSINESS_TZ``): where every day, week and month ends."""
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.business_tz)

    @property
    def audiences_path(self) -> Path:
        """Folder of audience files (``LASTMILE_AUDIENCES_DIR``; default the shipped ``audiences/``)."""
        if self.audiences_dir:
            return Path(self.audiences_dir).expanduser().resolve()
        return Path(__file__).resolve().parents[1] / "audiences"

    @property
    def journeys_path(self) -> Path:
        """Folder of journey files (``LASTMILE_JOURNEYS_DIR``; default the shipped ``journeys/``)."""
        if self.journeys_dir:
            return Path(self.journeys_dir).expanduser().resolve()
        return Path(__file__).resolve().parents[1] / "journeys"

    @property
    def audience_destinations_path(self) -> Path:
        """File of audience destinations (``LASTMILE_AUDIENCE_DESTINATIONS``; default in ``$LASTMILE_HOME``)."""
        if self.audience_destinations:
            return Path(self.audience_destinations).expanduser().resolve()
        return self.home / "destinations.yml"

    @property
    def warehouse_dir(self) -> Path:
        return self.home / "warehouse"

    @property
    def warehouse_users_file(self) -> Path:
        """Users and roles of the warehouse's HTTP interface (``LASTMILE_WAREHOUSE_USERS``)."""
        return Path(self.warehouse_users).expanduser().resolve() if self.warehouse_users else self.home / "warehouse_users.toml"

    @property
    def events_dir(self) -> Path:
        return self.home / "events"

    @property
    def hash_key_file(self) -> Path:
        return self.home / "hash.key"

    def hash_key_source(self) -> str:
        """Where :meth:`hash_key_bytes` takes the key from, in words for error messages."""
        return "the LASTMILE_HASH_KEY environment variable" if self.hash_key else f"the file {self.hash_key_file}"

    def hash_key_bytes(self) -> bytes:
        """The identifier-hashing secret; generated and kept in ``$LASTMILE_HOME`` if unset.

        A generated key is fine for a demo, but production must set LASTMILE_HASH_KEY from a
        secret store: losing the key makes old hashes unmatchable with new ones. When the
        variable is set and the data directory also holds a ``hash.key`` with another key, which
        one is meant cannot be guessed (tokens of the two never match): :class:`HashKeyConflict`.
        """
        path = self.hash_key_file
        if self.hash_key:
            if path.is_file() and path.read_text().strip() != self.hash_key:
                raise HashKeyConflict(
                    f"LASTMILE_HASH_KEY (key fingerprint {key_fingerprint(self.hash_key.encode())}) is set and differs from "
                    f"the key in {path} (fingerprint {key_fingerprint(path.read_text().strip().encode())}): identifiers "
                    "hashed under one never match those hashed under the other. Unset LASTMILE_HASH_KEY to use the file, or move the file "
                    "away if the variable holds the key this data directory was built with (`lastmile key show` "
                    "compares both with the warehouse)")
            return self.hash_key.encode()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip().encode()


def _business_tz(name: str) -> str:
    """The business zone, checked once: a typo would otherwise cut every day at the wrong hour."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"LASTMILE_BUSINESS_TZ={name!r} is not an IANA time zone (e.g. Asia/Shanghai)") from exc
    return name


def _aware(text: str, name: str) -> datetime:
    """An ISO 8601 time from the environment, in UTC (a date alone means its midnight UTC)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an ISO 8601 time (e.g. 2000-01-01T00:00:00+00:00)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def _share(text: str, name: str, upper: float | None = None) -> float:
    """A non-negative number from the environment (at most ``upper``), or a message naming the variable."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number") from None
    if not value >= 0 or (upper is not None and value > upper):
        raise ValueError(f"{name}={text!r} must be between 0 and {upper}" if upper is not None else f"{name}={text!r} must be >= 0")
    return value


@lru_cache(maxsize=None)
def _cached(key: tuple[tuple[str, str], ...]) -> Settings:
    env = dict(key)
    return Settings(
        home=Path(env["LASTMILE_HOME"]).expanduser().resolve(),
        clickhouse_url=env["LASTMILE_CLICKHOUSE_URL"],
        clickhouse_user=env["LASTMILE_CLICKHOUSE_USER"],
        clickhouse_password=env["LASTMILE_CLICKHOUSE_PASSWORD"],
        clickhouse_database=env["LASTMILE_CLICKHOUSE_DATABASE"],
        warehouse_users=env["LASTMILE_WAREHOUSE_USERS"],
        hash_key=env["LASTMILE_HASH_KEY"],
        beam_runner=env["LASTMILE_BEAM_RUNNER"],
        ingest_chunk_bytes=max(1, int(float(env["LASTMILE_INGEST_CHUNK_MB"]) * (1 << 20))),
        ingest_workers=int(env["LASTMILE_INGEST_WORKERS"]),
        max_event_bytes=int(env["LASTMILE_MAX_EVENT_BYTES"]),
        max_clock_skew_s=int(env["LASTMILE_MAX_CLOCK_SKEW_S"]),
        min_occurred_at=_aware(env["LASTMILE_MIN_OCCURRED_AT"], "LASTMILE_MIN_OCCURRED_AT"),
        kafka_bootstrap=env["LASTMILE_KAFKA_BOOTSTRAP"],
        feast_online_store=env["LASTMILE_FEAST_ONLINE_STORE"],
        redis_password=env["LASTMILE_REDIS_PASSWORD"],
        api_keys_file=env["LASTMILE_API_KEYS_FILE"],
        api_audit_log=env["LASTMILE_API_AUDIT_LOG"],
        api_rate_per_minute=int(env["LASTMILE_API_RATE_PER_MINUTE"]),
        feast_repo=env["LASTMILE_FEAST_REPO"],
        flink_jobmanager=env["LASTMILE_FLINK_JOBMANAGER"],
        flink_kafka_jar=env["LASTMILE_FLINK_KAFKA_JAR"],
        business_tz=_business_tz(env["LASTMILE_BUSINESS_TZ"]),
        audiences_dir=env["LASTMILE_AUDIENCES_DIR"],
        audience_destinations=env["LASTMILE_AUDIENCE_DESTINATIONS"],
        contact_rules=env["LASTMILE_CONTACT_RULES"],
        journeys_dir=env["LASTMILE_JOURNEYS_DIR"],
        stocking_cost_share=_share(env["LASTMILE_STOCKING_COST_SHARE"], "LASTMILE_STOCKING_COST_SHARE", upper=1.0),
        stocking_goodwill_share=_share(env["LASTMILE_STOCKING_GOODWILL_SHARE"], "LASTMILE_STOCKING_GOODWILL_SHARE"),
        stocking_holding_share=_share(env["LASTMILE_STOCKING_HOLDING_SHARE"], "LASTMILE_STOCKING_HOLDING_SHARE", upper=1.0),
        pool_km=_share(env["LASTMILE_POOL_KM"], "LASTMILE_POOL_KM"),
        pool_unit_cost=_share(env["LASTMILE_POOL_UNIT_COST"], "LASTMILE_POOL_UNIT_COST"),
    )


def settings() -> Settings:
    """Current settings from the environment (cached per distinct environment)."""
    return _cached(tuple((name, _env(name)) for name in VARIABLES))
