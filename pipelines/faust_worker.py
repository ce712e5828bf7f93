"""The always-on real-time path on faust-streaming: topics → contracts → ClickHouse → actions.

The story of one batch:

1. One agent consumes every event topic (``lastmile.<event_type>``) and takes records in
   batches, flushed by size (``batch_rows``) or time (``flush_s``) - ClickHouse wants
   large inserts, neighbours want fresh data; both knobs are options of ``lastmile stream``.
2. :class:`~lastmile.streaming.sink.StreamSink` judges them with the same ``Ingestor`` as
   the Beam backfill and writes rows and quarantine records (one insert per table).
3. Batch handlers run: the quarantine topic, the triggers (``lastmile.actions``), and
   whatever later steps append (OneID, Feast push).
4. Only then are the batch's records acknowledged. Faust commits acknowledged offsets on
   its own schedule (``broker_commit_interval``); since nothing is acknowledged before it is
   written, a commit can never cover an unwritten event. A worker killed at any point
   re-reads from the last commit, and idempotent keys make the replay harmless.

Faust's default would acknowledge an event as soon as the agent moves on to the next one;
``stream.noack_take`` turns that off, and acking is done here, by hand, after the write.

The warehouse is opened by this process and held while it runs (chDB allows one process
per data directory); ``serve_port`` exposes it over ClickHouse's HTTP interface meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faust

from lastmile.config import Settings, settings as current_settings
from lastmile.ingest import Ingestor
from lastmile.privacy import Identifiers
import lastmile.identity.store  # noqa: F401  (registers identity_links, which ingest writes)
from lastmile.streaming import handlers, seen  # noqa: F401  (seen registers its migration)
from lastmile.streaming.broker import bootstrap
from lastmile.streaming.produce import ensure_topics
from lastmile.streaming.sink import BatchHandler, Record, StreamSink
from lastmile.streaming.topics import DEFAULT_PARTITIONS, event_topics
from lastmile.warehouse import connect, migrate

log = logging.getLogger("lastmile.stream")

#: The consumer group: every lastmile worker shares it, so partitions are split among them.
APP_ID = "lastmile-stream"


@dataclass(frozen=True)
class StreamOptions:
    """Knobs of one worker (CLI options of ``lastmile stream``)."""

    batch_rows: int = 20_000
    flush_s: float = 0.5
    commit_interval_s: float = 1.0
    partitions: int = DEFAULT_PARTITIONS
    serve_port: int | None = None
    serve_readonly: bool = True
    group_id: str = APP_ID


def status_path(cfg: Settings) -> Path:
    """Where the worker writes its counters; the compose healthcheck reads its age."""
    return cfg.home / "stream" / "status.json"


def build_app(cfg: Settings, options: StreamOptions, sink: StreamSink) -> faust.App:
    """The faust app with its one ingest agent, wired to ``sink``."""
    app = faust.App(
        options.group_id,
        broker=f"kafka://{bootstrap(cfg)}",
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=options.commit_interval_s,
        broker_commit_every=options.batch_rows,
        broker_max_poll_records=options.batch_rows,
        stream_buffer_maxsize=max(4096, options.batch_rows * 2),
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=20.0,
        topic_partitions=options.partitions,
        topic_allow_declare=False,
        producer_acks=1,
        datadir=str(cfg.home / "stream" / "faust"),
    )
    source = app.topic(*event_topics(), value_type=bytes, key_type=bytes, value_serializer="raw", key_serializer="raw")

    async def publish(topic: str, messages: Sequence[tuple[bytes | None, bytes]]) -> None:
        futures = [await app.producer.send(topic, key, value, None, None, None) for key, value in messages]
        await asyncio.gather(*futures)

    sink.handlers += [handlers.quarantine_topic(publish), handlers.triggers(sink, publish)]

    @app.agent(source, concurrency=1)
    async def ingest(stream: faust.StreamT) -> None:
        # noack_take (faust-streaming >= 0.10) is on Stream, not yet on the StreamT protocol.
        async for events in stream.noack_take(options.batch_rows, within=options.flush_s):  # type: ignore[attr-defined]
            records = [Record(e.message.topic, e.message.partition, e.message.offset, e.value,
                              int(e.message.timestamp * 1000) if e.message.timestamp else None) for e in events]
            try:
                await sink.handle(records)
            except BaseException as exc:  # noqa: BLE001 - any failure: stop before anything is committed
                crash(exc)
            for event in events:  # acknowledged only now: the commit may cover them
                await stream.ack(event)
            write_status(cfg, sink)

    @app.timer(interval=10.0)
    async def heartbeat() -> None:
        write_status(cfg, sink)

    return app


def crash(exc: BaseException) -> None:
    """Exit at once, committing nothing more, when a batch cannot be written or handled.

    Faust would restart the agent and carry on with later records, leaving this batch
    unacknowledged forever (its partitions could then never commit again). Exiting
    instead lets the orchestrator restart the worker, which re-reads from the last commit;
    idempotent writes make that replay harmless.
    """
    if isinstance(exc, asyncio.CancelledError):
        raise exc
    log.critical("batch failed, exiting without committing it: %r", exc, exc_info=exc)
    logging.shutdown()
    os._exit(70)


def write_status(cfg: Settings, sink: StreamSink) -> None:
    stats = sink.stats
    path = status_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"batches": stats.batches, "read": stats.read, "valid": stats.valid,
                               "quarantined": stats.quarantined, "updated_at": time.time()}))
    tmp.replace(path)


def open_sink(cfg: Settings, extra_handlers: Sequence[BatchHandler] = ()) -> StreamSink:
    """Connect and migrate the warehouse, and build the sink (handlers come with the app)."""
    warehouse = connect(cfg)
    migrate(warehouse)
    return StreamSink(warehouse, Ingestor(Identifiers(cfg)), list(extra_handlers), lock=threading.Lock())


def run(cfg: Settings | None = None, options: StreamOptions | None = None, loglevel: str = "WARNING") -> None:
    """Run the worker in the foreground until SIGTERM/SIGINT (a graceful stop commits what was written)."""
    cfg = cfg or current_settings()
    options = options or StreamOptions()
    # One event loop for the whole process: faust's worker runs on the loop it is given.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ensure_topics(bootstrap(cfg), options.partitions))
    (cfg.home / "stream" / "faust").mkdir(parents=True, exist_ok=True)
    sink = open_sink(cfg)
    server = None
    if options.serve_port:
        from lastmile.warehouse.http_server import WarehouseHTTPServer

        server = WarehouseHTTPServer.for_settings(cfg, port=options.serve_port, readonly=options.serve_readonly,
                                                  lock=sink.lock)
        server.start_background()
    app = build_app(cfg, options, sink)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, override_logging=True, loop=loop)
    try:
        worker.execute_from_commandline()
    finally:
        if server is not None:
            server.stop()
        sink.close()
