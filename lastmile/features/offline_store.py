"""Feast's ClickHouse offline store, made safe for embedded chDB: one client, kept open.

The snag: Feast 0.67 caches one clickhouse-connect client per thread
(``feast.infra.utils.clickhouse.connection_utils.get_client``) but
``ClickhouseSource.get_table_column_names_and_types`` uses it as a context manager
(``with get_client(...) as client``), which *closes* the cached client on exit. Over HTTP a
closed client reconnects harmlessly; with chDB every later query fails with "The client has
been closed" (schema inference runs during ``feast apply``, so apply-then-anything breaks).
A second snag: chDB allows one data directory per process, and lastmile already holds the
warehouse open (:func:`lastmile.warehouse.connect`), so Feast must not open its own.

The fix, in one place: this module replaces Feast's ``get_client`` (in the three modules
that imported it by name) with :func:`shared_client`, which returns

* for chDB (``additional_client_args: {interface: chdb, path: ...}``): lastmile's own
  process-wide warehouse client for that directory, and
* for a server: one client per thread, as Feast does,

wrapped in :class:`KeepOpen`, whose ``close()`` and ``__exit__`` do nothing. The patch is
installed on import, and this module is imported whenever a ``feature_store.yaml`` names
``type: lastmile.features.offline_store.LastmileClickhouseOfflineStore`` (Feast imports
the config class to parse the file), so ``feast apply``/``materialize``/``serve`` and
lastmile's own calls all get it. Remove it when Feast stops closing its cached client;
``tests/test_features.py::test_offline_client_survives_schema_inference`` fails without it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Literal

import clickhouse_connect

import feast.infra.offline_stores.contrib.clickhouse_offline_store.clickhouse as _ch_store
import feast.infra.offline_stores.contrib.clickhouse_offline_store.clickhouse_source as _ch_source
import feast.infra.utils.clickhouse.connection_utils as _ch_utils
from feast.infra.offline_stores.contrib.clickhouse_offline_store.clickhouse import (
    ClickhouseOfflineStore,
    ClickhouseOfflineStoreConfig,
    ClickhouseRetrievalJob,
)
from feast.infra.utils.clickhouse.clickhouse_config import ClickhouseConfig

_TYPE = "lastmile.features.offline_store.LastmileClickhouseOfflineStore"
_local = threading.local()
_lock = threading.Lock()
_embedded: dict[str, Any] = {}


class KeepOpen:
    """A clickhouse-connect client whose ``close`` (and ``with`` exit) is a no-op."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def __enter__(self) -> "KeepOpen":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def close(self) -> None:
        """Deliberately nothing: the owner (lastmile's warehouse) closes the real client."""

    @property
    def wrapped(self) -> Any:
        return self._client


def _embedded_client(config: ClickhouseConfig, path: str) -> Any:
    """lastmile's warehouse client for this chDB directory (opening it if needed)."""
    from dataclasses import replace

    from lastmile.config import settings
    from lastmile.warehouse import connect

    target = Path(path).expanduser().resolve()
    cfg = settings()
    if target.name == "warehouse":
        cfg = replace(cfg, home=target.parent, clickhouse_url="", clickhouse_database=config.database)
        return connect(cfg).client
    # A chDB directory not laid out as $LASTMILE_HOME/warehouse: keep one raw client for it.
    with _lock:
        client = _embedded.get(str(target))
        if client is None:
            client = clickhouse_connect.get_client(interface="chdb", path=str(target), database=config.database)
            _embedded[str(target)] = client
        return client


def shared_client(config: ClickhouseConfig) -> KeepOpen:
    """Feast's ``get_client`` replacement: never hands out a client that ``with`` can close."""
    args = dict(config.additional_client_args or {})
    if args.get("interface") == "chdb" or str(args.get("dsn", "")).startswith("chdb"):
        path = args.get("path") or str(args["dsn"]).split("://", 1)[1]
        client = _embedded_client(config, path)
        # The warehouse may have been re-opened since (tests, close_all): re-wrap each time.
        return KeepOpen(client)
    args.pop("path", None)  # only meaningful for chDB
    client = getattr(_local, "client", None)
    if client is None:
        client = clickhouse_connect.get_client(
            host=config.host, port=config.port, user=config.user, password=config.password,
            database=config.database, **args,
        )
        _local.client = client
    return KeepOpen(client)


def install() -> None:
    """Point Feast's ClickHouse offline store and source at :func:`shared_client` (idempotent)."""
    for module in (_ch_utils, _ch_store, _ch_source):
        module.get_client = shared_client  # type: ignore[attr-defined]


def installed() -> bool:
    return _ch_source.get_client is shared_client and _ch_store.get_client is shared_client


class LastmileClickhouseOfflineStoreConfig(ClickhouseOfflineStoreConfig):
    """Same options as Feast's ``clickhouse`` offline store; only the type name differs."""

    type: Literal[_TYPE] = _TYPE  # type: ignore[assignment]


#: Settings for point-in-time queries. Without join_use_nulls ClickHouse fills the LEFT JOINs
#: of Feast's point-in-time query with 0 / '' where no feature row qualifies (before a
#: customer's first order, past the TTL), so a missing feature would read as a real zero.
PIT_SETTINGS = {"join_use_nulls": 1}


class LastmileRetrievalJob(ClickhouseRetrievalJob):
    """Feast's ClickHouse retrieval job, run with :data:`PIT_SETTINGS` (missing stays NULL)."""

    def _to_df_internal(self, timeout: int | None = None):
        return self._to_arrow_internal(timeout).to_pandas()

    def _to_arrow_internal(self, timeout: int | None = None):
        import pyarrow as pa
        from pyarrow.compute import cast as pa_cast

        with self._query_generator() as query:
            table = _ch_store.get_client(self.config.offline_store).query_arrow(query, settings=PIT_SETTINGS)
        for i, (name, dtype) in enumerate(zip(table.schema.names, table.schema.types)):
            if pa.types.is_decimal(dtype):
                table = table.set_column(i, name, pa_cast(table[name], target_type=pa.float64()))
        return table


class LastmileClickhouseOfflineStore(ClickhouseOfflineStore):
    """Feast's ClickHouse offline store with the shared, kept-open client and NULL-preserving joins."""

    @staticmethod
    def get_historical_features(*args: Any, **kwargs: Any):
        job = ClickhouseOfflineStore.get_historical_features(*args, **kwargs)
        return LastmileRetrievalJob(
            query=job._query_generator, config=job.config, full_feature_names=job.full_feature_names,
            on_demand_feature_views=job.on_demand_feature_views, metadata=job.metadata)


install()
