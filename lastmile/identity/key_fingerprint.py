"""The hash key belongs to its warehouse: one key per warehouse, checked wherever it is loaded.

Every identifier reaches storage as a keyed hash (:mod:`lastmile.privacy`). Tokens made under
another key never equal the stored ones, so a run with a different ``LASTMILE_HASH_KEY``
would give every returning customer a second profile, without any error. So the warehouse
keeps a *fingerprint* of the key it was first used with, in ``lastmile_settings``: an HMAC of
a constant under the key, which says whether two keys are the same and nothing about the key
(it cannot be turned back into the key, nor used to hash an identifier).

:func:`verify_hash_key` runs before any token is made or matched: ingest (batch and stream,
through :func:`lastmile.identity.forget.forgotten_tokens`), ``forget``, ``identity rebuild``
and ``identity evaluate``. The first use records the fingerprint; a later run with another
key is refused with :class:`HashKeyMismatch`, naming both fingerprints, where each key came
from, and what to do.
"""

from __future__ import annotations

from datetime import datetime, timezone

from lastmile.config import Settings, key_fingerprint
from lastmile.warehouse import Warehouse

SETTING = "hash_key_fingerprint"

SETTINGS_DDL = (
    "CREATE TABLE IF NOT EXISTS lastmile_settings (name String, value String, source String, "
    "set_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = ReplacingMergeTree(set_at) ORDER BY name "
    "COMMENT 'Facts the warehouse must keep about how it was built, e.g. the fingerprint of its hash key (never the key).'"
)

#: (warehouse dsn, database, fingerprint) already found to agree in this process: the check
#: runs once per process, not on every refresh of the suppression list.
_verified: set[tuple[str, str, str]] = set()


class HashKeyMismatch(ValueError):
    """The hash key loaded now is not the one the warehouse was built with."""

    whole_message = True  # the command line prints it uncut: both fingerprints and what to do


def fingerprint(key: bytes) -> str:
    """A short, non-reversible name for a key: equal keys, equal fingerprints (see
    :func:`lastmile.config.key_fingerprint`, which the settings use for their own error)."""
    return key_fingerprint(key)


def stored_fingerprint(warehouse: Warehouse) -> tuple[str, str] | None:
    """``(fingerprint, where that key came from)`` recorded by the warehouse, or ``None``."""
    if "lastmile_settings" not in warehouse.tables():
        return None
    rows = warehouse.rows("SELECT value, source FROM lastmile_settings FINAL WHERE name = {n:String}", {"n": SETTING})
    return (rows[0][0], rows[0][1]) if rows else None


def record_fingerprint(warehouse: Warehouse, cfg: Settings) -> str:
    """Record the current key's fingerprint as the warehouse's key (first use, or a rotation)."""
    current = fingerprint(cfg.hash_key_bytes())
    warehouse.command(SETTINGS_DDL)
    warehouse.insert_rows("lastmile_settings", [(SETTING, current, cfg.hash_key_source(), datetime.now(timezone.utc))],
                          ["name", "value", "source", "set_at"])
    return current


def verify_hash_key(warehouse: Warehouse, cfg: Settings) -> str:
    """Refuse to go on with a key other than the warehouse's; record it on first use.

    Returns the fingerprint. Raises :class:`lastmile.config.HashKeyConflict` when the variable
    and ``hash.key`` disagree, :class:`HashKeyMismatch` when the key is not the warehouse's.
    """
    current = fingerprint(cfg.hash_key_bytes())
    memo = (warehouse.dsn, warehouse.database, current)
    if memo in _verified:
        return current
    stored = stored_fingerprint(warehouse)
    if stored is None:
        record_fingerprint(warehouse, cfg)
    elif stored[0] != current:
        where = cfg.warehouse_dir if cfg.embedded else f"{cfg.clickhouse_url} database {cfg.clickhouse_database}"
        raise HashKeyMismatch(
            f"the hash key loaded from {cfg.hash_key_source()} (fingerprint {current}) is not the key the warehouse at "
            f"{where} was built with (fingerprint {stored[0]}, loaded from {stored[1]} at first use). Tokens under "
            "another key never match the stored ones: every person would get a second profile. Run with the "
            "warehouse's key (set LASTMILE_HASH_KEY to it, or unset it to use $LASTMILE_HOME/hash.key); to change "
            "keys on purpose, ingest the raw event files under the new key into a fresh warehouse (another "
            "LASTMILE_HOME or LASTMILE_CLICKHOUSE_DATABASE): `lastmile key rotate --to-home NEWDIR`, run with the "
            "warehouse's key, does that.")
    _verified.add(memo)
    return current
