"""Serving benchmark: online read latency, API latency, materialization throughput.

    LASTMILE_HOME=/tmp/feastdev python bench/serving.py            # an applied, trained data dir
    LASTMILE_HOME=/tmp/feastdev python bench/serving.py --build    # build it there first
    python bench/serving.py --build --orders 20000                 # build one in a temp dir

Measures, in-process, each next to a reference measured in the same run (absolute figures move
with whatever else runs on the machine; the ratios move much less):

* materialization: a full (non-incremental) reload of every view on the fast path, in entity
  rows per second, median of ``--materialize-runs``; reference: Feast's own ``materialize``
  of one view (customer_profile), interleaved with the fast runs. Also the first load of
  every view into an empty online store (a reload of unchanged values lets SQLite skip
  identical records; a first load writes everything);
* online read of ONE customer with the whole ``recommendation_v1`` service (~50 features,
  one entity row customer x community x SKU) on the serving path the API uses
  (:func:`lastmile.features.store.online_reader`: Feast's online store, the service planned
  once); reference: ``FeatureStore.get_online_features(...).to_dict()`` of the same rows on a
  FeatureStore built by plain Feast from the same configuration, in alternating blocks;
* ``GET /customers/{oneid}/recommendations`` through the ASGI app, as ``lastmile serve``
  builds it (warmed), over a rotating set of customers, on one event loop as a server runs
  it; reference: the two online reads that request makes (customer, then its candidates),
  for the same customers, so the ratio is what scoring and the HTTP layer add.

Targets: online p99 <= 5 ms, materialize >= 20k rows/s. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _asgi_get(runner: asyncio.Runner, app: Any, path: str, key: str) -> int:
    path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(b"host", b"bench"), (b"x-api-key", key.encode())], "client": ("127.0.0.1", 1),
             "server": ("bench", 80)}
    status = {}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            status["code"] = message["status"]

    runner.run(app(scope, receive, send))
    return status["code"]


def _pct(samples: list[float]) -> tuple[float, float]:
    a = np.asarray(samples) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _build(orders: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the test support builds the data dir
    from tests.feature_warehouse import build_feature_warehouse
    from lastmile.models.recommender import train_recommender
    from lastmile.models.spending import train_spending

    cfg, timings = build_feature_warehouse(Path(os.environ["LASTMILE_HOME"]), orders=orders, weeks=8)
    train_recommender(cfg, max_users=600)
    train_spending(cfg)
    print("built:", {k: round(v, 1) for k, v in timings.items()})


def bench_materialize(cfg, store, runs: int) -> dict[str, float]:
    """Full reloads on the fast path, interleaved with Feast's own materialize of one view."""
    from lastmile.features.store import materialize

    fast, feast = [], []
    rows = 0
    for i in range(runs):
        rep = materialize(cfg, incremental=False)
        print(rep.summary())
        fast.append(rep.rows_per_s)
        rows = rep.total_rows
        if i < runs - 1 or runs == 1:
            n = rep.rows["customer_profile"]
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress bars
                dt = _timed(lambda: store.materialize(start_date=rep.end.replace(year=2000), end_date=rep.end,
                                                      feature_views=["customer_profile"]))
            feast.append(n / dt)
    out = {"fast": float(np.median(fast)), "feast": float(np.median(feast)), "rows": rows}
    print(f"materialize: fast path {out['fast']:,.0f} rows/s (median of {runs}); Feast's own materialize "
          f"(customer_profile) {out['feast']:,.0f} rows/s; ratio {out['fast'] / out['feast']:.1f}x")
    return out


def bench_first_load(cfg) -> float:
    """Every view into an EMPTY SQLite online store (a fresh store, or one rebuilt from scratch).

    Why next to the reload: a reload of unchanged values lets SQLite skip rewriting identical
    records, while here every row and page is new. Same fast path; no registry bookkeeping.
    """
    from datetime import datetime, timezone

    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    from lastmile.features import feast_adapter
    from lastmile.features.store import materialize_views, repo_dir, resolved_yaml, tune_online_store

    with tempfile.TemporaryDirectory(prefix="lastmile-online-") as tmp:
        raw = resolved_yaml(cfg)
        raw["online_store"] = {"type": "sqlite", "path": str(Path(tmp) / "online.db")}
        config = RepoConfig(**raw)
        config.repo_path = repo_dir()
        store = FeatureStore(repo_path=str(repo_dir()), config=config)
        tune_online_store(store)
        fvs = [fv for fv in store.list_feature_views() if fv.online]
        feast_adapter.create_online_tables(store, fvs)
        start, end = datetime(1970, 1, 1, tzinfo=timezone.utc), datetime.now(timezone.utc)
        t = time.perf_counter()
        rows = sum(materialize_views(cfg, store, [(fv, start, end) for fv in fvs]))
        rate = rows / (time.perf_counter() - t)
    print(f"first load of {rows:,} entity rows into an empty online store: {rate:,.0f} rows/s")
    return rate


