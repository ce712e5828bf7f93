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
        except (WarehouseError, WarehouseStageFailed) as exc:
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
    if getattr(exc, "whole_message", False):  # a message written to be acted on, e.g. which hash key is which
        return text
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
    from lastmile.audiences.contact_rules import load_rules

    # The simulated platform holds out the share of at-risk customers the contact rules do.
    cfg = SimulationConfig(seed=seed, orders=orders, weeks=weeks, spending_health_holdout=load_rules().spending_health_holdout)
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
    orders: int = typer.Option(20_000, help="Orders demanded (placed ones are fewer: a front warehouse sells only what it stocked; telemetry, pickups, returns, reviews follow)."),
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


@app.command("respond")
@friendly
def respond_cmd(
    speed: float = typer.Option(60.0, help="Residents' time per wall-clock time: 1 answers in real time, 60 an hour per minute."),
    idle: Optional[float] = typer.Option(None, help="Stop after this many seconds with no send read and no response due "
                                          "(default: run until interrupted)."),
) -> None:
    """The simulator's live mode: the residents of the simulation in $LASTMILE_HOME read the journey
    sends on lastmile.actions (from `lastmile stream`) and answer on the event topics,
    with the probabilities of lastmile/simulator/responses.yml; each decision goes to truth/responses.jsonl."""
    import asyncio

    from lastmile.simulator.live_responses import respond_live
    from lastmile.simulator.responses import TRUTH_FILE, ResponseModel, Residents, load_rules
    from lastmile.streaming.broker import bootstrap

    cfg = settings()
    residents = Residents.from_simulation(cfg.home)
    if not len(residents):
        raise BadInput(f"no simulated residents in {cfg.home} (truth/orders.jsonl, events/order.jsonl); run `lastmile simulate` first")
    if speed <= 0:
        raise BadInput(f"--speed must be above 0, got {speed}")
    address = bootstrap(cfg)
    orders_of = None
    if cfg.clickhouse_url:  # a warehouse server: the person behind each OneID (the embedded one is the worker's)
        from lastmile.journeys.replay import orders_of_people
        from lastmile.warehouse import connect

        warehouse = connect(cfg)
        orders_of = lambda oneid: orders_of_people(warehouse, {oneid}).get(oneid, [])  # noqa: E731
    console.print(f"{len(residents):,} residents answering journey sends on lastmile.actions ({address}), "
                  f"{speed:g}x real time", highlight=False)
    report = asyncio.run(respond_live(address, ResponseModel(load_rules(), residents), cfg.home / "truth" / TRUTH_FILE,
                                      speed=speed, orders_of=orders_of, idle_s=idle))
    console.print(f"{report.read:,} sends read, {report.responded:,} answered, {report.produced:,} events produced",
                  highlight=False)


def _ingest(events: Path) -> Any:
    from pipelines import beam_ingest

    if not events.is_dir() or not any(events.glob("*.jsonl")):
        raise BadInput(f"no event files (*.jsonl) in {events}; run `lastmile simulate` first")
    _verify_hash_key()  # another key would split everyone: refuse before Beam starts
    return beam_ingest.run(events)


def _verify_hash_key() -> None:
    from lastmile.identity.key_fingerprint import verify_hash_key
    from lastmile.warehouse import connect

    verify_hash_key(connect(), settings())


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
            "identity_links": report.links, "profiles": report.profiles,
            "quarantined_by_reason": report.reasons, "seconds": round(report.seconds, 2), "events_per_s": round(report.events_per_s)}


def _print_ingest(report: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_ingest_dict(report)))
        return
    console.print(f"read {report.read:,} = valid {report.valid:,} + quarantined {report.quarantined:,}; "
                  f"written {report.written:,} in {report.seconds:.1f} s ({report.events_per_s:,.0f} events/s)")


RUN_STAGES = ("ingest", "cold-chain", "identity", "transform", "quality", "forecast", "features", "audiences", "train", "journeys")


