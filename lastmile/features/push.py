"""Real-time features: what the streaming worker pushes as orders arrive.

The worker (lastmile/streaming) calls :func:`push` with a frame of per-customer counters;
they go to the ``customer_realtime_push`` push source and so straight to the online store
(and, with ``offline=True``, also to the ``feat_customer_realtime`` warehouse table, so
training can see the same values later). Columns: ``oneid``, ``event_timestamp`` (UTC),
``rt_orders_today``, ``rt_spend_today_cny``, ``rt_impulse_spend_today_cny``, ``rt_last_order_ts``.

Register it as a batch handler next to the OneID handler (see lastmile/streaming/handlers.py).
"""

from __future__ import annotations

import pandas as pd

from lastmile.config import Settings, settings as current_settings

PUSH_SOURCE = "customer_realtime_push"
COLUMNS = {"oneid": str, "rt_orders_today": "int64", "rt_spend_today_cny": "float64",
           "rt_impulse_spend_today_cny": "float64", "rt_last_order_ts": "int64"}


def push(cfg: Settings | None, frame: pd.DataFrame, offline: bool = False) -> int:
    """Push real-time counters to the online store; returns the rows pushed."""
    from lastmile.features.store import get_store

    if frame.empty:
        return 0
    missing = (set(COLUMNS) | {"event_timestamp"}) - set(frame.columns)
    if missing:
        raise ValueError(f"push frame lacks columns {sorted(missing)}")
    df = frame[[*COLUMNS, "event_timestamp"]].astype(COLUMNS)
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    store = get_store(cfg or current_settings())
    from feast.data_source import PushMode

    store.push(PUSH_SOURCE, df, to=PushMode.ONLINE)
    if offline:
        from lastmile.warehouse import connect

        connect(cfg or current_settings()).client.insert_df("feat_customer_realtime", df)
    return len(df)
