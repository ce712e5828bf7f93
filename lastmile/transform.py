"""Run the dbt project (dbt/) in-process: reference data, ``dbt build``, ``dbt docs``.

Why in-process (dbtRunner) rather than a ``dbt`` subprocess: with the embedded warehouse,
chDB lets one process open ``$LASTMILE_HOME/warehouse``. A ``lastmile`` command that has
already opened it (to ingest, to load reference data, to check quality) must run dbt
itself; a subprocess would be locked out. Inside one process, dbt's connections and
lastmile's client share the engine (see :mod:`lastmile.dbt_chdb`).

Reference data (communities, buildings, lockers, merchants, SKUs, ...) comes from the data
directory the simulator or the business writes (``$LASTMILE_HOME/reference/*.jsonl``), not
from committed seeds: it belongs to the data set, and a seed copy of one simulation would
silently disagree with the next. :func:`load_reference` loads each file into a ``ref_*``
table with a declared structure, replacing the table atomically.

The dbt artefacts (``target/``, logs) go under ``$LASTMILE_HOME/dbt`` so that two data
directories never share a partial-parse cache or a manifest.

Unit tests (``dbt/models/marts/indices/_indices__unit_tests.yml``) check the index formulas on
static, hand-made inputs: their outcome depends on the project's SQL, never on the data. dbt's
documentation recommends running them in development and CI only and excluding them from
production builds (``--exclude-resource-type unit_test``, docs.getdbt.com/docs/build/unit-tests,
"When to run unit tests"). :func:`build` therefore runs them whenever they could say something
new: on a full refresh, and whenever the project (models, macros, tests, ``dbt_project.yml``) differs
from the one they last passed on in this data directory (a first build, an edited model, an
upgrade of lastmile); an incremental build of an unchanged project leaves them out. ``make test``
and CI build fresh warehouses, so they always run them; ``unit_tests=True`` forces them.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lastmile.config import Settings, settings as current_settings

#: The dbt project shipped with lastmile.
DBT_DIR = Path(__file__).resolve().parent.parent / "dbt"

#: ref_<name> table -> (ClickHouse structure, sorting key). The structure is the contract of
#: the reference files; a file with an unknown field fails the load instead of being guessed.
REFERENCE_TABLES: dict[str, tuple[str, str]] = {
    "communities": ("community_id String, name String, city String, district String, alliance_id Nullable(String), "
                    "building_count Int64, locker_count Int64", "community_id"),
    "buildings": ("building_id String, community_id String, name String, leader_id String, households Int64, "
                  "residents Int64, home_locker_id String, box_id String", "building_id"),
    "leaders": ("leader_id String, community_id String, building_id String, person_id String, retired_teacher Bool, "
                "neighbours Int64", "leader_id"),
    "lockers": ("locker_id String, community_id String, has_battery Bool, "
                "compartments Array(Tuple(compartment_id String, product_class String))", "locker_id"),
    "recycling_boxes": ("box_id String, community_id String, location String, accepts Array(String)", "box_id"),
    "merchants": ("merchant_id String, name String, category_focus String, alliance_id Nullable(String)", "merchant_id"),
    "skus": ("sku String, name String, name_en String, category String, origin String, unit_price Float64, "
             "product_class String, is_impulse Bool, is_healthy Bool, shelf_life_days Float64, unit_cost Float64, "
             "available_from Nullable(Date), available_until Nullable(Date), launched_on Nullable(Date)", "sku"),
    "calendar": ("date Date, holiday Nullable(String), is_holiday Bool, is_workday Bool, weather String", "date"),
    "promotions": ("promotion_id String, kind String, sku Nullable(String), community_id Nullable(String), "
                   "starts_at String, ends_at String, discount Float64", "promotion_id"),
    "front_warehouses": ("warehouse_id String, community_id String, lat Float64, lon Float64", "warehouse_id"),
    "community_distances": ("community_id String, neighbour_id String, km Float64", "(community_id, neighbour_id)"),
}


@dataclass
class NodeResult:
    """One dbt node that did not succeed."""

    unique_id: str
    status: str
    message: str


@dataclass
class BuildResult:
    """What a dbt invocation did: overall success, counts per status, and the failures."""

    command: str
    success: bool
    seconds: float
    statuses: dict[str, int] = field(default_factory=dict)
    failures: list[NodeResult] = field(default_factory=list)
    reference_rows: dict[str, int] = field(default_factory=dict)
    #: unit tests in the invocation (0 when the build left them out, see :func:`build`), and how many passed.
    unit_tests: int = 0
    unit_tests_passed: int = 0
    #: unique ids of the nodes the invocation ran (models, tests, ...), in dbt's result order.
    nodes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"command": self.command, "success": self.success, "seconds": round(self.seconds, 2),
                "statuses": self.statuses, "reference_rows": self.reference_rows, "unit_tests": self.unit_tests,
                "failures": [vars(f) for f in self.failures]}

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        return f"dbt {self.command}: {'ok' if self.success else 'FAILED'} in {self.seconds:.1f} s ({counts})"


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def load_reference(cfg: Settings | None = None, reference_dir: Path | None = None) -> dict[str, int]:
    """Load ``reference/*.jsonl`` into ``ref_*`` tables; returns rows per table.

    ``CREATE OR REPLACE ... AS SELECT`` builds the new table and swaps it in one step, so a
    reader (BI, a concurrent dbt run on a server) never sees a half-loaded table. The data
    travels inside the statement, which works the same on chDB and on a server (the server
    cannot read this machine's files); reference files are small (thousands of rows).
    """
    from lastmile.warehouse import connect

    cfg = cfg or current_settings()
    folder = reference_dir or cfg.home / "reference"
    missing = [n for n in REFERENCE_TABLES if not (folder / f"{n}.jsonl").exists()]
    if missing:
        raise FileNotFoundError(f"reference data missing in {folder}: {', '.join(f'{m}.jsonl' for m in missing)}"
                                " (run `lastmile simulate` or publish the master data there)")
    warehouse = connect(cfg)
    loaded: dict[str, int] = {}
    for name, (structure, key) in REFERENCE_TABLES.items():
        data = (folder / f"{name}.jsonl").read_text(encoding="utf-8").strip()
        warehouse.command(
            f"CREATE OR REPLACE TABLE ref_{name} ENGINE = MergeTree ORDER BY {key} "
            f"COMMENT {_sql_string(f'Reference data loaded from {name}.jsonl by lastmile.transform.load_reference.')} "
            f"AS SELECT * FROM format(JSONEachRow, {_sql_string(structure)}, {_sql_string(data)})",
            settings={"input_format_skip_unknown_fields": 0},
        )
        loaded[f"ref_{name}"] = int(warehouse.scalar(f"SELECT count() FROM ref_{name}"))
    return loaded


@contextmanager
def _environment(cfg: Settings) -> Iterator[None]:
    """Expose ``cfg`` to dbt's profile (which reads the LASTMILE_* variables) for one run."""
    values = {
        "LASTMILE_HOME": str(cfg.home),
        "LASTMILE_CLICKHOUSE_URL": cfg.clickhouse_url,
        "LASTMILE_CLICKHOUSE_USER": cfg.clickhouse_user,
        "LASTMILE_CLICKHOUSE_PASSWORD": cfg.clickhouse_password,
        "LASTMILE_CLICKHOUSE_DATABASE": cfg.clickhouse_database,
        "LASTMILE_BUSINESS_TZ": cfg.business_tz,
        "DO_NOT_TRACK": os.environ.get("DO_NOT_TRACK", "1"),
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: dbt commands that take ``--vars``.
_TAKES_VARS = frozenset({"build", "run", "test", "compile", "parse", "docs", "ls", "list", "seed", "snapshot", "show",
                         "source", "run-operation", "retry", "clone"})


def _with_settings_vars(cfg: Settings, command: Sequence[str]) -> list[str]:
    """``command`` with lastmile's settings among dbt's ``--vars`` (``business_tz``), merged
    into any ``--vars`` the caller gave (theirs win): dbt cuts days, weeks and months in the
    same zone as every Python reader of :func:`lastmile.config.settings`."""
    import json

    import yaml

    args = list(command)
    if not args or args[0] not in _TAKES_VARS:
        return args
    given: dict[str, Any] = {}
    if "--vars" in args:
        at = args.index("--vars")
        given = yaml.safe_load(args[at + 1]) or {}
        del args[at:at + 2]
    from lastmile.batches.rules import load_rules as batch_rules

    # batch_quality: what a bad review or claim is, from batch_quality.yml (the alerts' definition)
    settings_vars = {"business_tz": cfg.business_tz, "batch_quality": batch_rules().as_dbt_vars()}
    return [*args, "--vars", json.dumps({**settings_vars, **given})]


def _dbt_args(cfg: Settings, command: Sequence[str], quiet: bool = False) -> list[str]:
    work = cfg.home / "dbt"
    return [*(["--quiet"] if quiet else []), *_with_settings_vars(cfg, command), "--project-dir", str(DBT_DIR),
            "--profiles-dir", str(DBT_DIR), "--target-path", str(work / "target"), "--log-path", str(work / "logs")]


def invoke(cfg: Settings | None, command: Sequence[str], quiet: bool = False) -> tuple[BuildResult, Any]:
    """Run any dbt command in this process; returns the summary and dbt's own result.

    ``quiet`` keeps dbt's log off stdout (errors still show), for ``--json`` output."""
    from dbt.cli.main import dbtRunner

    from lastmile import dbt_chdb

    cfg = cfg or current_settings()
    if cfg.embedded:
        dbt_chdb.patch()
    started = time.perf_counter()
    with _environment(cfg):
        outcome = dbtRunner().invoke(_dbt_args(cfg, command, quiet))
    seconds = time.perf_counter() - started
    statuses: Counter[str] = Counter()
    failures: list[NodeResult] = []
    units = units_passed = 0
    results = getattr(outcome.result, "results", None) or []
    for r in results:
        status = str(getattr(r.status, "value", r.status))
        statuses[status] += 1
        if r.node.unique_id.startswith("unit_test."):
            units += 1
            units_passed += status == "pass"
        if status in ("error", "fail", "runtime error"):
            failures.append(NodeResult(r.node.unique_id, status, " ".join(str(r.message or "").split())[:500]))
    if outcome.exception is not None:
        failures.append(NodeResult("dbt", "exception", " ".join(str(outcome.exception).split())[:500]))
    return BuildResult(" ".join(command), bool(outcome.success), seconds, dict(statuses), failures, unit_tests=units,
                       unit_tests_passed=units_passed, nodes=[r.node.unique_id for r in results]), outcome


def project_fingerprint() -> str:
    """Hash of everything that decides what a unit test sees: the dbt project's models, macros,
    tests, docs and project file (not ``target/`` or logs), and the versions of dbt, the adapter
    and the engine that run them."""
    from importlib import metadata

    digest = hashlib.sha256()
    for package in ("dbt-core", "dbt-clickhouse", "chdb", "clickhouse-connect"):
        try:
            digest.update(f"{package}=={metadata.version(package)}\0".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{package} absent\0".encode())
    paths = [DBT_DIR / "dbt_project.yml", *sorted(p for folder in ("models", "macros", "tests", "docs")
                                                for p in (DBT_DIR / folder).rglob("*") if p.is_file())]
    for path in paths:
        if path.exists():
            digest.update(str(path.relative_to(DBT_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _unit_tests_stamp(cfg: Settings) -> Path:
    """Where a data directory records the project fingerprint its unit tests last passed on."""
    return cfg.home / "dbt" / "unit_tests_passed"


def unit_tests_due(cfg: Settings, full_refresh: bool = False) -> bool:
    """Would :func:`build` run the unit tests? On a full refresh, and whenever the project is not
    the one they last passed on in this data directory (first build, edited SQL, upgrade)."""
    stamp = _unit_tests_stamp(cfg)
    return full_refresh or not stamp.exists() or stamp.read_text().strip() != project_fingerprint()


#: Optional sources: a staging view over one reads an empty relation until the table exists,
#: so the view has to be created again once it appears (see :func:`views_state`).
OPTIONAL_SOURCES = ("cold_chain_incidents", "claim_decisions", "recommendation_events")
#: What an incremental build of an unchanged project selects: everything but the view models
#: (their data tests included: selected by resource type, not through the views).
ALL_BUT_VIEWS = ("resource_type:test", "config.materialized:table", "config.materialized:incremental")


def _views_stamp(cfg: Settings) -> Path:
    """Where a data directory records what its views were last created from."""
    return cfg.home / "dbt" / "views_built"


def views_state(cfg: Settings) -> str:
    """What the warehouse's views are created from: the project (:func:`project_fingerprint`),
    the database, which optional sources exist, and which views exist (one dropped by hand, or
    missing after a failed build, changes it)."""
    from lastmile.warehouse import connect

    tables = connect(cfg).rows(
        "SELECT name, engine FROM system.tables WHERE database = {db:String} "
        "AND (engine = 'View' OR name IN {optional:Array(String)}) ORDER BY name",
        {"db": cfg.clickhouse_database, "optional": list(OPTIONAL_SOURCES)})
    digest = hashlib.sha256(f"{project_fingerprint()}\0{cfg.clickhouse_database}\0{tables!r}".encode())
    return digest.hexdigest()


def views_current(cfg: Settings) -> bool:
    """Are the views the ones this project would create? True when a build created them from
    the same project, database and optional sources, and none went missing since."""
    stamp = _views_stamp(cfg)
    return stamp.exists() and stamp.read_text().strip() == views_state(cfg)


def build(cfg: Settings | None = None, select: str | Sequence[str] | None = None, full_refresh: bool = False,
          exclude: str | Sequence[str] | None = None, load_reference_data: bool = True, quiet: bool = False,
          unit_tests: bool | None = None) -> BuildResult:
    """Load reference data, then ``dbt build`` (models, data tests and, when due, unit tests) in this process.

    ``full_refresh`` rebuilds the incremental models from scratch: needed after a formula
    change or a restore of raw rows with an older ``_ingested_at`` (dbt/README.md, "Incremental
    facts and full refresh"); late events need none, whatever their event time.

    ``unit_tests``: ``None`` runs them when :func:`unit_tests_due` (full refresh, or a project
    they have not passed on here yet) and leaves them out of an incremental build of an
    unchanged project, as dbt recommends for production; ``True`` / ``False`` force the choice.
    A build that ran every unit test of the project and saw them all pass records the project's
    fingerprint for this data directory.

    The view models are created again only when they may have changed (:func:`views_current`):
    a view is a definition, and re-creating twenty unchanged ones cost a statement and dbt's
    bookkeeping each, at the start of the build where everything waits for them (~0.5 s of an
    incremental build). Their data tests run either way.
    """
    cfg = cfg or current_settings()
    loaded = load_reference(cfg) if load_reference_data else {}
    run_units = unit_tests_due(cfg, full_refresh) if unit_tests is None else unit_tests
    fingerprint = project_fingerprint()
    command = ["build"]
    for flag, value in (("--select", select), ("--exclude", exclude)):
        if value:
            command += [flag, *([value] if isinstance(value, str) else list(value))]
    if full_refresh:
        command.append("--full-refresh")
    if not run_units:
        command += ["--exclude-resource-type", "unit_test"]
    whole = not select and not exclude
    skip_views = whole and not full_refresh and not run_units and views_current(cfg)
    if skip_views:
        # an explicit selection replaces the default selector (selectors.yml): keep its exclusion
        command += ["--select", *ALL_BUT_VIEWS, "--exclude", "tag:features"]
    result, _ = invoke(cfg, command, quiet)
    result.reference_rows = loaded
    if whole and not skip_views:
        if result.success:
            _views_stamp(cfg).parent.mkdir(parents=True, exist_ok=True)
            _views_stamp(cfg).write_text(views_state(cfg) + "\n")
        else:
            _views_stamp(cfg).unlink(missing_ok=True)
    stamp = _unit_tests_stamp(cfg)
    if any(f.unique_id.startswith("unit_test.") for f in result.failures):
        stamp.unlink(missing_ok=True)  # the next build runs them again, whatever it is
    elif run_units and not select and not exclude and 0 < result.unit_tests == result.unit_tests_passed:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint + "\n")
    return result


def run(cfg: Settings | None = None, select: str | Sequence[str] | None = None, full_refresh: bool = False,
        quiet: bool = False, load_reference_data: bool = True) -> BuildResult:
    """Load reference data (unless ``load_reference_data`` is off: the tables already loaded are
    used), then ``dbt run`` (models only, no tests): for jobs that only need fresh marts and gate
    them afterwards with :func:`lastmile.quality.check`."""
    cfg = cfg or current_settings()
    loaded = load_reference(cfg) if load_reference_data else {}
    command = ["run"]
    if select:
        command += ["--select", *([select] if isinstance(select, str) else list(select))]
    if full_refresh:
        command.append("--full-refresh")
    result, _ = invoke(cfg, command, quiet)
    result.reference_rows = loaded
    return result


def docs(cfg: Settings | None = None, quiet: bool = False) -> Path:
    """``dbt docs generate --static``: one self-contained HTML file; returns its path."""
    cfg = cfg or current_settings()
    # every model, the feature histories too (the default selector, selectors.yml, leaves them out)
    result, _ = invoke(cfg, ["docs", "generate", "--static", "--select", "fqn:*"], quiet)
    if not result.success:
        raise RuntimeError(result.summary() + "; " + "; ".join(f"{f.unique_id}: {f.message}" for f in result.failures))
    path = cfg.home / "dbt" / "target" / "static_index.html"
    if not path.exists():
        raise RuntimeError(f"dbt docs generate succeeded but wrote no {path}")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lastmile.transform [build|docs|load-reference] [--full-refresh] [--select S]``."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m lastmile.transform", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["build", "docs", "load-reference"])
    parser.add_argument("--select", "-s", default=None)
    parser.add_argument("--exclude", default=None)
    parser.add_argument("--full-refresh", action="store_true")
    parser.add_argument("--unit-tests", action=argparse.BooleanOptionalAction, default=None,
                        help="run (or leave out) dbt's unit tests; by default only when due (full refresh, changed project)")
    args = parser.parse_args(argv)
    if args.action == "load-reference":
        print(json.dumps(load_reference()))
        return 0
    if args.action == "docs":
        print(docs())
        return 0
    result = build(select=args.select, exclude=args.exclude, full_refresh=args.full_refresh, unit_tests=args.unit_tests)
    print(json.dumps(result.as_dict(), ensure_ascii=False))
    return 0 if result.success else 1


if __name__ == "__main__":
    raise SystemExit(main())
