"""The always-on real-time path: topics → contracts → ClickHouse → actions → OneID.

What Faust does here, and what it does not:

* **Faust runs the process**: the worker's lifecycle and signal handling (SIGTERM/SIGINT
  stop it gracefully), logging, the producer behind ``lastmile.quarantine`` and
  ``lastmile.actions``, and the timers (status file, OneID refresh).
* **Faust does not consume the event topics.** Its agents hand records over one at a time
  (~200 µs of Python each here, a ~2,000 events/s ceiling), so its Kafka consumer is
  switched off (:class:`~lastmile.streaming.faust_compat.BatchBoot`; every change to Faust's
  behaviour lives in :mod:`lastmile.streaming.faust_compat`) and a :class:`~lastmile.streaming.consumer.BatchConsumer`
  (aiokafka ``getmany``, consumer group ``group_id``) runs as a Faust service instead. No
  agents, streams, tables or Faust offset tracking are involved; neither is the Faust leader
  election (there is no Faust consumer group).

One batch: gather up to ``batch_rows`` records or ``flush_s`` → judge with the same
``Ingestor`` as the Beam backfill → write rows, quarantine records and identity evidence →
handlers (Feast push of today's counters, the journeys' inbox, OneID notice, quarantine topic) → commit the batch's offsets. A worker
killed at any point re-reads from the last commit; idempotent keys absorb the replay. A
batch that fails exits the process (code 70) without committing it.

The warehouse is opened by this process and held while it runs (chDB allows one process
per data directory); ``serve_port`` exposes it over ClickHouse's HTTP interface meanwhile.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faust
import mode

from lastmile.audiences.contact_rules import ContactDesk, load_rules
from lastmile.batches.rules import load_rules as load_batch_rules
from lastmile.batches.stream import BatchQualityWatch
from lastmile.config import Settings, settings as current_settings
from lastmile.identity.forget import forgotten_tokens
from lastmile.ingest import Ingestor
from lastmile.privacy import Identifiers
import lastmile.identity.store  # noqa: F401  (registers identity_links, which ingest writes)
from lastmile.streaming import handlers, seen  # noqa: F401  (seen registers its migration)
from lastmile.streaming.broker import bootstrap
from lastmile.streaming.audiences import CHANGES_TOPIC, EventAudiences
from lastmile.streaming.consumer import BatchConsumer
from lastmile.streaming.faust_compat import BatchApp, QuietWorker, kafka_producer
from lastmile.streaming.features import FeaturePusher
from lastmile.streaming.identity import IdentityRefresher
from lastmile.streaming.judges import ProcessJudges
from lastmile.streaming.produce import ensure_topics
from lastmile.streaming.sink import StatementLocked, StreamSink
from lastmile.streaming.status import status_path, write_status
from lastmile.streaming.topics import ACTIONS_TOPIC, DEFAULT_PARTITIONS, event_topics
from lastmile.warehouse import connect, migrate

log = logging.getLogger("lastmile.stream")

#: The consumer group: every lastmile worker shares it, so partitions are split among them.
APP_ID = "lastmile-stream"
#: How often the worker looks for journey sends a pass queued: a send waits at most this long
#: before it is published (a look is a flag read when nothing is queued).
JOURNEY_SENDS_EVERY_S = 0.05


@dataclass(frozen=True)
class StreamOptions:
    """Knobs of one worker (CLI options of ``lastmile stream``)."""

    batch_rows: int = 20_000
    flush_s: float = 0.5
    partitions: int = DEFAULT_PARTITIONS
    serve_port: int | None = None
    serve_readonly: bool = True
    group_id: str = APP_ID
    judges: int = -1  # processes judging batches; 0: a thread of the worker; -1: one per core but one (max 4)
    identity_every_s: float = 5.0  # 0: no OneID resolution in this worker
    identity_waiting_every_s: float = 0.5  # resolve this often while orders wait for a OneID (0: no hurry)
    profiles_every_s: float = 30.0  # 0: no profiles rebuild
    features: bool = True  # push today's counters to Feast's online store
    replenish_every_s: float = 60.0  # evaluate the replenishment_due signal at most this often (0: never; needs journeys)
    audiences: bool = True  # evaluate the event audiences after OneID runs (needs OneID; nothing when none exists)
    journeys: bool = True  # advance the journeys of journeys/ after OneID runs and publish their sends (needs OneID)
    batch_alerts: bool = True  # batch-quality alerts for procurement (batch_quality.yml, lastmile.batches)


@dataclass
class WorkerParts:
    """What a worker is made of besides Faust: the sink and what runs behind it."""

    sink: StreamSink
    refresher: IdentityRefresher
    pusher: FeaturePusher | None = None
    audiences: EventAudiences | None = None
    journeys: Any = None  # lastmile.journeys.stream.StreamJourneys (StreamOptions.journeys)
    batches: BatchQualityWatch | None = None  # batch-quality alerts (StreamOptions.batch_alerts)

    def refresh_forgotten(self) -> None:
        """Adopt forget requests made while the worker runs (hold the warehouse lock).

        Batches judged from now on drop the forgotten people's identifiers, and OneID
        refuses any of their evidence that slipped in before (it joins the blocked tokens).
        """
        sink = self.sink
        current = forgotten_tokens(sink.warehouse)
        identifiers = sink.ingestor.identifiers
        if current == identifiers.forgotten:
            return
        identifiers.set_forgotten(current)
        if sink.judges is not None:
            sink.judges.set_forgotten(current)
        self.refresher.blocked = self.refresher.rules.blocked_tokens(identifiers.hasher) | current
        log.warning("suppression list updated: %d forgotten identifiers", len(current))


def build_app(cfg: Settings, options: StreamOptions, parts: WorkerParts) -> faust.App:
    """The Faust app: producer, timers and one service running the batch consumer into ``sink``."""
    app = BatchApp(options.group_id, broker=f"kafka://{bootstrap(cfg)}", web_enabled=False, topic_allow_declare=False,
               producer_acks=1, datadir=str(cfg.home / "stream" / "faust"))

    sink, refresher, pusher = parts.sink, parts.refresher, parts.pusher

    async def publish(topic: str, messages: Sequence[tuple[bytes | None, bytes]]) -> None:
        await publish_batches(app.producer, topic, messages)

    async def publish_entries() -> None:
        if parts.audiences is not None and (entries := parts.audiences.drain()):
            await publish(CHANGES_TOPIC, entries)
            await sink.run_blocking(parts.audiences.delivered, entries)  # the outbox: `audience publish` skips them

    # The Feast push goes first: it needs no warehouse lock, while noting the journeys' events
    # waits for it behind a OneID run or a profiles rebuild - up to a second or two on the
    # embedded warehouse, which the online feature should not pay.
    if pusher is not None:
        sink.handlers.append(pusher.handler())
    if parts.audiences is not None:
        sink.handlers.append(parts.audiences.handler())  # before the OneID notice: noted before a resolution starts
    if parts.journeys is not None:
        # Into the inbox before the batch commits; before the OneID notice, so a resolution it
        # hurries starts with this batch.
        sink.handlers.append(parts.journeys.handler())
    sink.handlers += [refresher.handler(), handlers.quarantine_topic(publish)]
    if parts.batches is not None:
        sink.handlers.append(parts.batches.handler(sink, publish))  # procurement's alerts: not customer contacts
    consumer = BatchConsumer(bootstrap(cfg), options.group_id, event_topics(), sink, batch_rows=options.batch_rows,
                             flush_s=options.flush_s, after_batch=lambda _: status())

    def status() -> None:
        write_status(status_path(cfg), sink, consumer, refresher, pusher, parts.journeys)

    @app.service
    class EventTopics(mode.Service):
        async def on_start(self) -> None:
            await consumer.start()
            self.add_future(self._consume())

        async def _consume(self) -> None:
            try:
                await consumer.run()
            except BaseException as exc:  # noqa: BLE001 - stop before the batch is committed
                crash(exc)

        async def on_stop(self) -> None:  # runs before the producer stops (started later, stopped first)
            await consumer.stop()
            await refresher.close()
            if parts.journeys is not None:
                await parts.journeys.in_background(parts.journeys.after_resolve, True)  # after the last resolution
            await publish_entries()
            await publish_journey_sends()
            if pusher is not None:
                pusher.close()
            status()

    @app.timer(interval=0.25)
    async def identity() -> None:
        refresher.tick()  # resolves evidence of a stream gone quiet, too; cheap when nothing is due

    @app.timer(interval=5.0)
    async def forget_requests() -> None:
        await sink.run_blocking(parts.refresh_forgotten)  # `lastmile forget` may have run meanwhile

    if parts.audiences is not None:
        @app.timer(interval=0.2)
        async def audience_entries() -> None:
            await publish_entries()  # queued by the OneID thread (EventAudiences.after_resolve)

    async def publish_journey_sends() -> None:
        if parts.journeys is not None and (sends := parts.journeys.drain()):
            try:
                await publish(ACTIONS_TOPIC, [(a.key(), a.to_json()) for a in sends])
            except Exception:
                parts.journeys.requeue(sends)  # still in the outbox: tried again at the next turn
                raise
            await parts.journeys.delivered(sends)

    if parts.journeys is not None:
        @app.timer(interval=JOURNEY_SENDS_EVERY_S)
        async def journey_sends() -> None:
            if parts.journeys.queued:
                await publish_journey_sends()  # queued by the OneID thread (StreamJourneys.after_resolve)

        @app.timer(interval=0.25)
        async def journey_passes() -> None:
            if parts.journeys.catch_up_due:  # owed by a resolution (too soon, a backlog, a catch-up's pause): now
                await parts.journeys.in_background(parts.journeys.catch_up)  # its statements take the lock

    @app.timer(interval=10.0)
    async def heartbeat() -> None:
        status()

    return app


async def publish_batches(producer: Any, topic: str, messages: Sequence[tuple[bytes | None, bytes]]) -> None:
    """Publish ``(key, value)`` messages and return once the broker acknowledged every one.

    One record batch per partition (aiokafka's ``create_batch``/``send_batch``) instead of a
    ``send`` per message: a send costs a future, a partitioner call, a debug log and a
    queue slot each, and a backlog's first passes carry thousands of journey sends. Partitions are chosen by the producer's own partitioner
    (``producer.key_partition``), exactly as ``send`` would; keyless messages go round-robin
    over the partitions. Order within a partition is the order of ``messages``.
    """
    if not messages:
        return
    kafka = kafka_producer(producer)  # the aiokafka producer behind faust's (as key_partition uses)
    partitions = sorted(await kafka.partitions_for(topic))  # also waits for the topic's metadata
    batches: dict[int, list[Any]] = {}
    for i, (key, value) in enumerate(messages):
        partition = producer.key_partition(topic, key).partition if key is not None else partitions[i % len(partitions)]
        open_batches = batches.get(partition)
        if open_batches is None:
            open_batches = batches[partition] = [kafka.create_batch()]
        if open_batches[-1].append(key=key, value=value, timestamp=None) is None:  # full: start the next one
            open_batches.append(kafka.create_batch())
            if open_batches[-1].append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"a message of {len(value)} bytes does not fit in a record batch of {topic}")
    sent = [await kafka.send_batch(batch, topic, partition=partition)
            for partition, open_batches in batches.items() for batch in open_batches]
    await asyncio.gather(*sent)


def crash(exc: BaseException) -> None:
    """Exit at once, committing nothing more, when a batch cannot be written or handled.

    The process restarts (orchestrator) and re-reads from the last commit; idempotent
    writes make that replay harmless. Carrying on instead would commit later offsets
    past the failed batch.
    """
    if isinstance(exc, asyncio.CancelledError):
        raise exc
    log.critical("batch failed, exiting without committing it: %r", exc, exc_info=exc)
    logging.shutdown()
    os._exit(70)


def open_sink(cfg: Settings, options: StreamOptions) -> WorkerParts:
    """Connect and migrate the warehouse; the sink (handlers come with the app), the OneID
    refresher, the feature pusher, the event audiences and the journeys (each optional by ``options``)."""
    warehouse = connect(cfg)
    migrate(warehouse)
    forgotten = forgotten_tokens(warehouse)  # as the Beam path: forgotten people are not resurrected
    identifiers = Identifiers(cfg, forgotten=forgotten)
    processes = options.judges if options.judges >= 0 else min(4, (os.cpu_count() or 1) - 1)
    judges = ProcessJudges(cfg, forgotten, processes) if processes > 0 else None
    if judges is not None:
        judges.warm_up()
    sink = StreamSink(warehouse, Ingestor(identifiers), lock=threading.Lock(), judges=judges)
    refresher = IdentityRefresher(warehouse, sink.lock, identifiers, resolve_every_s=options.identity_every_s,
                                  profiles_every_s=options.profiles_every_s,
                                  waiting_every_s=options.identity_waiting_every_s)
    refresher.blocked = refresher.blocked | forgotten
    pusher = FeaturePusher(cfg, warehouse, sink.lock, identifiers.rules.strength) if options.features else None
    if pusher is not None:
        refresher.after_resolve.append(pusher.on_resolved)
        pusher.on_waiting = refresher.hurry
    audiences = event_audiences(cfg, warehouse) if refresher.enabled and options.audiences else None
    if audiences is not None:
        refresher.after_resolve.append(audiences.after_resolve)
    journeys = None
    if options.journeys and not refresher.enabled:
        log.warning("journeys are off: they need OneID (--identity-seconds 0 turns it off)")
    elif options.journeys:
        journeys = stream_journeys(cfg, sink, options.replenish_every_s)
    if journeys is not None:
        journeys.on_waiting = refresher.hurry  # a batch's journey events: resolve their people soon
        refresher.after_release.append(journeys.after_resolve)  # not holding the lock: batches are written meanwhile
    batches = BatchQualityWatch(warehouse, load_batch_rules()) if options.batch_alerts else None
    if batches is not None:
        batches.load()  # the recent orders and feedback, so feedback on them is judged against their batches
    return WorkerParts(sink, refresher, pusher, audiences, journeys, batches)


def stream_journeys(cfg: Settings, sink: StreamSink, replenish_every_s: float = 60.0) -> Any:
    """The journeys of LASTMILE_JOURNEYS_DIR in the worker, or None when there are none. A folder
    that is missing or does not load is logged and the worker runs without journeys (ingestion
    comes first): then no compensation, welcome or nudge is sent. Journey sends always pass the
    contact rules (LASTMILE_CONTACT_RULES): there is no switch to send around consent."""
    from lastmile.journeys import JourneyError, load_journeys
    from lastmile.journeys.stream import StreamJourneys

    try:
        found = load_journeys(cfg.journeys_path)
    except JourneyError as exc:
        log.error("journeys are off: %s", exc)
        return None
    if not found:
        log.warning("journeys are off: no journey in %s", cfg.journeys_path)
        return None
    log.info("journeys: %s", ", ".join(j.name for j in found))
    desk = ContactDesk(StatementLocked(sink.warehouse, sink.lock), load_rules(), cfg)  # as the passes it decides for
    desk.risk([])  # load the spending-health model and its feature reader now, not at a first send while the warehouse is held
    return StreamJourneys(sink, found, desk, cfg.business_zone,
                          replenish_every_s=replenish_every_s)


def event_audiences(cfg: Settings, warehouse: Any) -> EventAudiences | None:
    """The ``freshness: event`` audiences of the audiences folder, or None when there are none
    (then the worker does no audience work at all). A folder that does not load is logged and
    the worker runs without audiences: ingestion matters more than a bad audience file."""
    from lastmile.audiences import AudienceError, load_audiences
    from lastmile.audiences.destinations import load_destinations

    try:
        found = [a for a in load_audiences(cfg.audiences_path) if a.freshness == "event"]
    except AudienceError as exc:
        log.error("event audiences are off: %s", exc)
        return None
    if not found:
        return None
    try:  # the destinations whose outbox records what the worker sends to lastmile.audience_changes
        destinations = load_destinations(cfg.audience_destinations_path, bootstrap(cfg))
    except AudienceError as exc:
        log.error("audience destinations not read (a later publish re-sends the stream's changes): %s", exc)
        destinations = []
    return EventAudiences(warehouse, found, destinations=destinations)


#: Cyclic GC thresholds for the worker: (young, middle, old) as in ``gc.set_threshold``.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a worker that builds and holds a large heap.

    The worker keeps a lot alive between batches (the seen-identifier set, the kept OneID
    resolver and its saved frames, today's counters, the feature registry). With CPython's
    default thresholds (700, 10, 10) a bench/stream.py run made ~3,600 young and ~17 full
    collections, each full one walking that heap: ~2 s of CPU while it starts (importing
    Feast, loading state) and ~2 s more while it drains 147k events. So, from the start of
    :func:`run`, young collections every 50,000 allocations instead of 700 (a batch's
    short-lived objects die young and in bulk), a middle one every 20 young ones and a full
    one every 10 middle ones (and, as always in CPython, only once the long-lived heap grew
    by a quarter): cyclic garbage that lives long is still collected, memory stays bounded.
    Same bench, GC CPU (``gc.callbacks`` with ``time.thread_time``): 4.4 s -> 0.7 s per run.
    """
    gc.set_threshold(*GC_THRESHOLDS)


def freeze_heap() -> None:
    """Once start-up is done: what exists then (modules, the registry, the loaded state) is
    moved out of the collector's generations, never scanned again by a full collection."""
    gc.collect()
    gc.freeze()


def run(cfg: Settings | None = None, options: StreamOptions | None = None, loglevel: str = "WARNING") -> None:
    """Run the worker in the foreground until SIGTERM/SIGINT (a graceful stop commits what was written)."""
    tune_gc()
    cfg = cfg or current_settings()
    options = options or StreamOptions()
    loop = asyncio.new_event_loop()  # one loop for the process: faust's worker runs on the loop it is given
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ensure_topics(bootstrap(cfg), options.partitions))
    (cfg.home / "stream" / "faust").mkdir(parents=True, exist_ok=True)
    parts = open_sink(cfg, options)
    sink = parts.sink
    if parts.audiences is not None:
        from lastmile.audiences.destinations import ensure_topic

        loop.run_until_complete(ensure_topic(bootstrap(cfg), CHANGES_TOPIC, options.partitions))
    server = None
    if options.serve_port:
        from lastmile.warehouse.http_server import WarehouseHTTPServer

        server = WarehouseHTTPServer.for_settings(cfg, port=options.serve_port, readonly=options.serve_readonly,
                                                  lock=sink.lock)
        server.start_background()
    app = build_app(cfg, options, parts)
    freeze_heap()  # start-up is done: the state is loaded, the judges are warm
    worker = QuietWorker(app, loglevel=loglevel, quiet=True, override_logging=True, loop=loop)
    try:
        worker.execute_from_commandline()
    finally:
        if server is not None:
            server.stop()
        sink.close()
