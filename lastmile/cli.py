"""The ``lastmile`` command line: simulate, ingest, run the main job, query the warehouse.

Every command turns bad input into a one-line error and a non-zero exit code (2 for bad
input, 1 for a failure of the system), never a traceback; ``--json`` prints what a program
would read.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from datetime import date, timedelta
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from lastmile.config import VARIABLES, settings

app = typer.Typer(help="lastmile: streaming data pipeline and CDP for community group-buying retail.", no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True)


class BadInput(Exception):
    """The user asked for something that cannot be done as asked (exit code 2)."""


def friendly(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one line on stderr and an exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from lastmile.contracts import ContractError
        from lastmile.warehouse import WarehouseError

        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except (BadInput, ContractError, FileNotFoundError, ValueError) as exc:
            err.print(f"[red]error:[/red] {_one_line(exc)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except WarehouseError as exc:
            err.print(f"[red]error:[/red] {_one_line(exc)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except Exception as exc:  # clickhouse-connect's errors carry the server's message
            if type(exc).__module__.startswith("clickhouse_connect"):
                err.print(f"[red]error:[/red] ClickHouse: {_one_line(exc)}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            raise

    return wrapper


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    # ClickHouse appends every token it expected; the first sentence is the useful part.
    text = text.split(" Expected one of:")[0]
    return text[:300] + ("…" if len(text) > 300 else "")


@contextmanager
def _stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    start = time.perf_counter()
    with console.status(f"{name}…"):
        yield
    timings[name] = round(time.perf_counter() - start, 2)


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"), TimeElapsedColumn(), console=console, transient=True)


def _simulate(seed: int, orders: int, weeks: int, out: Path) -> Any:
    from lastmile.simulator import SimulationConfig, simulate

    if orders <= 0 or weeks <= 0:
        raise BadInput("--orders and --weeks must be positive")
    cfg = SimulationConfig(seed=seed, orders=orders, weeks=weeks)
    # Follow-up events (pickups, claims, reviews) trail the window by up to ~10 days, and
    # ingest rightly quarantines events from the future.
    ends = cfg.start + timedelta(weeks=weeks, days=12)
    if ends > date.today():
        raise BadInput(f"{weeks} weeks from {cfg.start} would simulate events after today ({date.today()}); use fewer --weeks")
    with _progress() as progress:
        tasks: dict[str, Any] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        return simulate(cfg, out, progress=report)


@app.command("simulate")
@friendly
def simulate_cmd(
    seed: int = typer.Option(42, help="Random seed; the same seed writes the same files."),
    orders: int = typer.Option(20_000, help="Orders to simulate (telemetry, pickups, returns, reviews follow)."),
    weeks: int = typer.Option(8, help="Weeks of activity, from Monday 2026-09-07."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default $LASTMILE_HOME)."),
    as_json: bool = typer.Option(False, "--json", help="Print counts as JSON."),
) -> None:
    """Write a deterministic community: events, ground truth and reference data."""
    target = out or settings().home
    result = _simulate(seed, orders, weeks, target)
    if as_json:
        print(json.dumps({"counts": result.counts, "injected": result.injected, "out": str(target)}))
        return
    table = Table(title=f"simulated into {target}")
    table.add_column("event type")
    table.add_column("events", justify="right")
    for event_type, n in sorted(result.counts.items()):
        table.add_row(event_type, f"{n:,}")
    console.print(table)
    console.print("injected: " + ", ".join(f"{k} {v:,}" for k, v in result.injected.items()))


def _ingest(events: Path) -> Any:
    from pipelines import beam_ingest

    if not events.is_dir() or not any(events.glob("*.jsonl")):
        raise BadInput(f"no event files (*.jsonl) in {events}; run `lastmile simulate` first")
    return beam_ingest.run(events)


@app.command("ingest")
@friendly
def ingest_cmd(
    events: Optional[Path] = typer.Option(None, help="Directory of *.jsonl event files (default $LASTMILE_HOME/events)."),
    as_json: bool = typer.Option(False, "--json", help="Print the counters as JSON."),
) -> None:
    """Ingest event files with the Beam pipeline into the warehouse (idempotent)."""
    events_dir = events or settings().events_dir
    with console.status("ingesting with Apache Beam…"):
        report = _ingest(events_dir)
    _print_ingest(report, as_json)


def _ingest_dict(report: Any) -> dict[str, Any]:
    return {"read": report.read, "valid": report.valid, "quarantined": report.quarantined, "written": report.written,
            "quarantined_by_reason": report.reasons, "seconds": round(report.seconds, 2), "events_per_s": round(report.events_per_s)}


def _print_ingest(report: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_ingest_dict(report)))
        return
    console.print(f"read {report.read:,} = valid {report.valid:,} + quarantined {report.quarantined:,}; "
                  f"written {report.written:,} in {report.seconds:.1f} s ({report.events_per_s:,.0f} events/s)")


@app.command("run")
@friendly
def run_cmd(
    seed: int = typer.Option(42, help="Simulation seed."),
    orders: int = typer.Option(20_000, help="Orders to simulate."),
    weeks: int = typer.Option(8, help="Weeks of activity."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """The main job: simulate → ingest → summary. Re-running gives the same counts."""
    from lastmile.summary import summarize
    from lastmile.warehouse import connect

    cfg = settings()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    _simulate(seed, orders, weeks, cfg.home)
    timings["simulate"] = round(time.perf_counter() - start, 2)
    with _stage("ingest (Apache Beam)", timings):
        report = _ingest(cfg.events_dir)
    with _stage("summary", timings):
        summary = summarize(connect(cfg))
    if as_json:
        print(json.dumps({"ingest": _ingest_dict(report), "warehouse": summary.as_dict(), "seconds": timings}))
        return
    _print_ingest(report, False)
    table = Table(title=f"warehouse ({'embedded chDB' if cfg.embedded else cfg.clickhouse_url})")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, n in summary.rows.items():
        table.add_row(name, f"{n:,}")
    console.print(table)
    reasons = Table(title="quarantined by reason")
    reasons.add_column("reason")
    reasons.add_column("payloads", justify="right")
    for reason, n in summary.quarantined.items():
        reasons.add_row(reason, f"{n:,}")
    console.print(reasons)
    console.print("time per stage: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))


@app.command("sql")
@friendly
def sql_cmd(
    query: str = typer.Argument(..., help="SQL to run against the warehouse."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json (one object per row)."),
) -> None:
    """Query the warehouse: a table on a terminal, CSV or JSON for programs."""
    from lastmile.warehouse import connect

    if fmt not in ("table", "csv", "json"):
        raise BadInput(f"--format must be table, csv or json, not {fmt!r}")
    result = connect().query(query)
    names = list(result.column_names)
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(names)
        writer.writerows(result.result_rows)
    elif fmt == "json":
        for row in result.result_rows:
            print(json.dumps(dict(zip(names, row)), default=str, ensure_ascii=False))
    else:
        table = Table(*names)
        for row in result.result_rows:
            table.add_row(*("NULL" if v is None else str(v) for v in row))
        console.print(table)


@app.command("migrate")
@friendly
def migrate_cmd() -> None:
    """Create or upgrade the warehouse tables (runs automatically before ingest)."""
    from lastmile.warehouse import connect, migrate

    ran = migrate(connect())
    console.print("applied: " + ", ".join(ran) if ran else "warehouse is up to date")


@app.command("status")
@friendly
def status_cmd(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Rows per raw table and quarantined payloads by reason."""
    from lastmile.summary import summarize
    from lastmile.warehouse import connect

    summary = summarize(connect())
    if as_json:
        print(json.dumps(summary.as_dict()))
        return
    table = Table("table", "rows")
    for name, n in summary.rows.items():
        table.add_row(name, f"{n:,}")
    for reason, n in summary.quarantined.items():
        table.add_row(f"quarantine: {reason}", f"{n:,}")
    console.print(table)


@app.command("config")
def config_cmd() -> None:
    """Show the configuration variables, their defaults and current values."""
    table = Table("variable", "default", "current", "meaning")
    for name, (default, meaning) in VARIABLES.items():
        current = "***" if "PASSWORD" in name or "KEY" in name else str(__import__("os").environ.get(name, default))
        table.add_row(name, default or '""', current or '""', meaning)
    console.print(table)


if __name__ == "__main__":
    app()
