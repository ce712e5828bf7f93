"""Serving benchmark: online read latency, API latency, materialization throughput.

    LASTMILE_HOME=/tmp/feastdev python bench/serving.py            # an applied, trained data dir
    python bench/serving.py --build --orders 20000                 # build one in a temp dir first

Measures, in-process:
* online read of ONE customer with the whole ``recommendation_v1`` service (~50 features,
  one entity row customer x community x SKU) through ``FeatureStore.get_online_features``;
* ``GET /customers/{oneid}/recommendations`` through the ASGI app (two online reads, ALS
  scores, re-ranking, policy), over a rotating set of customers;
* materialization: a full (non-incremental) reload of every view on the fast path, in entity
  rows per second (plus the plain Feast path on one view for comparison, with --feast-path).

Targets: online p99 <= 5 ms, materialize >= 20k rows/s. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _asgi_get(app, path: str) -> int:
    path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(b"host", b"bench")], "client": ("127.0.0.1", 1), "server": ("bench", 80)}
    status = {}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            status["code"] = message["status"]

    asyncio.run(app(scope, receive, send))
    return status["code"]


def _pct(samples: list[float]) -> tuple[float, float]:
    a = np.asarray(samples) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", action="store_true", help="simulate, ingest, apply, train in a temp LASTMILE_HOME first")
    parser.add_argument("--orders", type=int, default=20000)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--feast-path", action="store_true", help="also time Feast's own materialize on one view")
    args = parser.parse_args()

    if args.build:
        os.environ["LASTMILE_HOME"] = tempfile.mkdtemp(prefix="lastmile-bench-")
        os.environ.setdefault("DO_NOT_TRACK", "1")
    from lastmile.config import settings
    from lastmile.features.store import get_store, materialize
    from lastmile.warehouse import connect

    if args.build:
        from lastmile.features.testing import build_feature_warehouse
        from lastmile.models.recommender import train_recommender
        from lastmile.models.spending import train_spending

        cfg, timings = build_feature_warehouse(Path(os.environ["LASTMILE_HOME"]), orders=args.orders, weeks=8)
        train_recommender(cfg, max_users=600)
        train_spending(cfg)
        print("built:", {k: round(v, 1) for k, v in timings.items()})
    cfg = settings()
    store = get_store(cfg)
    customers = [r for r in connect(cfg).rows(
        "SELECT oneid, argMax(home_community_id, event_timestamp) FROM feat_customer_profile GROUP BY oneid ORDER BY oneid LIMIT 500")]
    skus = [r[0] for r in connect(cfg).rows("SELECT sku FROM feat_sku ORDER BY sku")]

    # materialization (full reload on the fast path)
    rep = materialize(cfg, incremental=False)
    print(rep.summary())
    if args.feast_path:
        t = time.perf_counter()
        store.materialize(start_date=rep.end.replace(year=2000), end_date=rep.end, feature_views=["customer_profile"])
        dt = time.perf_counter() - t
        print(f"plain Feast materialize of customer_profile: {rep.rows['customer_profile'] / dt:,.0f} rows/s")

    # online read: one customer, recommendation_v1
    service = store.get_feature_service("recommendation_v1")
    n_features = sum(len(p.features) for p in service.feature_view_projections)
    lat = []
    for i in range(args.reads + 50):
        oneid, community = customers[i % len(customers)]
        row = [{"oneid": oneid, "community_id": community, "sku": skus[i % len(skus)]}]
        t = time.perf_counter()
        store.get_online_features(features=service, entity_rows=row).to_dict()
        if i >= 50:
            lat.append(time.perf_counter() - t)
    online_p50, online_p99 = _pct(lat)
    print(f"online read, 1 customer x recommendation_v1 ({n_features} features): p50 {online_p50:.2f} ms, p99 {online_p99:.2f} ms")

    # API
    from lastmile.api import create_app

    app = create_app(cfg)
    lat = []
    for i in range(args.requests + 20):
        oneid = customers[i % len(customers)][0]
        t = time.perf_counter()
        code = _asgi_get(app, f"/customers/{oneid}/recommendations?limit=10")
        if i >= 20:
            lat.append(time.perf_counter() - t)
        assert code == 200, code
    api_p50, api_p99 = _pct(lat)
    print(f"GET /customers/{{oneid}}/recommendations: p50 {api_p50:.2f} ms, p99 {api_p99:.2f} ms")
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"(load average while measuring: {load:.1f} on {os.cpu_count()} cores)")
    print(json.dumps({"online_p50_ms": round(online_p50, 3), "online_p99_ms": round(online_p99, 3),
                      "api_p50_ms": round(api_p50, 3), "api_p99_ms": round(api_p99, 3),
                      "materialize_rows_per_s": round(rep.rows_per_s), "online_features": n_features,
                      "materialized_rows": rep.total_rows, "load_avg": round(load, 1)}))


if __name__ == "__main__":
    sys.exit(main())
