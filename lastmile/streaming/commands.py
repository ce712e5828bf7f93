"""CLI commands of the real-time path: ``broker``, ``produce``, ``stream``, ``warehouse serve``.

Plain typer-style functions, registered on the main ``lastmile`` app by ``lastmile/cli.py``;
``app`` bundles them for running this module directly
(``python -m lastmile.streaming.commands stream``), which the tests do.

Every command reads the same settings as the rest of lastmile: ``LASTMILE_KAFKA_BOOTSTRAP``
empty means the development broker on 127.0.0.1:9092 (started by ``lastmile broker``),
``host:port`` means real Kafka; nothing else changes.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Optional

import typer

from lastmile.config import settings

app = typer.Typer(help="lastmile real-time path: broker, produce, stream.", no_args_is_help=True, add_completion=False)
warehouse_app = typer.Typer(help="Warehouse access for other processes.", no_args_is_help=True, add_completion=False)


@app.command("broker")
def broker(
    port: int = typer.Option(9092, help="Port on 127.0.0.1 (the default is where LASTMILE_KAFKA_BOOTSTRAP='' looks)."),
) -> None:
    """Run the development Kafka-protocol broker (tansu, in-memory) on loopback until Ctrl-C.

    For laptops and CI only: topics live in memory and vanish when it stops. Production
    sets LASTMILE_KAFKA_BOOTSTRAP to a real Kafka cluster instead.
    """
    from lastmile.streaming.broker import DevBroker

    dev = DevBroker(port=port).start()
    typer.echo(f"development broker on {dev.bootstrap} (in-memory; Ctrl-C stops it). "
               f"Other commands find it with LASTMILE_KAFKA_BOOTSTRAP unset" + ("" if port == 9092 else f" or ={dev.bootstrap}"))
    signal.signal(signal.SIGTERM, lambda *_: dev.stop())
    try:
        dev.wait()
    except KeyboardInterrupt:
        pass
    finally:
        dev.stop()


@app.command("produce")
def produce(
    events: Optional[Path] = typer.Option(None, help="Directory of <event_type>.jsonl files (default $LASTMILE_HOME/events)."),
    rate: float = typer.Option(0.0, help="Events per second; 0 publishes as fast as the broker takes them."),
    limit: Optional[int] = typer.Option(None, help="Stop after this many events."),
    partitions: int = typer.Option(4, help="Partitions of each topic when it has to be created."),
    as_json: bool = typer.Option(False, "--json", help="Print the counters as JSON."),
) -> None:
    """Publish event files to the lastmile.<event_type> topics, in event-time order, at a chosen rate."""
    from lastmile.streaming.broker import bootstrap
    from lastmile.streaming.produce import produce_files

    cfg = settings()
    report = produce_files(bootstrap(cfg), events or cfg.events_dir, rate=rate or None, limit=limit, partitions=partitions)
    if as_json:
        print(json.dumps({"published": report.published, "by_topic": report.by_topic,
                          "seconds": round(report.seconds, 2), "events_per_s": round(report.events_per_s)}))
        return
    typer.echo(f"published {report.published:,} events in {report.seconds:.1f} s ({report.events_per_s:,.0f}/s) to "
               + ", ".join(f"{t} {n:,}" for t, n in sorted(report.by_topic.items())))


@app.command("stream")
def stream(
    batch_rows: int = typer.Option(20_000, help="Flush a batch to the warehouse at this many events..."),
    flush_seconds: float = typer.Option(0.5, help="...or after this many seconds, whichever comes first."),
    partitions: int = typer.Option(4, help="Partitions of each topic when it has to be created."),
    serve_port: Optional[int] = typer.Option(None, help="Also serve the embedded warehouse over ClickHouse HTTP on this port."),
    serve_writable: bool = typer.Option(False, help="Let --serve-port clients write (default: read-only)."),
    group: str = typer.Option("lastmile-stream", help="Kafka consumer group (workers in one group share partitions)."),
    judges: int = typer.Option(-1, help="Processes judging batches (validation, hashing) in parallel; 0: in the worker "
                                      "process; -1: one per core but one, at most 4."),
    identity_seconds: float = typer.Option(5.0, help="Resolve new identity evidence into OneIDs at most this often (0: never; "
                                                    "with several workers, enable it on one)."),
    identity_waiting_seconds: float = typer.Option(1.0, help="...or this often while orders of a new neighbour wait "
                                                   "for a OneID, so their online features follow within seconds "
                                                   "(0: no hurry)."),
    profiles_seconds: float = typer.Option(30.0, help="Rebuild the profiles table at most this often (0: never)."),
    replenish_seconds: float = typer.Option(60.0, help="Evaluate replenishment nudges (staples due today) at most "
                                            "this often, after OneID runs (0: never)."),
    features: bool = typer.Option(True, "--features/--no-features",
                                  help="Push today's counters per customer to Feast's online store as orders arrive."),
    log_level: str = typer.Option("WARNING", help="faust/worker log level."),
) -> None:
    """Run the worker: topics → contracts → warehouse (+ quarantine) → actions → OneID → Feast, until SIGTERM.

    Each batch's offsets are committed right after it is written and handled; a killed
    worker resumes from the last commit and the warehouse's idempotent keys absorb the replay.
    """
    from pipelines.faust_worker import StreamOptions, run

    run(settings(), StreamOptions(batch_rows=batch_rows, flush_s=flush_seconds, partitions=partitions,
                                  serve_port=serve_port, serve_readonly=not serve_writable, group_id=group, judges=judges,
                                  identity_every_s=identity_seconds,
                                  identity_waiting_every_s=identity_waiting_seconds, profiles_every_s=profiles_seconds,
                                  features=features, replenish_every_s=replenish_seconds),
        loglevel=log_level.upper())


@warehouse_app.command("serve")
def warehouse_serve(
    port: int = typer.Option(8123, help="Port on the host below (8123 is ClickHouse's HTTP port)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; keep it loopback (no authentication)."),
    readonly: bool = typer.Option(False, "--readonly", help="Refuse everything but SELECT/SHOW/DESCRIBE/EXISTS/EXPLAIN/WITH."),
) -> None:
    """Serve the embedded warehouse over ClickHouse's HTTP interface (for dbt, BI tools, Feast).

    chDB lets one process open the warehouse; this process becomes that one and others
    connect with clickhouse-connect to http://HOST:PORT. Not while ``lastmile stream`` runs:
    give the worker --serve-port instead. Production uses a ClickHouse server.
    """
    from lastmile.warehouse import connect, migrate
    from lastmile.warehouse.http_server import WarehouseHTTPServer

    cfg = settings()
    migrate(connect(cfg))
    server = WarehouseHTTPServer.for_settings(cfg, host=host, port=port, readonly=readonly)
    typer.echo(f"serving {cfg.warehouse_dir} on {server.url} ({'read-only' if readonly else 'read-write'}); Ctrl-C stops")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


app.add_typer(warehouse_app, name="warehouse")

if __name__ == "__main__":
    app()