@app.command("run")
@friendly
def run_cmd(
    seed: int = typer.Option(42, help="Simulation seed."),
    orders: int = typer.Option(20_000, help="Orders to simulate."),
    weeks: int = typer.Option(8, help="Weeks of activity."),
    through: str = typer.Option("journeys", help=f"Stop after this stage ({', '.join(RUN_STAGES)})."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """The main job: simulate → ingest (Beam, OneID) → cold chain (PyFlink) → OneID evaluation → dbt → quality gate → demand forecast and stocking plan → features → audiences → models → journeys (the spending-health cap needs the trained model).

    Re-running gives the same counts. A failed great-expectations checkpoint stops the run
    before any feature is published, and says which expectations failed.
    """
    from lastmile.summary import summarize
    from lastmile.warehouse import connect

    if through not in RUN_STAGES:
        raise BadInput(f"--through must be one of {', '.join(RUN_STAGES)}, not {through!r}")
    last = RUN_STAGES.index(through)
    wanted = lambda stage: RUN_STAGES.index(stage) <= last  # noqa: E731
    cfg = settings()
    out: dict[str, Any] = {}
    timings: dict[str, float] = {}
    start = time.perf_counter()
    _simulate(seed, orders, weeks, cfg.home)
    timings["simulate"] = round(time.perf_counter() - start, 2)
    with _stage("ingest (Apache Beam)", timings):
        report = _ingest(cfg.events_dir)
    out["ingest"] = _ingest_dict(report)
    telemetry = None
    if wanted("cold-chain"):
        with _stage("cold chain (PyFlink)", timings):
            telemetry = _telemetry(cfg.events_dir)
        out["cold_chain"] = _telemetry_dict(telemetry)
    quality = None
    if wanted("identity"):
        out["profiles"] = report.profiles  # OneIDs after the ingest's resolution; dbt builds the OneID 360 (dim_customer)
        with _stage("identity evaluation", timings):
            quality = _evaluate(cfg.home / "truth" / "identifiers.jsonl")
        out["identity"] = quality.as_dict()
    batch_detection = None
    if wanted("transform"):  # the alerts first: fct_batch_quality shows them
        from lastmile.batches.evaluate import alert_and_score
        from lastmile.batches.rules import load_rules as load_batch_rules

        with _stage("batch-quality alerts", timings):
            _, batch_detection = alert_and_score(connect(cfg), load_batch_rules(), cfg.home / "truth" / "bad_batches.jsonl")
        out["batch_quality"] = batch_detection.as_dict() if batch_detection else None
    if wanted("transform"):
        from lastmile.audiences.membership import ensure_tables
        from lastmile.transform import build

        with _stage("dbt build", timings):
            ensure_tables(connect(cfg))  # so the dbt source `audiences` exists and its views read it
            built = build(cfg, quiet=True)
        out["dbt"] = built.as_dict()
        if not built.success:
            for failure in built.failures:
                err.print(f"{failure.status} {failure.unique_id}: {failure.message}", highlight=False, soft_wrap=True)
            raise WarehouseStageFailed("dbt build failed; fix the models or data above (lastmile transform reruns it)")
    if wanted("quality"):
        from lastmile.quality import check

        with _stage("quality gate (great-expectations)", timings):
            gate = check(cfg)
        out["quality"] = {"success": gate.success, "evaluated": gate.evaluated, "failed": [str(f) for f in gate.failed]}
        if not gate.success:
            for failed in gate.failed:
                err.print(f"failed expectation: {failed}", highlight=False, soft_wrap=True)
            raise WarehouseStageFailed(f"quality gate failed ({len(gate.failed)} expectations): features were not published")
    if wanted("forecast"):  # before the features: the Feast view of the forecast reads what it writes
        from lastmile.forecast import run as run_forecast

        with _stage("demand forecast", timings):
            forecast_report = run_forecast(cfg, connect(cfg), backtest=True, replay=True, strict=False)
        out["forecast"] = forecast_report.as_dict()
        out["forecast_report"] = forecast_report.text()
        from lastmile.stocking.plan import make_plan

        try:
            with _stage("stocking plan", timings):
                out["stocking"] = make_plan(cfg, connect(cfg)).as_dict()
        except FileNotFoundError as exc:  # no forecast or reference data to plan from: say so, keep the rest
            out["stocking"] = {"note": str(exc)}
    if wanted("features"):
        from lastmile.features.store import apply, materialize
        from lastmile.models.consent import load_dietary_declarations, simulated_declarations

        with _stage("features (Feast)", timings):
            # Simulation only: the health-form declarations a real deployment would load
            # with `lastmile consent PATH`.
            load_dietary_declarations(cfg, simulated_declarations(cfg))
            apply(cfg, upstream=False)  # the feature models' inputs: the dbt stage just built them
            out["features"] = materialize(cfg).summary()
    if wanted("audiences"):
        with _stage("audiences", timings):
            out["audiences"] = _refresh_audiences(connect(cfg))
    if wanted("train"):
        from lastmile.models import recommend_command, train_models

        try:
            with _stage("train models", timings):
                trained = train_models(cfg, refresh_features=False)
        except ValueError as exc:  # too little history for a time split: say so, keep the rest
            out["models_report"] = f"models not trained: {exc}"
        else:
            out["models"] = trained.as_dict()
            out["models_report"] = trained.text()
            top = [o for (o,) in connect(cfg).rows("SELECT oneid FROM dim_customer ORDER BY orders DESC, oneid LIMIT 2")]
            out["examples"] = {oneid: json.loads(recommend_command(oneid, limit=5, cfg=cfg)) for oneid in top}
    if wanted("journeys"):  # the last week of loaded events, every send through the contact rules
        from lastmile.journeys.replay import main_job as run_journeys
        from lastmile.models.spending_effect import main_job as spending_cap_effect

        with _stage("journeys", timings):
            journeys_report = run_journeys(cfg, connect(cfg))
            cap_effect = spending_cap_effect(cfg, connect(cfg))  # impulse spend, capped arm vs holdout
        out["journeys"] = journeys_report.as_dict()
        out["spending_health_cap"] = cap_effect.as_dict() if cap_effect else None
        out["journeys_report"] = journeys_report.text() + (f"\n{cap_effect.text()}" if cap_effect else "")
    with _stage("summary", timings):
        summary = summarize(connect(cfg))
    out["warehouse"] = summary.as_dict()
    out["seconds"] = timings
    from lastmile.board.web import how_to_open

    report_path = cfg.home / "reports" / "report.html"
    out["report"] = str(report_path) if report_path.exists() else f"lastmile report writes {report_path}"
    out["board"] = how_to_open(cfg)
    if as_json:
        print(json.dumps(out, default=str, ensure_ascii=False))
        return
    _print_ingest(report, False)
    if telemetry is not None:
        _print_telemetry(telemetry)
    if quality is not None:
        console.print(f"OneID: {out['profiles']:,} profiles; against ground truth pairwise precision {quality.pairwise_precision:.4f}, "
                      f"recall {quality.pairwise_recall:.4f}; largest profile {quality.largest_cluster} identifiers "
                      f"({quality.largest_cluster_persons} real person{'s' if quality.largest_cluster_persons != 1 else ''})")
    if batch_detection is not None:
        console.print(batch_detection.text(), highlight=False)
    if "dbt" in out:
        console.print("dbt: " + built.summary())
    if "quality" in out:
        console.print(f"quality gate passed: {out['quality']['evaluated']} expectations")
    if "features" in out:
        console.print(f"features: {out['features']}")
    if "audiences" in out:
        _print_audiences(out["audiences"])
    if "journeys_report" in out:
        console.print(out["journeys_report"], highlight=False, soft_wrap=True)
    if "forecast_report" in out:
        console.print(out["forecast_report"], highlight=False, soft_wrap=True)
    if "stocking" in out:
        plan = out["stocking"]
        console.print(f"stocking plan: not made ({plan['note']})" if "note" in plan else
                      f"stocking plan for {plan['delivery_at'][:16]}: {plan['rows']:,} rows, {plan['order_units']:,} units to order, "
                      f"{plan['pooled_units']:,} from neighbours (lastmile stocking export)", highlight=False, soft_wrap=True)
    if "models_report" in out:
        console.print(out["models_report"].rstrip(), highlight=False)
        for oneid, recommendation in out.get("examples", {}).items():
            items = recommendation.get("items") or recommendation.get("recommendations") or []
            names = ", ".join(str(i.get("name") or i.get("sku")) for i in items[:5]) if isinstance(items, list) else str(items)
            console.print(f"example recommendations for {oneid}: {names}", highlight=False)
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
    console.print(f"weekly report: {out['report']}", highlight=False, soft_wrap=True)
    console.print(f"live board: {out['board']['url']} (start it with `{out['board']['start']}`; {out['board']['key']})",
                  highlight=False, soft_wrap=True)


def _refresh_audiences(warehouse: Any) -> list[dict[str, Any]]:
    """Refresh every audience of LASTMILE_AUDIENCES_DIR over the marts just built.

    One audience the warehouse refuses (a bad ``sql:`` predicate) is reported with its reason
    and the others are still refreshed: the marts and features are already published.
    """
    from lastmile.audiences import AudienceError, load_audiences, newest_event_time, refresh

    moment = newest_event_time(warehouse)
    results: list[dict[str, Any]] = []
    for audience in load_audiences(settings().audiences_path):
        try:
            # The job's events were loaded in one batch: a person qualified as of the data's
            # newest event, not when the job ran (journeys replay the data's own time).
            s = refresh(warehouse, audience, moment, moment).summary()
        except AudienceError as exc:
            results.append({"audience": audience.name, "version": audience.version, "error": _one_line(exc)})
            continue
        results.append({k: s[k] for k in ("audience", "version", "size", "entries", "exits")})
    return results


def _print_audiences(results: list[dict[str, Any]]) -> None:
    table = Table("audience", "size", "entries", "exits", title="audiences (published)")
    for r in results:
        if "error" in r:
            table.add_row(r["audience"], "not refreshed", "", r["error"])
        else:
            table.add_row(r["audience"], f"{r['size']:,}", f"{r['entries']:,}", f"{r['exits']:,}")
    console.print(table)


class WarehouseStageFailed(Exception):
    """A stage of the main job found the data or models wanting (exit code 1, no traceback)."""


def _telemetry(events: Path) -> Any:
    from pipelines import flink_telemetry

    if not (events / "locker_telemetry.jsonl").is_file() and not settings().flink_jobmanager:
        raise BadInput(f"no locker_telemetry.jsonl in {events}; run `lastmile simulate` first")
    return flink_telemetry.run(events)


def _telemetry_dict(report: Any) -> dict[str, Any]:
    keys = ("readings", "windows_1m", "windows_5m", "excursions", "silences", "incidents", "claims_auto_approved",
            "claims_matched", "claims_review", "late", "duplicates", "skipped")
    return {k: getattr(report, k) for k in keys} | {"seconds": round(report.seconds, 2), "jvm_start_s": round(report.jvm_start_s, 2)}


def _print_telemetry(report: Any) -> None:
    console.print(f"cold chain (PyFlink): {report.readings:,} readings → {report.excursions} excursions, "
                  f"{report.silences} silences, {report.incidents} incidents; claims auto-approved "
                  f"{report.claims_auto_approved}, matched {report.claims_matched}, for review {report.claims_review}; "
                  f"late readings kept aside {report.late:,}")


@app.command("telemetry")
@friendly
def telemetry_cmd(
    events: Optional[Path] = typer.Option(None, help="Directory holding locker_telemetry.jsonl (default $LASTMILE_HOME/events)."),
    as_json: bool = typer.Option(False, "--json", help="Print the counters as JSON."),
) -> None:
    """Cold chain on PyFlink: windows, excursions, silences, incidents and automatic claims (idempotent)."""
    with console.status("running the telemetry job on PyFlink…"):
        report = _telemetry(events or settings().events_dir)
    if as_json:
        print(json.dumps(_telemetry_dict(report)))
        return
    _print_telemetry(report)


@app.command("sql")
@friendly
def sql_cmd(
    query: str = typer.Argument(..., help="SQL to run against the warehouse."),
    fmt: str = typer.Option("table", "--format", "-f",
                            help="table, csv (with a header), tsv (no header, for shell variables) or json (one object per row)."),
) -> None:
    """Query the warehouse: a table on a terminal, CSV, TSV or JSON for programs."""
    from lastmile.warehouse import connect

    if fmt not in ("table", "csv", "tsv", "json"):
        raise BadInput(f"--format must be table, csv, tsv or json, not {fmt!r}")
    result = connect().query(query)
    names = list(result.column_names)
    if fmt == "tsv":
        # ClickHouse's TabSeparated escaping, so a value can never break the row apart.
        def tsv(value: object) -> str:
            if value is None:
                return "\\N"
            return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")

        for row in result.result_rows:
            sys.stdout.write("\t".join(tsv(v) for v in row) + "\n")
    elif fmt == "csv":
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


identity_app = typer.Typer(help="OneID: evaluate, audit and rebuild identity resolution.", no_args_is_help=True)
app.add_typer(identity_app, name="identity")


def _evaluate(truth: Path) -> Any:
    from lastmile.identity.evaluate import evaluate, load_truth
    from lastmile.privacy import Identifiers
    from lastmile.warehouse import connect

    if not truth.is_file():
        raise BadInput(f"no truth file at {truth}; `lastmile simulate` writes truth/identifiers.jsonl")
    cfg = settings()
    _verify_hash_key()
    return evaluate(connect(cfg), load_truth(truth, Identifiers(cfg)))


@identity_app.command("evaluate")
@friendly
def identity_evaluate_cmd(
    truth: Optional[Path] = typer.Option(None, help="Ground truth (default $LASTMILE_HOME/truth/identifiers.jsonl)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Pairwise precision and recall of the profiles against a ground truth."""
    result = _evaluate(truth or settings().home / "truth" / "identifiers.jsonl")
    if as_json:
        print(json.dumps(result.as_dict()))
        return
    table = Table("measure", "value", title="OneID against ground truth")
    for key, value in result.as_dict().items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else f"{value:,}")
    console.print(table)


@identity_app.command("audit")
@friendly
def identity_audit_cmd(
    top: int = typer.Option(10, help="How many of the most connected identifiers to list."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Profiles, cluster sizes, most connected and shared identifiers, refused links, last changes."""
    from lastmile.identity.audit import audit
    from lastmile.warehouse import connect

    result = audit(connect(), top=top)
    if as_json:
        print(json.dumps(result.as_dict(), default=str))
        return
    console.print(f"profiles {result.profiles:,} holding {result.identifiers:,} identifiers; identifiers per profile "
                  f"p50 {result.cluster_p50:g}, p99 {result.cluster_p99:g}, max {result.cluster_max}")
    console.print("shared identifiers: " + (", ".join(f"{k} {v:,}" for k, v in result.shared_identifiers.items()) or "none"))
    console.print("refused links: " + (", ".join(f"{k} {v:,}" for k, v in result.refused_by_reason.items()) or "none"))
    table = Table("type", "token", "links", "shared", title="most connected identifiers")
    for row in result.most_connected:
        table.add_row(str(row["id_type"]), str(row["token"]), f"{row['links']:,}", "yes" if row["shared"] else "")
    console.print(table)
    if result.last_run:
        run = result.last_run
        console.print(f"last run {run['run']} ({run['kind']}): {run['merges']} merges, {run['splits']} splits, "
                      f"{run['links_added']:,} new links")


@identity_app.command("rebuild")
@friendly
def identity_rebuild_cmd(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Re-resolve every kept link under the current rules (rules.toml); logs merges and splits."""
    from lastmile.identity.profiles import build_profiles
    from lastmile.identity.rules import Rules
    from lastmile.identity.store import rebuild
    from lastmile.privacy import Identifiers
    from lastmile.warehouse import connect, migrate

    cfg = settings()
    warehouse = connect(cfg)
    migrate(warehouse)
    _verify_hash_key()
    rules = Rules.load()
    outcome = rebuild(warehouse, rules, rules.blocked_tokens(Identifiers(cfg, rules).hasher))
    build_profiles(cfg)  # the OneID 360 follows the new OneIDs (when dbt has built it)
    figures = {"run": outcome.run, "profiles": outcome.report.profiles, "merges": outcome.merges, "splits": outcome.splits}
    if as_json:
        print(json.dumps(figures))
        return
    console.print(f"run {outcome.run}: {outcome.report.profiles:,} profiles; {outcome.merges} merges, {outcome.splits} splits "
                  "(see identity_changes to remap OneIDs)")


ID_TYPES = ("phone", "unionid", "openid", "member_card", "device_id")


@app.command("forget")
@friendly
def forget_cmd(
    phone: Optional[str] = typer.Option(None, help="Forget the person with this phone."),
    unionid: Optional[str] = typer.Option(None, help="... with this WeChat unionid."),
    openid: Optional[str] = typer.Option(None, help="... with this WeChat openid."),
    member_card: Optional[str] = typer.Option(None, help="... with this member card."),
    device_id: Optional[str] = typer.Option(None, help="... with this device id."),
    as_json: bool = typer.Option(False, "--json", help="Print what was touched as JSON."),
) -> None:
    """Remove a person from profiles, identity tables, marts and the feature store, and anonymise their events (PIPL, GDPR)."""
    from lastmile.identity.forget import forget
    from lastmile.privacy import Identifiers
    from lastmile.warehouse import connect, migrate

    given = {k: v for k, v in zip(ID_TYPES, (phone, unionid, openid, member_card, device_id)) if v}
    if len(given) != 1:
        raise BadInput("give exactly one identifier, e.g. --phone 13800138000")
    (id_type, value), = given.items()
    cfg = settings()
    warehouse = connect(cfg)
    migrate(warehouse)
    report = forget(warehouse, Identifiers(cfg), id_type, value)
    if report.oneid:
        # The online store is a copy outside the warehouse: it would go on serving their features.
        from lastmile.features.forget import OnlineForgetError, forget_online

        try:
            report.touched["online_store"] = forget_online(cfg, sorted(report.oneids))
        except OnlineForgetError as exc:
            err.print(f"[red]error:[/red] the warehouse has forgotten {report.oneid}, the online store has not: {exc}",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
    verification = _forget_files_and_verify(cfg, warehouse, report)
    checked = {"clean": verification.clean, "traces": verification.traces, "tables_searched": verification.searched_tables,
               "files_searched": verification.searched_files, "suppression_list_rows": verification.suppression_rows}
    if as_json:
        print(json.dumps({"oneid": report.oneid, "identifiers": report.identifiers, "touched": report.touched,
                          "verification": checked}))
    elif not report.anything:
        console.print(f"nothing found for that {id_type}: nothing to forget (already forgotten, or never seen)")
    else:
        console.print(f"forgot profile {report.oneid or '(none)'}: {report.identifiers} identifiers; rows touched: "
                      + ", ".join(f"{k} {v:,}" for k, v in report.touched.items() if v))
    for note in verification.notes:
        err.print(f"note: {note}", highlight=False, soft_wrap=True)
    if not verification.clean:
        for trace in verification.traces:
            err.print(f"trace left: {trace}", highlight=False, soft_wrap=True)
        err.print(f"[red]error:[/red] {len(verification.traces)} trace(s) of the person remain (listed above)",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    if not as_json:
        console.print(f"verified: no trace in {verification.searched_tables} tables and {verification.searched_files} files "
                      f"(the suppression list keeps {verification.suppression_rows} token(s) so replays cannot bring them back)")


def _forget_files_and_verify(cfg: Any, warehouse: Any, report: Any) -> Any:
    """The data directory's part of a forget request, then the verification pass over everything."""
    from lastmile.identity.forget_files import forget_in_files, spellings_in_files
    from lastmile.identity.forget_verify import needles, verify
    from lastmile.models.recommender import MODEL_NAME, forget_users, model_dir
    from lastmile.privacy import Identifiers

    identifiers = Identifiers(cfg)
    report.spellings |= spellings_in_files(cfg.home, identifiers, report.tokens)
    files = forget_in_files(cfg.home, identifiers, report.tokens, report.oneids,
                            set(needles(report.oneids, report.tokens, report.spellings)))
    report.touched["files"] = sum(files.values())
    report.touched["recommender_model"] = forget_users(model_dir(cfg, MODEL_NAME), report.oneids)
    return verify(warehouse, cfg.home, report.oneids, report.tokens, report.spellings, cfg.embedded)


key_app = typer.Typer(help="The hash key of direct identifiers: which key is in use, and the warehouse's.", no_args_is_help=True)
app.add_typer(key_app, name="key")


@key_app.command("show")
@friendly
def key_show_cmd(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Fingerprints (never the keys) of the configured hash key(s) and of the warehouse's key."""
    from lastmile.identity.key_fingerprint import fingerprint, stored_fingerprint
    from lastmile.warehouse import connect

    cfg = settings()
    out: dict[str, Any] = {}
    if cfg.hash_key:
        out["LASTMILE_HASH_KEY"] = fingerprint(cfg.hash_key.encode())
    if cfg.hash_key_file.is_file():
        out[str(cfg.hash_key_file)] = fingerprint(cfg.hash_key_file.read_text().strip().encode())
    stored = stored_fingerprint(connect(cfg))
    out["warehouse"] = {"fingerprint": stored[0], "first_loaded_from": stored[1]} if stored else None
    if as_json:
        print(json.dumps(out))
        return
    for name, value in out.items():
        console.print(f"{name}: {value if value is not None else '(no key recorded yet: the next ingest records it)'}",
                      highlight=False)


@key_app.command("rotate")
@friendly
def key_rotate_cmd(
    to_home: Path = typer.Option(..., "--to-home", help="Fresh data directory for the new key's warehouse (its hash.key, "
                                 "copies of the event, reference and truth files, and the embedded warehouse)."),
    events: Optional[Path] = typer.Option(None, help="Raw event files to rebuild from (default $LASTMILE_HOME/events)."),
    new_key_file: Optional[Path] = typer.Option(None, help="File holding the new key (e.g. from a secret store); "
                                                "default: the key in NEWDIR/hash.key, generated there if absent."),
    to_database: Optional[str] = typer.Option(None, help="With a ClickHouse server: the fresh database to build in."),
    drop_forgotten: bool = typer.Option(False, "--drop-forgotten", help="Null identifiers of forgotten people still "
                                        "found in the raw files (in the new directory's copies) instead of refusing."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
) -> None:
    """Change the hash key: ingest the raw events under a new key into a fresh warehouse (the old one is only read).

    Tokens cannot be turned back into values, so this is the only way to change keys without
    splitting every person. Idempotent: running it again re-ingests nothing twice.
    """
    from lastmile.identity import rotate

    cfg = settings()
    key = new_key_file.read_text().strip() if new_key_file else None
    if new_key_file and not key:
        raise BadInput(f"{new_key_file} is empty: it should hold the new key")
    target = rotate.target_settings(cfg, to_home, key, to_database)
    rotation = rotate.prepare(cfg, target, events or cfg.events_dir, drop_forgotten)
    with console.status(f"staging {target.home}…"):
        rotate.stage(rotation)
    with console.status("ingesting under the new key with Apache Beam…"):
        ingested = _ingest_elsewhere(target.events_dir, rotate.ingest_environment(target))
    result = rotate.finish(rotation)
    out = {"old": {"fingerprint": rotation.old_fingerprint, "warehouse": rotate.place(cfg),
                   "events": rotation.old_counts.total_events, "profiles": rotation.old_counts.profiles},
           "new": {"fingerprint": rotation.new_fingerprint, "warehouse": rotation.target_place,
                   "events": result.new_counts.total_events, "profiles": result.new_counts.profiles},
           "ingest": ingested, "staged_files": rotation.staged,
           "forgotten": {"suppressed_before": rotation.suppressed, "raw_lines_dropped": rotation.scan.lines,
                         "suppression_carried": rotation.suppression_carried, "resurrected": result.forgotten_resurrected},
           "reference_carried": result.reference_carried, "reference_dropped": result.reference_dropped,
           "missing_events": result.missing_events, "complete": result.complete, "next": rotate.next_steps(result)}
    if as_json:
        print(json.dumps(out))
    else:
        console.print(f"new warehouse {rotation.target_place} under key {rotation.new_fingerprint} (old key "
                      f"{rotation.old_fingerprint}, left as it was): {result.new_counts.total_events:,} events "
                      f"(old {rotation.old_counts.total_events:,}), {result.new_counts.profiles:,} profiles "
                      f"(old {rotation.old_counts.profiles:,})", highlight=False)
        if rotation.suppressed:
            console.print(f"suppression list: {rotation.suppressed:,} forgotten token(s) under the old key; "
                          f"{rotation.suppression_carried:,} carried to the new key (values still in raw files, "
                          f"{rotation.scan.lines:,} line(s) nulled in the copies). The others' values are gone from the "
                          "files, so their tokens cannot be made under the new key", highlight=False)
        for name, n in result.reference_dropped.items():
            if n:
                console.print(f"{name}: {n:,} row(s) not carried (their OneID has no single successor): declare them again",
                              highlight=False)
        console.print("next:\n" + "\n".join(f"  {i}. {step}" for i, step in enumerate(out["next"], 1)), highlight=False)
    if result.forgotten_resurrected:
        raise WarehouseStageFailed(f"{result.forgotten_resurrected} identifier(s) of forgotten people have a profile in the "
                                   f"new warehouse {rotation.target_place}: do not switch to it")
    if result.missing_events:
        err.print("[red]error:[/red] the new warehouse lacks events the old one holds (" + ", ".join(
            f"{t} {n:,}" for t, n in sorted(result.missing_events.items())) + "): they are in no raw file given (events "
            "that came through the stream only?). Add their files to --events and run again before switching",
            highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _ingest_elsewhere(events: Path, environment: dict[str, str]) -> dict[str, Any]:
    """`lastmile ingest` configured for another warehouse: the Beam steps read their settings
    from the environment, so it is set to the target's for the run and restored after."""
    import os

    from pipelines import beam_ingest

    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    try:
        return _ingest_dict(beam_ingest.run(events, cfg=settings()))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# -- the real-time path (lastmile/streaming; the worker's engine wiring is pipelines/faust_worker.py) --
# Every command reads the same settings as the rest of lastmile: LASTMILE_KAFKA_BOOTSTRAP
# empty means the development broker on 127.0.0.1:9092 (started by `lastmile broker`),
# host:port means real Kafka; nothing else changes.

warehouse_app = typer.Typer(help="Warehouse access for other processes.", no_args_is_help=True, add_completion=False)
app.add_typer(warehouse_app, name="warehouse")


@app.command("broker")
@friendly
def broker_cmd(
    port: int = typer.Option(9092, help="Port on 127.0.0.1 (the default is where LASTMILE_KAFKA_BOOTSTRAP='' looks)."),
) -> None:
    """Run the development Kafka-protocol broker (tansu, in-memory) on loopback until Ctrl-C.

    For laptops and CI only: topics live in memory and vanish when it stops. Production
    sets LASTMILE_KAFKA_BOOTSTRAP to a real Kafka cluster instead.
    """
    import signal

    from lastmile.streaming.broker import DevBroker

    def interrupt(*_: object) -> None:
        # Stopping happens below, once the wait for the broker process has let go of it: a
        # handler that waited for the process itself would deadlock with that wait.
        raise KeyboardInterrupt

    dev = DevBroker(port=port).start()
    typer.echo(f"development broker on {dev.bootstrap} (in-memory; Ctrl-C stops it). "
               f"Other commands find it with LASTMILE_KAFKA_BOOTSTRAP unset" + ("" if port == 9092 else f" or ={dev.bootstrap}"))
    signal.signal(signal.SIGTERM, interrupt)
    try:
        dev.wait()
    except KeyboardInterrupt:
        pass
    finally:
        dev.stop()


@app.command("produce")
@friendly
def produce_cmd(
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
@friendly
def stream_cmd(
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
    identity_waiting_seconds: float = typer.Option(0.5, help="...or this often while orders of a new neighbour wait "
                                                   "for a OneID, so their online features follow within seconds "
                                                   "(0: no hurry)."),
    profiles_seconds: float = typer.Option(300.0, help="Refresh the OneID 360 (dbt run of dim_customer and what it reads, once dbt built the warehouse; it holds the warehouse for the run, ~10 s) at most this often (0: never)."),
    replenish_seconds: float = typer.Option(60.0, help="Look for staples due today (the replenishment_due signal of "
                                            "the journeys) at most this often, after OneID runs (0: never)."),
    features: bool = typer.Option(True, "--features/--no-features",
                                  help="Push today's counters per customer to Feast's online store as orders arrive."),
    audiences: bool = typer.Option(True, "--audiences/--no-audiences",
                                   help="Evaluate the freshness: event audiences for the people each batch touched "
                                        "(after OneID runs) and send entries to lastmile.audience_changes."),
    journeys: bool = typer.Option(True, "--journeys/--no-journeys",
                                  help="Advance the journeys of LASTMILE_JOURNEYS_DIR (the cold-chain compensation, the "
                                       "welcome, the replenishment nudge, ...): note their events, make a pass after OneID "
                                       "runs, publish their sends (through the contact rules) to lastmile.actions. "
                                       "--no-journeys: no customer actions at all."),
    batch_alerts: bool = typer.Option(True, "--batch-alerts/--no-batch-alerts",
                                      help="Alert procurement on lastmile.actions when a batch's bad reviews and claims "
                                           "cross its SKU baseline (batch_quality.yml, docs/batch-quality.md)."),
    log_level: str = typer.Option("WARNING", help="faust/worker log level."),
) -> None:
    """Run the worker: topics → contracts → warehouse (+ quarantine) → actions → OneID → Feast, until SIGTERM.

    Each batch's offsets are committed right after it is written and handled; a killed
    worker resumes from the last commit and the warehouse's idempotent keys absorb the replay.
    """
    from pipelines.faust_worker import StreamOptions, run

    _verify_hash_key()  # as ingest: another key is refused before the broker or the worker is touched
    if serve_port:  # the users file is checked (or a first reader made) before the worker starts
        from lastmile.warehouse.auth import ensure_users, load_users

        cfg = settings()
        generated = ensure_users(cfg.warehouse_users_file, cfg.home / "warehouse_users.toml", cfg.home)
        load_users(cfg.warehouse_users_file)
        _echo_warehouse_users(generated, cfg.warehouse_users_file)
    run(settings(), StreamOptions(batch_rows=batch_rows, flush_s=flush_seconds, partitions=partitions,
                                  serve_port=serve_port, serve_readonly=not serve_writable, group_id=group, judges=judges,
                                  identity_every_s=identity_seconds,
                                  identity_waiting_every_s=identity_waiting_seconds, profiles_every_s=profiles_seconds,
                                  features=features, replenish_every_s=replenish_seconds, audiences=audiences,
                                  journeys=journeys, batch_alerts=batch_alerts),
        loglevel=log_level.upper())


@warehouse_app.command("serve")
@friendly
def warehouse_serve_cmd(
    port: int = typer.Option(8123, help="Port on the host below (8123 is ClickHouse's HTTP port)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on. There is no TLS: beyond loopback, put a TLS proxy in front."),
    readonly: bool = typer.Option(True, "--readonly/--writable", help="Read-only (the default): every user reads only. "
                                  "--writable: users with the writer role may also write (dbt, Feast)."),
) -> None:
    """Serve the embedded warehouse over ClickHouse's HTTP interface (for dbt, BI tools, Feast).

    chDB lets one process open the warehouse; this process becomes that one and others
    connect with clickhouse-connect to http://HOST:PORT with a user and password from the
    users file (LASTMILE_WAREHOUSE_USERS; `lastmile warehouse user` adds one). Not while
    ``lastmile stream`` runs: give the worker --serve-port instead. Production uses a
    ClickHouse server.
    """
    import signal

    from lastmile.warehouse import connect, migrate
    from lastmile.warehouse.http_server import WarehouseHTTPServer, is_loopback

    cfg = settings()
    migrate(connect(cfg))
    server = WarehouseHTTPServer.for_settings(cfg, host=host, port=port, readonly=readonly)
    _echo_warehouse_users(server.generated, cfg.warehouse_users_file)
    if not is_loopback(host):
        err.print(f"[yellow]warning:[/yellow] listening on {host} without TLS: passwords and results cross the network "
                  "in clear; put a TLS proxy in front", highlight=False, soft_wrap=True)
    typer.echo(f"serving {cfg.warehouse_dir} on {server.url} ({'read-only' if readonly else 'read-write for writers'}); Ctrl-C stops")
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _interrupt_on_sigterm(*_: object) -> None:
    raise KeyboardInterrupt


def _echo_warehouse_users(generated: Any, users_file: Path) -> None:
    """Say where a generated first user's password is (never the password itself)."""
    if generated is not None:
        typer.echo(f"no warehouse users were configured: created reader '{generated.name}' in {generated.users_file}; "
                   f"its password is in {generated.password_file} (readable by you only)")
    else:
        typer.echo(f"warehouse users: {users_file}")


@warehouse_app.command("user")
@friendly
def warehouse_user_cmd(
    name: str = typer.Argument(..., help="User name BI tools and dbt log in with."),
    role: str = typer.Option("reader", help="reader (read-only, with limits) or writer (DDL and DML), or a role of the file."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin instead of "
                                        "generating one."),
) -> None:
    """Add or replace a user of the warehouse's HTTP interface (password stored as sha256).

    A generated password goes to $LASTMILE_HOME/warehouse_NAME.password (mode 600) and is
    never printed. A running server reads the users file when it starts.
    """
    import os
    import secrets

    from lastmile.warehouse.auth import add_user

    cfg = settings()
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        add_user(cfg.warehouse_users_file, name, password, role)
        typer.echo(f"user '{name}' ({role}) saved in {cfg.warehouse_users_file}")
        return
    password = secrets.token_urlsafe(24)
    add_user(cfg.warehouse_users_file, name, password, role)
    target = cfg.home / f"warehouse_{name}.password"
    target.unlink(missing_ok=True)
    with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as out:
        out.write(password + "\n")
    typer.echo(f"user '{name}' ({role}) saved in {cfg.warehouse_users_file}; its password is in {target} "
               "(readable by you only)")


@app.command("transform")
@friendly
def transform_cmd(
    select: Optional[str] = typer.Option(None, "--select", "-s", help="dbt selector."),
    full_refresh: bool = typer.Option(False, "--full-refresh", help="Rebuild incremental facts."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    audiences: bool = typer.Option(True, "--audiences/--no-audiences",
                                   help="After a successful build, refresh the warehouse audiences and report their sizes."),
) -> None:
    """Load reference data and run `dbt build` (models, tests, unit tests) in-process; then
    refresh the warehouse audiences (a refresh that fails is reported, the build still succeeded)."""
    from lastmile.transform import build

    result = build(settings(), select=select, full_refresh=full_refresh, quiet=as_json)
    refreshed: list[dict[str, Any]] | None = None
    if result.success and audiences:
        from lastmile.audiences.freshness import refresh_after_build
        from lastmile.warehouse import connect

        refreshed = refresh_after_build(connect(settings()), settings().audiences_path)
    if as_json:
        print(json.dumps({**result.as_dict(), **({"audiences": refreshed} if refreshed is not None else {})}, ensure_ascii=False))
    else:
        console.print(result.summary())
        if refreshed:
            _print_audiences(refreshed)
    for failure in result.failures:
        err.print(f"{failure.status} {failure.unique_id}: {failure.message}", highlight=False, soft_wrap=True)
    if not result.success:
        raise typer.Exit(1)


@app.command("dbt-docs")
@friendly
def dbt_docs_cmd() -> None:
    """dbt docs generate --static; prints the HTML path."""
    from lastmile.transform import docs

    console.print(str(docs(settings())))


@app.command("check")
@friendly
def check_cmd(
    freshness_hours: float = typer.Option(48.0, help="Raw tables must have data this recent (event time vs newest event)."),
    layer: Optional[list[str]] = typer.Option(None, help="raw and/or mart (default both)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """great-expectations checkpoint over raw tables and marts; exit 1 on failure."""
    from lastmile.quality import check

    result = check(settings(), freshness_hours=freshness_hours, layers=tuple(layer or ("raw", "mart")))
    if as_json:
        print(json.dumps(result.as_dict(), ensure_ascii=False, default=str))
    else:
        console.print(f"{'passed' if result.success else 'FAILED'}: {result.evaluated} expectations; docs {result.data_docs}")
        for failed in result.failed:
            err.print(str(failed), highlight=False, soft_wrap=True)
        for missing in result.missing:
            err.print(f"missing: {missing}", highlight=False, soft_wrap=True)
    if not result.success:
        raise typer.Exit(1)


@app.command("report")
@friendly
def report_cmd(out: Optional[Path] = typer.Option(None, help="Default $LASTMILE_HOME/reports/report.html.")) -> None:
    """HTML report from the marts: one file with interactive charts that opens offline (no CDN)."""
    from lastmile.report import write_report

    console.print(str(write_report(settings(), out)))


features_app = typer.Typer(help="Feast feature store: apply definitions, materialize features.", no_args_is_help=True)
app.add_typer(features_app, name="features")


@features_app.command("apply")
@friendly
def features_apply_cmd() -> None:
    """Build the feature tables in the warehouse and register the Feast definitions."""
    from lastmile.features import apply_command

    console.print(apply_command(settings()))


@features_app.command("materialize")
@friendly
def features_materialize_cmd(
    full: bool = typer.Option(False, "--full", help="Rewrite everything (after an identity rebuild or late corrections)."),
    feast_path: bool = typer.Option(False, "--feast-path", help="Use Feast's own (slower) materialization."),
) -> None:
    """Copy the latest feature values into the online store (incremental by default)."""
    from lastmile.features import materialize_command

    console.print(materialize_command(settings(), full=full, feast_path=feast_path))


@features_app.command("env")
def features_env_cmd() -> None:
    """Print the environment `feast` needs to use this repository: eval "$(lastmile features env)"."""
    from lastmile.features import env_command

    print(env_command(settings()))


@app.command("train")
@friendly
def train_cmd(as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON.")) -> None:
    """Train the recommender and the spending-health model on point-in-time features; print metrics vs baselines."""
    from lastmile.models import train_models

    trained = train_models(settings())
    typer.echo(trained.text())
    if as_json:
        print(json.dumps(trained.as_dict(), default=str))


@app.command("forecast")
@friendly
def forecast_cmd(
    backtest: bool = typer.Option(False, "--backtest", help="Also backtest (rolling origin, 72 h, a day apart) against seasonal naive and AutoETS."),
    windows: Optional[int] = typer.Option(None, help="Backtest origins, one a day, ending with the last full 72 hours of data (default: two weeks' worth)."),
    replay: bool = typer.Option(False, "--replay", help="Replay the plan made from the backtest's forecasts against the default stocking policy (needs a simulation's true demand)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train the demand model and forecast every community × SKU for the next 72 hours (P50, P90) into demand_forecast."""
    from lastmile.forecast import run as run_forecast
    from lastmile.warehouse import connect

    from lastmile.forecast.backtest import DEFAULT_WINDOWS

    if windows is not None and windows < 1:
        raise BadInput("--windows must be at least 1")
    with console.status("forecasting demand…"):
        report = run_forecast(settings(), connect(settings()), backtest=backtest, windows=windows or DEFAULT_WINDOWS, replay=replay)
    if as_json:
        print(json.dumps(report.as_dict(), default=str, ensure_ascii=False))
    else:
        console.print(report.text(), highlight=False, soft_wrap=True)


@app.command("recommend")
@friendly
def recommend_cmd(
    oneid: str = typer.Argument(..., help="The customer's OneID (see `lastmile sql \"SELECT oneid FROM dim_customer LIMIT 5\"`)."),
    limit: int = typer.Option(10, help="How many recommendations."),
) -> None:
    """Recommendations for one customer, as marketing automation would get them (JSON)."""
    from lastmile.models import recommend_command

    print(recommend_command(oneid, limit=limit, cfg=settings()))


@app.command("serve")
@friendly
def serve_cmd(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
) -> None:
    """The HTTP API for marketing automation (OpenAPI docs at /docs)."""
    from lastmile.models import serve_command

    serve_command(host=host, port=port, cfg=settings())


api_key_app = typer.Typer(help="API keys of `lastmile serve`: create, list, revoke; read the audit log.", no_args_is_help=True)
app.add_typer(api_key_app, name="api-key")


@api_key_app.command("create")
@friendly
def api_key_create_cmd(
    name: str = typer.Option(..., help="Who uses the key (e.g. marketing)."),
    scopes: str = typer.Option(..., help="Comma-separated: marketing:read, marketing:write, health:read, board:read, admin."),
    rate_per_minute: Optional[int] = typer.Option(None, help="Requests a minute (default LASTMILE_API_RATE_PER_MINUTE)."),
) -> None:
    """Create an API key and print its secret once (only its sha256 is stored)."""
    from lastmile.api_auth import create_key, keys_path

    key, secret = create_key(settings(), name, scopes.split(","), rate_per_minute)
    err.print(f"key {key.id} ({key.name}, {', '.join(key.scopes)}, {key.rate_per_minute}/min) added to "
              f"{keys_path(settings())}; the secret below is shown only now:", highlight=False)
    print(secret)


@api_key_app.command("list")
@friendly
def api_key_list_cmd(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """The keys (ids, names, scopes, limits; never secrets)."""
    from lastmile.api_auth import list_keys

    keys = [{k: v for k, v in key.as_json().items() if k != "sha256"} for key in list_keys(settings())]
    if as_json:
        print(json.dumps(keys))
        return
    table = Table("id", "name", "scopes", "per minute", "created", "revoked")
    for k in keys:
        table.add_row(k["id"], k["name"], ", ".join(k["scopes"]), str(k["rate_per_minute"]), k["created_at"], k["revoked_at"] or "")
    console.print(table)


@api_key_app.command("revoke")
@friendly
def api_key_revoke_cmd(key_id: str = typer.Argument(..., help="The key's id (`lastmile api-key list`).")) -> None:
    """Revoke a key: the API refuses it from its next request on."""
    from lastmile.api_auth import revoke_key

    console.print(f"revoked key {revoke_key(settings(), key_id).id}")


@api_key_app.command("audit")
@friendly
def api_key_audit_cmd(
    oneid: Optional[str] = typer.Option(None, help="Only reads of this person's data."),
    key_id: Optional[str] = typer.Option(None, "--key", help="Only reads by this key id."),
) -> None:
    """Print the API's audit log (JSON lines): who read which personal fields of whom, when."""
    from lastmile.api_auth import read_audit

    for entry in read_audit(settings(), oneid=oneid, key_id=key_id):
        print(json.dumps(entry))


audience_app = typer.Typer(help="Audiences (audiences/*.yml): validate, list, preview and refresh their membership.", no_args_is_help=True)
app.add_typer(audience_app, name="audience")


def _audiences(names: Optional[list[str]] = None) -> list[Any]:
    from lastmile.audiences import load_audiences

    audiences = load_audiences(settings().audiences_path)
    if names:
        known = {a.name: a for a in audiences}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BadInput(f"no audience named {', '.join(unknown)} in {settings().audiences_path} (have: {', '.join(known) or 'none'})")
        return [known[n] for n in names]
    return audiences


def _as_of(text: Optional[str]) -> Any:
    if not text:
        return None
    from datetime import datetime, timezone

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(f"--as-of {text!r} is not an ISO 8601 time (e.g. 2026-05-01T00:00:00+08:00)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@audience_app.command("validate")
@friendly
def audience_validate_cmd(path: Optional[Path] = typer.Argument(None, help="An audience file or folder (default LASTMILE_AUDIENCES_DIR).")) -> None:
    """Check audience files: the first error names the file, the line and what was expected (exit 2)."""
    from lastmile.audiences import load_audience, load_audiences

    target = path or settings().audiences_path
    audiences = load_audiences(target) if target.is_dir() else [load_audience(target)]
    for audience in audiences:
        console.print(f"ok {audience.name} ({audience.kind}, version {audience.version}) {audience.path}", highlight=False, soft_wrap=True)


@audience_app.command("list")
@friendly
def audience_list_cmd(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """The audiences of LASTMILE_AUDIENCES_DIR: name, kind, version, owner, description."""
    rows = [{"name": a.name, "kind": a.kind, "version": a.version, "owner": a.owner, "description": a.description,
             "path": str(a.path)} for a in _audiences()]
    if as_json:
        print(json.dumps(rows, ensure_ascii=False))
        return
    table = Table("name", "kind", "version", "owner", "description")
    for r in rows:
        table.add_row(r["name"], r["kind"], r["version"], r["owner"], r["description"])
    console.print(table)


@audience_app.command("preview")
@friendly
def audience_preview_cmd(
    name: str = typer.Argument(..., help="The audience's name."),
    as_of: Optional[str] = typer.Option(None, help="'Now' of event rules (default: the newest event in the warehouse)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Size, entries and exits against the published membership, and a sample; publishes nothing."""
    from lastmile.audiences import evaluate
    from lastmile.warehouse import connect

    (audience,) = _audiences([name])
    summary = evaluate(connect(), audience, _as_of(as_of)).summary()
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
        return
    console.print(f"{summary['audience']} version {summary['version']}: {summary['size']:,} people "
                  f"(published {summary['published_size']:,}; +{summary['entries']:,} entries, -{summary['exits']:,} exits, "
                  f"{summary['restated']:,} staying under the new version)", highlight=False)
    for label, key in (("entries", "sample_entries"), ("exits", "sample_exits"), ("members", "sample_members")):
        if summary[key]:
            console.print(f"  sample {label}: {', '.join(summary[key])}", highlight=False)


@audience_app.command("refresh")
@friendly
def audience_refresh_cmd(
    name: Optional[list[str]] = typer.Argument(None, help="Audiences to refresh (default: all)."),
    as_of: Optional[str] = typer.Option(None, help="'Now' of event rules (default: the newest event in the warehouse)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    publish: bool = typer.Option(True, "--publish/--no-publish", help="Deliver the new entries and exits to the destinations of LASTMILE_AUDIENCE_DESTINATIONS."),
) -> None:
    """Evaluate and publish: entries and exits into audience_membership_changes, members into audience_members,
    then to the configured destinations (Kafka topic, webhooks)."""
    from lastmile.audiences import newest_event_time, refresh_all
    from lastmile.warehouse import connect

    audiences = _audiences(name)
    destinations = _audience_destinations(None) if publish else []  # a bad destinations file fails before any refresh
    warehouse = connect()
    moment = _as_of(as_of) or newest_event_time(warehouse)
    summaries = [r.summary() for r in refresh_all(warehouse, audiences, moment)]
    deliveries = _deliver_audience_changes(warehouse, destinations, "pending") if destinations else []
    if as_json:
        print(json.dumps(summaries, ensure_ascii=False))
        for d in deliveries:
            typer.echo(json.dumps(d, ensure_ascii=False), err=True)
        return
    table = Table("audience", "version", "size", "entries", "exits")
    for s in summaries:
        table.add_row(s["audience"], s["version"], f"{s['size']:,}", f"{s['entries']:,}", f"{s['exits']:,}")
    console.print(table)
    _print_deliveries(deliveries)


def _audience_destinations(names: Optional[list[str]]) -> list[Any]:
    from lastmile.audiences.destinations import load_destinations, select
    from lastmile.streaming.broker import bootstrap

    cfg = settings()
    return select(load_destinations(cfg.audience_destinations_path, bootstrap(cfg)), names)


def _deliver_audience_changes(warehouse: Any, destinations: list[Any], source: str, since: Any = None) -> list[dict[str, Any]]:
    from lastmile.audiences.destinations import deliver

    return [r.summary() for r in deliver(warehouse, destinations, source=source, since=since)]


def _print_deliveries(deliveries: list[dict[str, Any]]) -> None:
    if not deliveries:
        return
    table = Table("destination", "delivered", "dead letters", "attempts", "seconds", "last error")
    for d in deliveries:
        table.add_row(d["destination"], f"{d['delivered']:,}", f"{d['dead_lettered']:,}", f"{d['attempts']:,}",
                      f"{d['seconds']:.2f}", d["last_error"] or "")
    console.print(table)


@audience_app.command("publish")
@friendly
def audience_publish_cmd(
    destination: Optional[list[str]] = typer.Option(None, "--destination", help="Destinations to deliver to (default: all configured)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Deliver the entries and exits each destination has not received (the outbox: never twice)."""
    from lastmile.warehouse import connect

    deliveries = _deliver_audience_changes(connect(), _audience_destinations(destination), "pending")
    if as_json:
        print(json.dumps(deliveries, ensure_ascii=False))
        return
    _print_deliveries(deliveries)


@audience_app.command("replay")
@friendly
def audience_replay_cmd(
    destination: str = typer.Option(..., "--destination", help="The destination to send again."),
    dead_letters: bool = typer.Option(False, "--dead-letters", help="Only the events it refused (audience_dead_letters) and has not received since."),
    since: Optional[str] = typer.Option(None, help="Without --dead-letters: send the changes from this time on (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Send a destination its dead letters, or its whole history again (receivers deduplicate by event id)."""
    from lastmile.warehouse import connect

    chosen = _audience_destinations([destination])
    deliveries = _deliver_audience_changes(connect(), chosen, "dead_letters" if dead_letters else "history", _as_of(since))
    if as_json:
        print(json.dumps(deliveries, ensure_ascii=False))
        return
    _print_deliveries(deliveries)


@audience_app.command("export")
@friendly
def audience_export_cmd(
    name: str = typer.Argument(..., help="The audience's name."),
    fmt: str = typer.Option("csv", "--format", help="csv (with a header) or jsonl."),
    out: Optional[Path] = typer.Option(None, "--out", help="File to write (default: standard output)."),
    leader: Optional[str] = typer.Option(None, "--leader", help="A group leader's file: only their building's neighbours "
                                         "who consented, each as a keyed hash (see docs/audiences.md)."),
    purpose: Optional[list[str]] = typer.Option(None, "--purpose", help="With --leader: consent the file needs, "
                                                "repeatable (default: marketing)."),
    channel: str = typer.Option("wecom_leader", help="With --leader: the channel the leader contacts people on."),
    identifiers: str = typer.Option("hash", help="With --leader: hash (a keyed hash per leader) or oneid (only where "
                                    "contact_rules.yml exports.clear_identifiers and the person's consent allow)."),
) -> None:
    """The published members (oneid, entered_at, version), ordered by OneID; run `refresh` first.
    With --leader: that leader's consented neighbours (id, id_kind, building_id, entered_at, version)."""
    from functools import partial

    from lastmile.audiences.reads import write_members
    from lastmile.warehouse import connect

    if fmt not in ("csv", "jsonl"):
        raise BadInput(f"--format must be csv or jsonl, not {fmt!r}")
    (audience,) = _audiences([name])
    write = partial(write_members, connect(), audience.name, fmt)
    if leader is not None:
        from lastmile.audiences.contact_rules import load_rules
        from lastmile.audiences.exports import LeaderExport, write_leader_export

        export = LeaderExport(audience.name, leader, tuple(purpose or ("marketing",)), channel, identifiers)
        write = partial(write_leader_export, connect(), export, settings().hash_key_bytes(), load_rules(), fmt)
    elif purpose or identifiers != "hash" or channel != "wecom_leader":
        raise BadInput("--purpose, --channel and --identifiers apply to a leader's file: add --leader")
    if out is None:
        write(sys.stdout)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="") as stream:
        written = write(stream)
    err.print(f"{written:,} {'people' if leader else 'members'} of {audience.name} written to {out}", highlight=False, soft_wrap=True)


leader_app = typer.Typer(help="Group leaders (团长): the daily brief for their building.", no_args_is_help=True)
app.add_typer(leader_app, name="leader")


@leader_app.command("brief")
@friendly
def leader_brief_cmd(
    leader_id: str = typer.Argument(..., help="The leader's id (ref_leaders.leader_id)."),
    fmt: str = typer.Option("json", "--format", help="json, csv or md (Markdown for WeCom)."),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Business day of the brief, YYYY-MM-DD (default: today, "
                                        "or the day after the newest order)."),
) -> None:
    """The leader's daily brief: consenting neighbours due to reorder, new, gone quiet; lockers, claims, sales (docs/leaders.md)."""
    from datetime import date

    from lastmile.leaders.brief import BriefUnavailable, UnknownLeader, assemble
    from lastmile.leaders.export import present, to_csv, to_markdown
    from lastmile.warehouse import connect

    if fmt not in ("json", "csv", "md"):
        raise BadInput(f"--format {fmt!r}: expected json, csv or md")
    try:
        day = date.fromisoformat(as_of) if as_of else None
    except ValueError:
        raise BadInput(f"--as-of {as_of!r} is not a day like 2026-11-20") from None
    try:
        brief = present(assemble(connect(), leader_id, day))
    except (UnknownLeader, BriefUnavailable) as exc:
        raise BadInput(str(exc).strip("'\"")) from None
    if fmt == "json":
        print(json.dumps(brief, ensure_ascii=False, indent=2))
    else:
        sys.stdout.write(to_csv(brief) if fmt == "csv" else to_markdown(brief))


@app.command("consent")
@friendly
def consent_cmd(path: Path = typer.Argument(..., help="JSONL of dietary-need declarations (oneid, dietary_need, declared_at, source).")) -> None:
    """Load declared dietary needs (the medical exception to the spending-health cap)."""
    from lastmile.models.consent import load_dietary_declarations

    if not path.is_file():
        raise BadInput(f"no declarations file at {path}")
    console.print(f"loaded {load_dietary_declarations(settings(), path):,} declarations")


@app.command("config")
def config_cmd() -> None:
    """Show the configuration variables, their defaults and current values."""
    table = Table("variable", "default", "current", "meaning")
    for name, (default, meaning) in VARIABLES.items():
        current = "***" if "PASSWORD" in name or "KEY" in name else str(__import__("os").environ.get(name, default))
        table.add_row(name, default or '""', current or '""', meaning)
    console.print(table)


# `lastmile stocking plan|export`, defined beside the stocking code with this module's error handling.
from lastmile.cli_stocking import register as _register_stocking  # noqa: E402

_register_stocking(app, friendly, BadInput, console, err)


# `lastmile journey list|validate|stats|tick`, defined beside the journeys.
from lastmile.cli_journeys import register as _register_journeys  # noqa: E402

_register_journeys(app, friendly, BadInput, console, err)

if __name__ == "__main__":
    app()
