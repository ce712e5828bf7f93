"""The Feast feature store from lastmile's settings: apply, materialize, read.

One ``feature_store/feature_store.yaml`` describes the store with ``${VARIABLE}``
placeholders; :func:`feature_env` derives every variable from :class:`lastmile.config.Settings`
(plus the two feature-store variables in :data:`VARIABLES`), :func:`repo_config` fills them in
and :func:`get_store` returns the ``FeatureStore``. The Feast CLI reads the same file after
``eval "$(lastmile features env)"``.

Materialization has two paths:

* :func:`materialize` with ``fast=False`` is Feast's own ``materialize``/``materialize_incremental``
  (pull the latest rows per entity through the offline store, convert with pyarrow,
  ``online_write_batch``). About 1k rows/s here.
* ``fast=True`` (the default) asks ClickHouse for the latest row per entity in the interval
  (``argMax ... GROUP BY``, as Arrow) and, for SQLite, writes the rows Feast's SQLite store
  writes, encoded per column and upserted in primary-key order in one transaction per view
  (:func:`lastmile.features.feast_adapter.bulk_write`); any other online store (Redis) gets protobuf
  values through its own ``online_write_batch``. It records the interval in the registry
  exactly as Feast does, so ``materialize_incremental`` and ``feast serve`` see the same state
  whichever path ran.

:func:`get_store` also opens Feast's SQLite connection with lastmile's pragmas (WAL, mmap;
:data:`lastmile.features.feast_adapter.SQLITE_PRAGMAS`): Feast's yaml has no option for them.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import yaml

from lastmile.config import Settings, settings as current_settings
from lastmile.features import feast_adapter

#: The Feast repository shipped with lastmile.
FEATURE_REPO = Path(__file__).resolve().parent.parent.parent / "feature_store"

class FeatureStoreError(RuntimeError):
    """The feature store is not set up (not applied, warehouse tables missing, ...)."""


def repo_dir(cfg: Settings | None = None) -> Path:
    """The Feast repository: LASTMILE_FEAST_REPO, or the feature_store/ shipped with lastmile."""
    return Path((cfg or current_settings()).feast_repo or FEATURE_REPO)


def feast_dir(cfg: Settings) -> Path:
    return cfg.home / "feast"


def feature_env(cfg: Settings | None = None) -> dict[str, str]:
    """Values for every ``${...}`` in feature_store.yaml, derived from lastmile's settings."""
    cfg = cfg or current_settings()
    env = {
        "LASTMILE_FEAST_REGISTRY": str(feast_dir(cfg) / "registry.db"),
        "LASTMILE_FEAST_ONLINE_PATH": str(feast_dir(cfg) / "online.db"),
        "LASTMILE_CLICKHOUSE_DATABASE": cfg.clickhouse_database,
    }
    if cfg.embedded:
        env.update({"LASTMILE_FEAST_CH_HOST": "chdb", "LASTMILE_FEAST_CH_PORT": "8123",
                    "LASTMILE_FEAST_CH_USER": "default", "LASTMILE_FEAST_CH_PASSWORD": "",
                    "LASTMILE_FEAST_CH_INTERFACE": "chdb", "LASTMILE_FEAST_CH_PATH": str(cfg.warehouse_dir)})
    else:
        m = re.match(r"^(https?)://([^:/]+)(?::(\d+))?", cfg.clickhouse_url)
        if not m:
            raise FeatureStoreError(f"cannot read host and port from LASTMILE_CLICKHOUSE_URL={cfg.clickhouse_url!r}")
        scheme, host, port = m.groups()
        env.update({"LASTMILE_FEAST_CH_HOST": host, "LASTMILE_FEAST_CH_PORT": port or ("8443" if scheme == "https" else "8123"),
                    "LASTMILE_FEAST_CH_USER": cfg.clickhouse_user, "LASTMILE_FEAST_CH_PASSWORD": cfg.clickhouse_password,
                    "LASTMILE_FEAST_CH_INTERFACE": scheme, "LASTMILE_FEAST_CH_PATH": ""})
    return env


