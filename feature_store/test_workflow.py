"""The feature store end to end, as in Feast's templates (`python feature_store/test_workflow.py`).

Runs against $LASTMILE_HOME (which must hold an ingested warehouse: `lastmile run`, ideally
followed by `lastmile transform` for the credit view):

1. build the feat_* tables and `feast apply` the repository (lastmile.features.store.apply);
2. materialize the online store incrementally (fast path);
3. fetch point-in-time correct training features for a few customers (historical retrieval);
4. read the same customers online, with the recommendation_v1 feature service;
5. push a real-time update and read it back.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd

from lastmile.config import settings
from lastmile.features.push import push
from lastmile.features.store import apply, historical_features, materialize, online_features
from lastmile.warehouse import connect


def run_demo() -> None:
    cfg = settings()
    print("--- apply ---")
    print(apply(cfg).summary())
    print("--- materialize (incremental) ---")
    print(materialize(cfg).summary())

    rows = connect(cfg).rows("SELECT oneid, argMax(home_community_id, event_timestamp) FROM feat_customer_profile "
                             "GROUP BY oneid ORDER BY max(orders_total) DESC LIMIT 3")
    print("--- historical (point-in-time) features for training ---")
    entity = pd.DataFrame({"oneid": [r[0] for r in rows], "community_id": [r[1] for r in rows], "sku": "SK0001",
                           "event_timestamp": pd.Timestamp("2026-10-15T00:00:00Z")})
    print(historical_features(cfg, "recommendation_v1", entity)[["oneid", "orders_total", "orders_28d", "aff_vegetables",
                                                                 "np_purchases", "cb_rank_28d"]])
    print("--- online features (recommendation_v1) ---")
    got = online_features(cfg, "recommendation_v1", [{"oneid": r[0], "community_id": r[1], "sku": "SK0001"} for r in rows])
    print(pd.DataFrame(got)[["oneid", "orders_total", "orders_28d", "aff_vegetables", "np_purchases", "cb_rank_28d"]])
    print("--- push a real-time update ---")
    push(cfg, pd.DataFrame([{"oneid": rows[0][0], "event_timestamp": datetime.now(timezone.utc), "rt_orders_today": 2,
                             "rt_spend_today_cny": 59.0, "rt_impulse_spend_today_cny": 12.0,
                             "rt_last_order_ts": int(datetime.now(timezone.utc).timestamp())}]))
    print(online_features(cfg, ["customer_realtime:rt_orders_today", "customer_realtime:rt_spend_today_cny"],
                          [{"oneid": rows[0][0]}]))


if __name__ == "__main__":
    run_demo()
