"""The worker's status file: counters for the compose healthcheck, tests and the benchmark.

Written atomically (``status.json``) after every committed batch and every 10 s; a
healthcheck reads ``updated_at``. ``first_record_at`` is the wall-clock time the first
record reached the worker (start-up excluded from throughput figures).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lastmile.config import Settings
from lastmile.streaming.consumer import BatchConsumer
from lastmile.streaming.features import FeaturePusher
from lastmile.streaming.identity import IdentityRefresher
from lastmile.streaming.sink import StreamSink


def status_path(cfg: Settings) -> Path:
    return cfg.home / "stream" / "status.json"


def write_status(path: Path, sink: StreamSink, consumer: BatchConsumer, refresher: IdentityRefresher,
                 pusher: FeaturePusher | None = None, journeys: Any = None) -> None:
    """``journeys``: the worker's :class:`~lastmile.journeys.stream.StreamJourneys`, when it runs them."""
    stats, ids = sink.stats, refresher.stats
    features: dict = {}
    if pusher is not None:
        fs = pusher.stats
        features |= {"feature_pushes": fs.pushes, "feature_rows_pushed": fs.rows, "feature_push_errors": fs.errors,
                    "feature_orders_waiting_for_oneid": pusher.counters.unresolved,
                    **{f"feature_freshness_{k}": v for k, v in fs.freshness().items()}}
    if journeys is not None:
        if journeys.replenishments is not None:
            features |= {"replenish_evaluations": journeys.replenishments.evaluations,
                         "replenish_signals": len(journeys.replenishments.found)}
        features |= {"journey_passes": journeys.ticks, "journey_errors": journeys.errors,
                     "journey_sends_published": journeys.published, "journey_caught_up": journeys.caught_up,
                     "journey_last_pass": journeys.last.as_dict() if journeys.last is not None else None}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({
        "batches": stats.batches, "read": stats.read, "valid": stats.valid, "quarantined": stats.quarantined,
        "committed_batches": consumer.committed_batches, "first_record_at": consumer.first_record_at,
        "identity_runs": ids.resolves, "identity_last_run": ids.last_run, "identity_errors": ids.errors,
        "identity_last_resolve_s": round(ids.last_resolve_s, 3), "identity_last_steps_s": ids.last_steps,
        "profiles": ids.profiles,
        "profiles_last_build_s": round(ids.last_profiles_s, 3), **features, "updated_at": time.time(),
    }))
    tmp.replace(path)