def online_store_config(cfg: Settings) -> dict[str, Any] | None:
    """The Redis online store section when LASTMILE_FEAST_ONLINE_STORE says so, else None (SQLite)."""
    url = cfg.feast_online_store.strip()
    if not url or url == "sqlite":
        return None
    m = re.match(r"^(rediss?)://([^:/]+)(?::(\d+))?(?:/(\d+))?$", url)
    if not m:
        raise FeatureStoreError(f"LASTMILE_FEAST_ONLINE_STORE must be empty, sqlite or redis[s]://host:port[/db], not {url!r}")
    scheme, host, port, db = m.groups()
    conn = f"{host}:{port or 6379}" + (f",db={db}" if db else "") + (",ssl=true" if scheme == "rediss" else "")
    if cfg.redis_password:
        # Feast splits its connection string on commas and JSON-decodes each value.
        if "," in cfg.redis_password:
            raise FeatureStoreError("LASTMILE_REDIS_PASSWORD must not contain a comma (Feast's Redis connection string splits on it)")
        conn += ",password=" + json.dumps(cfg.redis_password)
    return {"type": "redis", "connection_string": conn}


def resolved_yaml(cfg: Settings | None = None) -> dict[str, Any]:
    """feature_store.yaml with every placeholder filled in (and Redis swapped in if configured)."""
    cfg = cfg or current_settings()
    env = feature_env(cfg)
    text = (repo_dir() / "feature_store.yaml").read_text()

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in env:
            raise FeatureStoreError(f"feature_store.yaml uses ${{{name}}}, which lastmile does not set")
        return env[name]

    raw = yaml.safe_load(re.sub(r"\$\{([A-Z0-9_]+)\}", sub, text))
    if raw["offline_store"].get("additional_client_args", {}).get("interface") != "chdb":
        raw["offline_store"]["additional_client_args"] = {"interface": env["LASTMILE_FEAST_CH_INTERFACE"]}
    redis = online_store_config(cfg)
    if redis:
        raw["online_store"] = redis
    return raw


def repo_config(cfg: Settings | None = None):
    from feast.repo_config import RepoConfig

    feast_adapter.install()  # the kept-open ClickHouse client (see feast_adapter)
    raw = resolved_yaml(cfg)
    config = RepoConfig(**raw)
    config.repo_path = repo_dir()
    return config


_stores: dict[tuple, Any] = {}


def get_store(cfg: Settings | None = None, fresh: bool = False):
    """The FeatureStore for these settings (one per process and configuration)."""
    from feast import FeatureStore

    cfg = cfg or current_settings()
    key = (cfg, str(repo_dir(cfg)))
    if fresh or key not in _stores:
        feast_dir(cfg).mkdir(parents=True, exist_ok=True)
        store = FeatureStore(repo_path=str(repo_dir()), config=repo_config(cfg))
        tune_online_store(store)
        _stores[key] = store
    return _stores[key]


def tune_online_store(store) -> None:
    """Open Feast's SQLite connection now, with lastmile's pragmas (WAL, mmap, ...).

    Feast's ``sqlite`` online store takes no pragma options in feature_store.yaml, and opens
    its connection lazily; opening it here also takes that cost off the first request.
    """
    conn = feast_adapter.sqlite_connection(store)
    if conn is not None:
        feast_adapter.tune_connection(conn)


@dataclass
class Definitions:
    entities: list
    data_sources: list
    feature_views: list
    feature_services: list


