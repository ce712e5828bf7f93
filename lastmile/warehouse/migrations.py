"""Versioned warehouse migrations.

Each migration has a number, a name and a function that returns its statements. Applied
ones are recorded in ``schema_migrations`` with a checksum of their statements, so a run
applies only what is new and every step is idempotent (``IF NOT EXISTS``) should a run be
interrupted between a statement and its record.

The raw tables come from the contracts. Contracts evolve additively (a new optional field
is a new schema property); :func:`sync_contract_columns` adds such columns to existing raw
tables. A change that is not additive (a type change, a removed field) is refused with a
message asking for a numbered migration, rather than guessed.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass

from lastmile.contracts import contracts
from lastmile.warehouse.client import Warehouse, WarehouseError, quote_ident
from lastmile.warehouse.tables import INGEST_COLUMNS, columns_for, create_table_sql

QUARANTINE_DDL = """
CREATE TABLE IF NOT EXISTS quarantine (
    received_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'When lastmile rejected the payload; the ReplacingMergeTree version.',
    source LowCardinality(String) COMMENT 'File or topic the payload came from.',
    position UInt64 COMMENT 'Line number in the file (1-based) or offset in the topic partition.',
    event_type LowCardinality(String) COMMENT 'Declared event_type, when it could be read; empty otherwise.',
    event_id String COMMENT 'Declared event_id, when it could be read; empty otherwise.',
    reason LowCardinality(String) COMMENT 'Why it was rejected: not_json, oversized, missing_field, wrong_type, ...',
    error String COMMENT 'What was wrong, in words a person can act on.',
    payload String COMMENT 'The payload as received (cut at 1 MiB); may hold personal data: restrict access.',
    payload_hash UInt64 DEFAULT cityHash64(payload) COMMENT 'Fingerprint of the payload, part of the key.'
)
ENGINE = ReplacingMergeTree(received_at)
ORDER BY (source, position, payload_hash)
COMMENT 'Events that broke their contract, kept with the reason. Re-ingesting a source replaces, never duplicates.'
"""

#: ``payload`` is text: a payload that is not valid UTF-8 is shown there with replacement
#: characters, and its exact bytes are kept in ``payload_base64``; ``payload_bytes`` reads
#: the original bytes of every quarantined payload, whichever column holds them.
QUARANTINE_BYTES_DDL = (
    "ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS payload_base64 String DEFAULT '' "
    "COMMENT 'The payload''s exact bytes in base64 when they are not valid UTF-8 (payload then shows replacement characters); empty otherwise.' "
    "AFTER payload"
)
QUARANTINE_BYTES_ALIAS_DDL = (
    "ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS payload_bytes String "
    "ALIAS if(payload_base64 = '', payload, base64Decode(payload_base64)) "
    "COMMENT 'The payload exactly as received (bytes), whichever column holds it.' AFTER payload_base64"
)

INGEST_RUNS_DDL = """
CREATE TABLE IF NOT EXISTS ingest_runs (
    run_id String,
    pipeline LowCardinality(String) COMMENT 'beam, faust, ...',
    started_at DateTime64(3, 'UTC'),
    finished_at DateTime64(3, 'UTC'),
    sources Array(String),
    read UInt64,
    valid UInt64,
    quarantined UInt64,
    written UInt64
)
ENGINE = MergeTree
ORDER BY (started_at, run_id)
COMMENT 'One row per ingest run with its counters, for operations.'
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: Callable[[], list[str]]

    def checksum(self) -> str:
        return hashlib.sha256("\n;\n".join(self.statements()).encode()).hexdigest()[:16]


def _raw_tables() -> list[str]:
    return [create_table_sql(c) for c in contracts().values()]


MIGRATIONS: list[Migration] = [
    Migration(1, "raw_event_tables", _raw_tables),
    Migration(2, "quarantine", lambda: [QUARANTINE_DDL]),
    Migration(3, "ingest_runs", lambda: [INGEST_RUNS_DDL]),
    Migration(4, "quarantine_original_bytes", lambda: [QUARANTINE_BYTES_DDL, QUARANTINE_BYTES_ALIAS_DDL]),
]


#: Modules that register migrations of their own tables when imported. ``migrate`` imports
#: them all first, so the warehouse is complete whichever command opened it.
MIGRATION_MODULES = (
    "lastmile.identity.store",
    "lastmile.identity.forget",
    "lastmile.coldchain.tables",
    "lastmile.streaming.seen",
    "lastmile.batches.alerts",
)


def register(migration: Migration) -> None:
    """Add a migration (later modules register theirs when imported)."""
    if any(m.version == migration.version for m in MIGRATIONS):
        raise ValueError(f"migration {migration.version} is registered twice")
    MIGRATIONS.append(migration)
    MIGRATIONS.sort(key=lambda m: m.version)


def applied(warehouse: Warehouse) -> dict[int, str]:
    warehouse.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, checksum String, "
        "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = ReplacingMergeTree(applied_at) ORDER BY version"
    )
    return {int(v): n for v, n in warehouse.rows("SELECT version, name FROM schema_migrations FINAL")}


def migrate(warehouse: Warehouse) -> list[str]:
    """Apply pending migrations, then add new contract fields as columns. Returns what ran."""
    for module in MIGRATION_MODULES:
        importlib.import_module(module)
    done = applied(warehouse)
    ran: list[str] = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements():
            warehouse.command(statement)
        warehouse.insert_rows(
            "schema_migrations",
            [(migration.version, migration.name, migration.checksum())],
            ["version", "name", "checksum"],
        )
        ran.append(f"{migration.version:04d}_{migration.name}")
    ran += sync_contract_columns(warehouse)
    return ran


def sync_contract_columns(warehouse: Warehouse) -> list[str]:
    """Add columns for contract fields that a raw table does not have yet."""
    added: list[str] = []
    for contract in contracts().values():
        existing = dict(
            warehouse.rows(
                "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = {t:String}",
                {"t": contract.table},
            )
        )
        expected = [(c.name, c.type) for c in columns_for(contract)]
        expected += [(n, t.split(" DEFAULT")[0]) for n, t, _ in INGEST_COLUMNS]
        for name, ch_type in expected:
            if name not in existing:
                warehouse.command(f"ALTER TABLE {quote_ident(contract.table)} ADD COLUMN IF NOT EXISTS {quote_ident(name)} {ch_type}")
                added.append(f"{contract.table}.{name}")
            elif _normal(existing[name]) != _normal(ch_type):
                raise WarehouseError(
                    f"{contract.table}.{name} is {existing[name]} in the warehouse but the contract now says {ch_type}; "
                    "write a numbered migration for this change"
                )
    return added


def _normal(ch_type: str) -> str:
    return ch_type.replace(" ", "").replace('"', "'")