def bench_online(cfg, store, customers, skus, reads: int, block: int = 100) -> dict[str, float]:
    """recommendation_v1 for one entity row: the serving path vs plain Feast, alternating blocks."""
    from feast import FeatureStore

    from lastmile.features.store import online_reader, repo_config, repo_dir

    plain = FeatureStore(repo_path=str(repo_dir()), config=repo_config(cfg))
    service = plain.get_feature_service("recommendation_v1")
    reader = online_reader(cfg, "recommendation_v1")
    readers = {"tuned": reader.read,
               "plain": lambda rows: plain.get_online_features(features=service, entity_rows=rows).to_dict()}
    lat: dict[str, list[float]] = {"tuned": [], "plain": []}

    def read(which: str, i: int) -> float:
        oneid, community = customers[i % len(customers)]
        row = [{"oneid": oneid, "community_id": community, "sku": skus[i % len(skus)]}]
        return _timed(lambda: readers[which](row))

    for which in readers:  # warm both
        for i in range(50):
            read(which, i)
    for b in range(max(1, reads // block)):
        for which in (("tuned", "plain") if b % 2 == 0 else ("plain", "tuned")):
            lat[which] += [read(which, b * block + i) for i in range(block)]
    n_features = len(reader.feature_names)
    out = {}
    for which in lat:
        out[f"{which}_p50"], out[f"{which}_p99"] = _pct(lat[which])
    print(f"online read, 1 customer x recommendation_v1 ({n_features} features): p50 {out['tuned_p50']:.2f} ms, "
          f"p99 {out['tuned_p99']:.2f} ms; plain Feast get_online_features: p50 {out['plain_p50']:.2f} ms, "
          f"p99 {out['plain_p99']:.2f} ms; ratio p99 {out['tuned_p99'] / out['plain_p99']:.2f}")
    out["features"] = n_features
    return out


def bench_api(cfg, customers, requests: int) -> dict[str, float]:
    """The recommendations endpoint, warmed, on one event loop; reference: its two Feast reads.

    As served: the API key checked, its rate limit taken, the read appended to the audit log
    (a key and a log of their own, in a temporary directory).
    """
    from dataclasses import replace

    from lastmile.api import create_app
    from lastmile.api_auth import create_key
    from lastmile.models.service import ModelService

    auth = Path(tempfile.mkdtemp(prefix="lastmile-bench-api-"))
    cfg = replace(cfg, api_keys_file=str(auth / "keys.json"), api_audit_log=str(auth / "audit.jsonl"))
    _, key = create_key(cfg, "bench", ["marketing:read"], rate_per_minute=10_000_000)
    svc = ModelService(cfg)
    app = create_app(cfg, service=svc, warm=True)
    api, reads = [], []
    with asyncio.Runner() as runner:
        for i in range(requests + 20):
            oneid, community = customers[i % len(customers)]
            t = time.perf_counter()
            code = _asgi_get(runner, app, f"/customers/{oneid}/recommendations?limit=10", key)
            dt_api = time.perf_counter() - t
            assert code == 200, code
            cands = svc.candidates(oneid, community)
            t = time.perf_counter()
            svc.customer_reader.read([{"oneid": oneid}])
            svc.candidate_reader.read(svc.candidate_rows(oneid, community, cands))
            if i >= 20:
                api.append(dt_api)
                reads.append(time.perf_counter() - t)
    out = {}
    out["p50"], out["p99"] = _pct(api)
    out["reads_p50"], out["reads_p99"] = _pct(reads)
    print(f"GET /customers/{{oneid}}/recommendations: p50 {out['p50']:.2f} ms, p99 {out['p99']:.2f} ms; "
          f"its two online reads alone: p50 {out['reads_p50']:.2f} ms, p99 {out['reads_p99']:.2f} ms; "
          f"ratio p99 {out['p99'] / out['reads_p99']:.2f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", action="store_true",
                        help="simulate, ingest, apply, train first (in LASTMILE_HOME if set, else a temp dir)")
    parser.add_argument("--orders", type=int, default=20000)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--materialize-runs", type=int, default=3)
    args = parser.parse_args()

    if args.build:
        # Build where LASTMILE_HOME points (so later runs can reuse it), else in a temp dir.
        os.environ["LASTMILE_HOME"] = os.environ.get("LASTMILE_HOME") or tempfile.mkdtemp(prefix="lastmile-bench-")
        Path(os.environ["LASTMILE_HOME"]).mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("DO_NOT_TRACK", "1")
        _build(args.orders)
    from lastmile.config import settings
    from lastmile.features.store import get_store
    from lastmile.warehouse import connect

    cfg = settings()
    store = get_store(cfg)
    customers = [tuple(r) for r in connect(cfg).rows(
        "SELECT oneid, argMax(home_community_id, event_timestamp) FROM feat_customer_profile GROUP BY oneid ORDER BY oneid LIMIT 500")]
    skus = [r[0] for r in connect(cfg).rows("SELECT sku FROM feat_sku ORDER BY sku")]

    loads = [_load()]
    mat = bench_materialize(cfg, store, args.materialize_runs)
    first_load = bench_first_load(cfg)
    loads.append(_load())
    online = bench_online(cfg, store, customers, skus, args.reads)
    loads.append(_load())
    api = bench_api(cfg, customers, args.requests)
    loads.append(_load())
    load = max(loads)
    print(f"(load average while measuring: {', '.join(f'{x:.1f}' for x in loads)} on {os.cpu_count()} cores)")
    print(json.dumps({
        "online_p50_ms": round(online["tuned_p50"], 3), "online_p99_ms": round(online["tuned_p99"], 3),
        "online_plain_feast_p99_ms": round(online["plain_p99"], 3),
        "online_p99_ratio": round(online["tuned_p99"] / online["plain_p99"], 3),
        "api_p50_ms": round(api["p50"], 3), "api_p99_ms": round(api["p99"], 3),
        "api_feast_reads_p99_ms": round(api["reads_p99"], 3), "api_p99_ratio": round(api["p99"] / api["reads_p99"], 3),
        "materialize_rows_per_s": round(mat["fast"]), "materialize_feast_rows_per_s": round(mat["feast"]),
        "materialize_ratio": round(mat["fast"] / mat["feast"], 2),
        "materialize_first_load_rows_per_s": round(first_load),
        "online_features": online["features"], "materialized_rows": mat["rows"], "load_avg": round(load, 1)}))


if __name__ == "__main__":
    sys.exit(main())