def definitions() -> Definitions:
    """The objects declared in the repository's Python files, collected as ``feast apply`` does.

    (Feast's own ``parse_repo`` insists on the working directory being the repository; this
    loads each file by path instead, honouring ``.feastignore``.)
    """
    import importlib.util

    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource

    ignore = set()
    if (repo_dir() / ".feastignore").exists():
        ignore = {line.strip() for line in (repo_dir() / ".feastignore").read_text().splitlines() if line.strip()}
    found = Definitions([], [], [], [])
    seen: set[int] = set()
    for path in sorted(repo_dir().glob("*.py")):
        if path.name in ignore or path.name.startswith("_"):
            continue
        spec = importlib.util.spec_from_file_location(f"lastmile_feature_repo_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        for obj in vars(module).values():
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if isinstance(obj, Entity):
                found.entities.append(obj)
            elif isinstance(obj, FeatureView):
                found.feature_views.append(obj)
                if obj.stream_source is not None:
                    found.data_sources.append(obj.stream_source)
                found.data_sources.append(obj.batch_source)
            elif isinstance(obj, FeatureService):
                found.feature_services.append(obj)
            elif isinstance(obj, DataSource):
                found.data_sources.append(obj)
    names: dict[str, Any] = {}
    for ds in found.data_sources:
        names.setdefault(ds.name, ds)
    found.data_sources = list(names.values())
    return found


@dataclass
class ApplyReport:
    tables: dict[str, int]
    objects: dict[str, list[str]]
    yaml_path: Path
    seconds: float

    def summary(self) -> str:
        objs = ", ".join(f"{len(v)} {k}" for k, v in self.objects.items())
        return f"feature store applied in {self.seconds:.1f} s: {objs}; feature tables: " + ", ".join(
            f"{t} {n:,}" for t, n in self.tables.items())


def apply(cfg: Settings | None = None, build_tables: bool = True, run_dbt: bool = True,
          upstream: bool = True) -> ApplyReport:
    """`lastmile features apply`: build the feat_* tables, then register the repository.

    The feature tables are dbt models (tag ``features``): ``run_dbt`` runs them, with what
    they read unless ``upstream`` is off (right after ``lastmile transform``, which built it).

    Also writes the resolved configuration to ``$LASTMILE_HOME/feast/feature_store.yaml`` so
    ``feast -f <that file> serve`` serves exactly this store (SQLite or Redis).
    """
    from lastmile.features.tables import build_feature_tables

    cfg = cfg or current_settings()
    t0 = time.perf_counter()
    tables: dict[str, int] = {}
    if build_tables:
        tables = build_feature_tables(cfg, run_dbt=run_dbt, upstream=upstream).rows
    store = get_store(cfg)
    repo = definitions()
    objects = [*repo.entities, *repo.data_sources, *repo.feature_views, *repo.feature_services]
    store.apply(objects)
    store.refresh_registry()
    out = feast_dir(cfg) / "feature_store.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Generated by `lastmile features apply` from feature_store/feature_store.yaml.\n"
                   + yaml.safe_dump(resolved_yaml(cfg), sort_keys=False))
    return ApplyReport(
        tables=tables,
        objects={"entities": [e.name for e in repo.entities], "feature_views": [v.name for v in repo.feature_views],
                 "feature_services": [s.name for s in repo.feature_services]},
        yaml_path=out, seconds=time.perf_counter() - t0)


# -- materialization ---------------------------------------------------------------------------


@dataclass
class MaterializeReport:
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    path: str = "fast"
    start: datetime | None = None
    end: datetime | None = None

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def rows_per_s(self) -> float:
        return self.total_rows / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"materialized {self.total_rows:,} entity rows ({self.path} path) in {self.seconds:.2f} s "
                f"= {self.rows_per_s:,.0f} rows/s: " + ", ".join(f"{k} {v:,}" for k, v in self.rows.items()))


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def materialize(cfg: Settings | None = None, end: datetime | None = None, start: datetime | None = None,
                views: Sequence[str] | None = None, fast: bool = True, incremental: bool = True) -> MaterializeReport:
    """`lastmile features materialize`: load the latest feature values into the online store.

    Incremental by default: each view starts where its last materialization ended (or its TTL
    before ``end`` the first time), as ``feast materialize-incremental`` does. ``end``
    defaults to now. Push-only data (customer_realtime) is written by the worker, not here.
    """
    cfg = cfg or current_settings()
    store = get_store(cfg)
    end = _utc(end or datetime.now(timezone.utc))
    fvs = [fv for fv in store.list_feature_views() if fv.online and (views is None or fv.name in views)]
    report = MaterializeReport(path="fast" if fast else "feast", start=start, end=end)
    t0 = time.perf_counter()
    if not fast:
        names = [fv.name for fv in fvs]
        if incremental and start is None:
            store.materialize_incremental(end_date=end, feature_views=names)
        else:
            store.materialize(start_date=start or datetime(2000, 1, 1, tzinfo=timezone.utc), end_date=end,
                              feature_views=names)
        report.seconds = time.perf_counter() - t0
        report.rows = {n: -1 for n in names}
        return report
    windows = []
    for fv in fvs:
        fv_start = start
        if fv_start is None:
            if incremental and fv.most_recent_end_time is not None:
                fv_start = fv.most_recent_end_time
            else:
                # First load: the latest value of every entity, however old (Feast would start
                # at end - ttl, which leaves a replayed or historical data set empty online).
                fv_start = datetime(1970, 1, 1, tzinfo=timezone.utc)
        windows.append((fv, _utc(fv_start), end))
    for (fv, fv_start, fv_end), n in zip(windows, materialize_views(cfg, store, windows)):
        report.rows[fv.name] = n
        store.registry.apply_materialization(fv, store.project, fv_start, fv_end, commit=False)
    # One registry write for all views rather than one per view. If the run dies part-way the
    # registry keeps the previous intervals and the next run reloads those views from the older
    # start, which only rewrites the same latest values: harmless, never double-counted.
    store.registry.commit()
    report.seconds = time.perf_counter() - t0
    return report


def _table_of(fv) -> str:
    source = fv.batch_source
    table = source.get_table_query_string()
    if table.startswith("("):
        raise FeatureStoreError(f"fast materialization needs a table source, {fv.name} reads a query")
    return table


def _latest_rows(cfg: Settings, fv, start: datetime, end: datetime):
    """Latest row per entity in (start, end] straight from ClickHouse, as an Arrow table (None if empty).

    Arrow, not Python lists: the SQLite bulk write encodes whole columns with numpy/pyarrow.
    """
    from lastmile.warehouse import connect, quote_ident

    keys = list(fv.join_keys)
    features = [f.name for f in fv.features]
    ts = fv.batch_source.timestamp_field
    latest = ", ".join(f"argMax({quote_ident(c)}, {quote_ident(ts)}) AS {quote_ident(c)}" for c in features)
    sql = (f"SELECT {', '.join(quote_ident(k) for k in keys)}, {latest}, "
           f"toInt64(toUnixTimestamp(max({quote_ident(ts)}))) AS _event_ts_s "
           f"FROM {quote_ident(_table_of(fv))} "
           f"WHERE {quote_ident(ts)} > fromUnixTimestamp64Milli({int(start.timestamp() * 1000)}, 'UTC') "
           f"AND {quote_ident(ts)} <= fromUnixTimestamp64Milli({int(end.timestamp() * 1000)}, 'UTC') "
           f"GROUP BY {', '.join(quote_ident(k) for k in keys)}")
    table = connect(cfg).client.query_arrow(sql)
    return table if table.num_rows else None


def materialize_views(cfg: Settings, store, windows: Sequence[tuple[Any, datetime, datetime]]) -> Iterator[int]:
    """Load each (view, start, end) window into the online store; yields each view's entity rows.

    The warehouse query of the next view runs on a background thread while this one is
    written: chDB releases the GIL while it queries, and SQLite releases it while it steps, so
    on two cores the fetch hides behind the write (about a sixth of a full reload). One view
    of look-ahead only, so at most two views' rows are in memory.
    """
    from concurrent.futures import ThreadPoolExecutor

    if not windows:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lastmile-materialize-fetch") as pool:
        pending = pool.submit(_latest_rows, cfg, *windows[0])
        for i, (fv, _, _) in enumerate(windows):
            data = pending.result()
            if i + 1 < len(windows):
                pending = pool.submit(_latest_rows, cfg, *windows[i + 1])
            if data is None:
                yield 0
                continue
            if not bulk_write_online(store, fv, data):
                feast_adapter.write_through_feast(store, fv, {name: data.column(name).to_pylist() for name in data.column_names})
            yield data.num_rows


def bulk_write_online(store, fv, data) -> bool:
    """Write ``data`` (an Arrow table: the join keys, the features, ``_event_ts_s`` in epoch
    seconds) to ``fv``'s online table with the bulk SQLite writer, if the store is Feast's
    SQLite store; returns False, having written nothing, for any other store.

    The rows are the ones Feast's own ``online_write_batch`` writes (see
    :mod:`lastmile.features.feast_adapter`), so materialization and pushes may use it.
    """
    return feast_adapter.bulk_write_view(store, fv, data)


# -- reading -------------------------------------------------------------------------------------


_readers: dict[tuple, Any] = {}


def online_reader(cfg: Settings | None, features: Any):
    """The :class:`~lastmile.features.online.OnlineReader` of ``features`` (a feature service,
    its name, or ``view:feature`` references) on this configuration's store, planned once."""
    from lastmile.features.online import OnlineReader

    store = get_store(cfg)
    name = features if isinstance(features, str) else getattr(features, "name", None)
    key = (id(store), ("service", name) if name else ("refs", tuple(features)))
    reader = _readers.get(key)
    if reader is None or reader.store is not store:
        reader = _readers[key] = OnlineReader(store, features)
    return reader


def online_features(cfg: Settings | None, features: Any, entity_rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Online values for ``entity_rows`` (a feature service name or object, or feature refs):
    the columns ``OnlineResponse.to_dict()`` gives, read by :func:`online_reader`."""
    return online_reader(cfg, features).read(entity_rows)


def historical_features(cfg: Settings | None, features: Any, entity_df):
    """Point-in-time correct training frame for ``entity_df`` (needs an ``event_timestamp`` column)."""
    store = get_store(cfg)
    if isinstance(features, str):
        features = store.get_feature_service(features)
    return store.get_historical_features(entity_df=entity_df, features=features).to_df()


def shell_env(cfg: Settings | None = None) -> str:
    """`lastmile features env`: export lines for the Feast CLI (``eval "$(lastmile features env)"``)."""
    import shlex

    env = feature_env(cfg)
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())
