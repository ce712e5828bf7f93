"""The operations board's panels against a small warehouse: each figure equals the SQL that
defines it (written here independently of the board's own statements) and the hand-made
day of :mod:`tests.board_data`; the routes' authentication, cookie and OpenAPI schema."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from lastmile.board.clock import BadAsOf, parse_as_of, window_for
from lastmile.board.panels import PANELS, compute_board, compute_panel, plain_statements, warehouse_tables
from lastmile.board.source import BoardSource, BoardUnavailable
from lastmile.config import Settings, settings
from lastmile.warehouse import close_all, connect
from tests.board_data import DAY, BoardScenario, build_board_warehouse
from tests.conftest import SERVER_URL

TZ = "Asia/Shanghai"
NOW = datetime(2026, 11, 20, 4, 0, tzinfo=timezone.utc)  # 12:00 in Shanghai: the scenario's newest reading


@pytest.fixture(scope="module", params=["embedded", "server"])
def scenario(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoardScenario]:
    database = ""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LASTMILE_HOME", str(tmp_path_factory.mktemp("board") / "home"))
        mp.setenv("LASTMILE_HASH_KEY", "test-key-not-secret")
        mp.setenv("LASTMILE_BUSINESS_TZ", TZ)
        if request.param == "server":
            if not SERVER_URL:
                pytest.skip("no ClickHouse server: set LASTMILE_TEST_CLICKHOUSE_URL=http://host:8123 to run this variant")
            database = f"lastmile_test_{uuid.uuid4().hex[:12]}"
            mp.setenv("LASTMILE_CLICKHOUSE_URL", SERVER_URL)
            mp.setenv("LASTMILE_CLICKHOUSE_DATABASE", database)
        else:
            mp.delenv("LASTMILE_CLICKHOUSE_URL", raising=False)
        close_all()
        yield build_board_warehouse(settings())
        if database:
            connect().command(f"DROP DATABASE IF EXISTS `{database}`")
        close_all()


def board(scenario: BoardScenario, community: str = "", **kw: Any) -> dict[str, Any]:
    kw.setdefault("wall_now", scenario.written_at + timedelta(seconds=1))
    return compute_board(connect(scenario.cfg), scenario.cfg, community, **kw)


def figures(scenario: BoardScenario, panel: str, community: str = "", **kw: Any) -> dict[str, Any]:
    return board(scenario, community, names=[panel], **kw)["panels"][panel]["figures"]


def sql(query: str, **params: Any) -> list[tuple]:
    return connect().rows(query, params)


# --- the day and its clock ------------------------------------------------------------------

def test_today_is_the_newest_orders_business_day_and_now_the_datas_clock(scenario: BoardScenario) -> None:
    window = board(scenario)["window"]
    assert window["day"] == DAY.isoformat() and window["day_source"] == "newest_order"
    assert window["now"] == "2026-11-20T04:00:00.000Z" and window["now_source"] == "newest_event"
    assert window["day_start"] == "2026-11-19T16:00:00.000Z" and window["week_start"] == "2026-11-16"


def test_clock_rules() -> None:
    order = datetime(2026, 11, 20, 2, 5, tzinfo=timezone.utc)
    inside = datetime(2026, 11, 20, 6, 0, tzinfo=timezone.utc)
    live = window_for(order, order, TZ, wall_now=inside)
    assert (live.now, live.now_source) == (inside, "wall_clock")
    past = window_for(order, order, TZ, as_of=date(2026, 11, 18), wall_now=inside)
    assert past.now_source == "end_of_day" and past.now == past.day_end - timedelta(milliseconds=1)
    assert past.week7_start == datetime(2026, 11, 11, 16, tzinfo=timezone.utc)
    empty = window_for(None, None, TZ, wall_now=inside)
    assert empty.day == date(2026, 11, 20) and empty.day_source == "wall_clock"
    assert parse_as_of("") is None and parse_as_of("latest") is None and parse_as_of("2026-11-18") == date(2026, 11, 18)
    with pytest.raises(BadAsOf, match="not a date"):
        parse_as_of("2026-13-01")


# --- pickups --------------------------------------------------------------------------------

READY_SQL = """
SELECT o.community_id, count(), countIf(p.order_id != ''), countIf(p.order_id = '' AND o.slot_end < {now:DateTime64(3, 'UTC')})
FROM (SELECT DISTINCT order_id, community_id, delivery_slot_start AS slot_start, delivery_slot_end AS slot_end FROM raw_order FINAL
      WHERE toDate(delivery_slot_start, 'Asia/Shanghai') = {day:Date} AND delivery_slot_start <= {now:DateTime64(3, 'UTC')}) AS o
LEFT JOIN (SELECT DISTINCT order_id FROM raw_pickup FINAL WHERE occurred_at <= {now:DateTime64(3, 'UTC')}) AS p ON p.order_id = o.order_id
GROUP BY o.community_id ORDER BY o.community_id
"""


def test_pickup_figures_equal_their_sql(scenario: BoardScenario) -> None:
    found = figures(scenario, "pickups")
    expected = sql(READY_SQL, day=DAY, now=NOW)
    assert [(c["community_id"], c["ready"], c["collected"], c["overdue"]) for c in found["by_community"]] == \
        [(c, int(r), int(k), int(o)) for c, r, k, o in expected]
    total = found["total"]
    assert (total["ready"], total["collected"], total["overdue"]) == tuple(sum(int(r[i]) for r in expected) for i in (1, 2, 3))
    # The hand-made day: b1 (sent twice), b2, b3, b4 ready; b2 overdue; b5's slot is still to come.
    assert (total["ready"], total["collected"], total["overdue"], total["completion_rate"]) == (4, 3, 1, 0.75)
    assert total["median_ready_to_pickup_min"] == 60.0  # 30, 60 and 90 minutes after slot start
    lockers = {r["locker_id"]: r for r in found["by_locker"]}
    assert lockers["L-C01-1"]["median_ready_to_pickup_min"] == 30.0 and lockers["L-C01-2"]["median_ready_to_pickup_min"] == 90.0
    assert lockers["L-C01-1"]["overdue"] == 1


def test_one_community_sees_only_its_own(scenario: BoardScenario) -> None:
    c02 = figures(scenario, "pickups", "C02")
    assert c02["total"]["ready"] == 1 and [r["locker_id"] for r in c02["by_locker"]] == ["L-C02-1"]
    assert figures(scenario, "sales", "C02")["orders_today"] == 1
    cold = figures(scenario, "cold_chain", "C02")
    assert [locker["locker_id"] for locker in cold["lockers"]] == ["L-C02-1"] and cold["claims_auto_approved_today"] == 0
    assert figures(scenario, "satisfaction", "C02")["stars_today"] == 3.0


# --- satisfaction ---------------------------------------------------------------------------

def test_satisfaction_figures_equal_their_sql(scenario: BoardScenario) -> None:
    found = figures(scenario, "satisfaction")
    today, week = sql("SELECT avgIf(stars, toDate(occurred_at, 'Asia/Shanghai') = {day:Date}), "
                      "avgIf(stars, toDate(occurred_at, 'Asia/Shanghai') BETWEEN {day:Date} - 6 AND {day:Date}) "
                      "FROM raw_review FINAL", day=DAY)[0]
    assert found["stars_today"] == round(today, 2) == 4.0  # 5 and 3 today
    assert found["stars_7d"] == round(week, 2) == 4.0 and found["reviews_7d"] == 3  # the review of 11-10 is older
    assert figures(scenario, "satisfaction", "C01")["stars_7d"] == 4.5
    assert found["sti_week_start"] == "2026-11-16"
    # Orders-weighted over communities: (80 * 10 + 60 * 30) / 40; C02 has no communication score.
    assert found["sti"]["service_temperature"] == 65.0 and found["sti"]["communication_score"] == 80.0
    assert figures(scenario, "satisfaction", "C01")["sti"]["traceability_score"] == 100.0


def test_a_missing_mart_is_reported_absent_not_zero(scenario: BoardScenario) -> None:
    warehouse = connect(scenario.cfg)
    tables = warehouse_tables(warehouse) - {"service_temperature_index"}
    window = window_for(NOW, NOW, TZ)
    found = compute_panel(warehouse, PANELS["satisfaction"], window, "", scenario.cfg, tables)
    assert found["absent"] == [{"query": "sti", "missing_tables": ["service_temperature_index"]}]
    assert "sti" not in found["figures"] and found["figures"]["stars_today"] == 4.0


# --- cold chain -----------------------------------------------------------------------------

def test_cold_chain_shows_each_compartments_latest_state(scenario: BoardScenario) -> None:
    found = figures(scenario, "cold_chain")
    states = {c["compartment_id"]: c for locker in found["lockers"] for c in locker["compartments"]}
    latest = dict(sql("SELECT compartment_id, argMax(temperature_c, occurred_at) FROM raw_locker_telemetry FINAL GROUP BY compartment_id"))
    assert {k: v["temperature_c"] for k, v in states.items() if k in latest} == latest
    assert states["L-C01-1-K01"]["state"] == "excursion" and states["L-C01-1-K01"]["out_of_range_min"] == 30.0
    assert states["L-C01-1-K02"]["state"] == "door_open"
    assert states["L-C01-2-K01"]["state"] == "ok"
    assert states["L-C02-1-K01"]["state"] == "silent"  # its last reading is two hours old
    # Installed but never heard from: silent, with no reading to show.
    assert states["L-C02-1-K02"]["state"] == "silent" and states["L-C02-1-K02"]["temperature_c"] is None
    assert found["open_excursions"] == 1 and found["compartments"] == 5 and found["states"]["silent"] == 2


def test_claims_approved_today_equal_their_sql(scenario: BoardScenario) -> None:
    found = figures(scenario, "cold_chain")
    count, amount = sql("SELECT count(), sum(d.compensation_cny) FROM claim_decisions AS d FINAL "
                        "JOIN cold_chain_incidents AS i FINAL ON i.incident_id = d.incident_id "
                        "WHERE d.decision = 'auto_approved' AND toDate(i.started_at, 'Asia/Shanghai') = {day:Date}", day=DAY)[0]
    assert (found["claims_auto_approved_today"], found["compensation_auto_approved_cny"]) == (count, float(amount)) == (1, 12.5)


# --- sales, alerts, pipeline ----------------------------------------------------------------

def test_sales_figures_equal_their_sql(scenario: BoardScenario) -> None:
    found = figures(scenario, "sales")
    orders, amount = sql("SELECT uniqExact(order_id), sum(total_amount) FROM raw_order FINAL "
                         "WHERE toDate(occurred_at, 'Asia/Shanghai') = {day:Date}", day=DAY)[0]
    assert (found["orders_today"], found["amount_today_cny"]) == (orders, amount) == (3, 94.5)
    assert [(h["hour"], h["orders"]) for h in found["by_hour"] if h["orders"]] == [(9, 2), (10, 1)]
    best = found["best_sellers"][0]
    assert (best["sku"], best["qty"], best["orders"]) == ("SKU-0012", 5, 2)
    assert found["forecast"]["available"] is False and "no forecast table" in found["forecast"]["reason"]


def test_alerts_list_compensations_and_quarantine(scenario: BoardScenario) -> None:
    found = figures(scenario, "alerts")
    assert sorted((c["order_id"], c["decision"]) for c in found["compensations"]) == [("ord-b1", "auto_approved"),
                                                                                       ("ord-b2", "needs_review")]
    assert found["quarantine"] == [{"reason": "not_json", "last_hour": 1, "hourly_before": 0.0, "spike": False}]
    assert found["journeys"]["available"] is False
    # batch_quality_alerts comes with the migrations: the feed is there and has raised nothing yet
    assert (found["batch_quality"]["available"], found["batch_quality"]["alerts"]) == (True, [])
    today, yesterday = datetime(2026, 11, 20, 2, 0), datetime(2026, 11, 19, 2, 0)  # 10:00 in Shanghai
    connect().insert_rows("batch_quality_alerts", [("batch_quality:B-1", "B-1", "SKU-0012", "Shouguang", 4, 9, 0.4444, 0.08, today),
                                                   ("batch_quality:B-0", "B-0", "SKU-0012", "Shouguang", 3, 5, 0.6, 0.08, yesterday)],
                          ["alert_id", "batch_id", "sku", "origin", "bad", "feedback", "bad_rate", "baseline_rate", "alert_at"])
    alerted = figures(scenario, "alerts")["batch_quality"]["alerts"]
    assert [(a["batch_id"], a["bad"], a["feedback"], a["alert_at"]) for a in alerted] == [("B-1", 4, 9, "2026-11-20T02:00:00Z")]


def test_pipeline_health_measures_ingestion(scenario: BoardScenario, tmp_path: Path) -> None:
    found = figures(scenario, "pipeline")
    written = sql("SELECT count() FROM raw_order")[0][0] + sql("SELECT count() FROM quarantine")[0][0]
    assert found["events_last_minute"] >= written and found["events_per_s"] > 0
    accepted = sum(sql(f"SELECT count() FROM {t}")[0][0] for t in ("raw_order", "raw_pickup", "raw_review", "raw_locker_telemetry"))
    assert found["quarantined_share_last_hour"] == round(1 / (accepted + 1), 4)
    assert found["freshness_p50_s"] > 0  # simulated events are days old when written
    later = figures(scenario, "pipeline", wall_now=scenario.written_at + timedelta(hours=2))
    assert later["events_per_s"] == 0 and later["quarantined_share_last_hour"] is None


def test_dbt_and_quality_gate_results_are_read_from_their_files(scenario: BoardScenario) -> None:
    from lastmile.board.panels import last_dbt_build, last_quality_gate

    cfg = scenario.cfg
    assert last_dbt_build(cfg) is None and last_quality_gate(cfg) is None
    target = cfg.home / "dbt" / "target"
    target.mkdir(parents=True, exist_ok=True)
    (target / "run_results.json").write_text(json.dumps({
        "metadata": {"generated_at": "2026-11-20T03:00:00Z"}, "elapsed_time": 12.5, "args": {"which": "build"},
        "results": [{"status": "success"}, {"status": "pass"}, {"status": "fail"}]}))
    run = cfg.home / "quality" / "gx" / "uncommitted" / "validations" / "lastmile" / "raw" / "raw_order" / "__none__" / "20261120T030000Z"
    run.mkdir(parents=True)
    (run / "r.json").write_text(json.dumps({"success": True, "statistics": {"evaluated_expectations": 7, "unsuccessful_expectations": 0}}))
    try:
        dbt = last_dbt_build(cfg)
        assert dbt and dbt["success"] is False and dbt["statuses"] == {"success": 1, "pass": 1, "fail": 1}
        gate = last_quality_gate(cfg)
        assert gate and gate["success"] is True and gate["evaluated"] == 7 and gate["suites"] == {"lastmile.raw.raw_order": True}
    finally:
        import shutil

        shutil.rmtree(cfg.home / "dbt")
        shutil.rmtree(cfg.home / "quality")


def test_plain_statements_are_the_boards_own(scenario: BoardScenario) -> None:
    warehouse = connect(scenario.cfg)
    tables = warehouse_tables(warehouse)
    found = plain_statements(window_for(NOW, NOW, TZ), "", tables)
    assert len(found) == sum(len(p.queries) for p in PANELS.values()) - 1  # no ref_skus here
    for statement, params in found:
        warehouse.query(statement, params)


# --- the routes -----------------------------------------------------------------------------

def _app(cfg: Settings) -> tuple[Any, str, str]:
    from lastmile.api import create_app
    from lastmile.api_auth import create_key

    _, wall = create_key(cfg, "wall", ["board:read"])
    _, marketing = create_key(cfg, "crm", ["marketing:read"])
    return create_app(cfg), wall, marketing


def test_board_json_needs_a_board_key(scenario: BoardScenario) -> None:
    from tests.asgi import call

    app, wall, marketing = _app(scenario.cfg)
    assert call(app, "/board/api/board")[0] == 401
    assert call(app, "/board/api/board", key=marketing)[0] == 403
    status, body, _ = call(app, "/board/api/pickups?community=C01", key=wall)
    assert status == 200 and json.loads(body)["figures"]["total"]["ready"] == 3
    status, body, _ = call(app, "/board/api/board?as_of=2026-11-19", key=wall)
    answer = json.loads(body)
    assert status == 200 and answer["window"]["day"] == "2026-11-19" and answer["panels"]["sales"]["figures"]["orders_today"] == 5
    assert {c["community_id"] for c in answer["communities"]} == {"C01", "C02"}
    assert call(app, "/board/api/board?as_of=2026-13-01", key=wall)[0] == 422
    assert call(app, "/board/api/board?community=C01;DROP", key=wall)[0] == 422


def test_a_key_in_the_address_becomes_an_httponly_cookie(scenario: BoardScenario) -> None:
    from tests.asgi import call

    app, wall, marketing = _app(scenario.cfg)
    status, body, _ = call(app, "/board")
    assert status == 401 and b"<form" in body and b"board:read" in body
    assert call(app, f"/board?key={marketing}")[0] == 403
    status, _, headers = call(app, f"/board/C01?key={wall}&theme=dark")
    assert status == 303 and headers["location"] == "/board/C01?theme=dark"
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"lastmile_board={wall};") and "HttpOnly" in cookie and "Path=/board" in cookie
    assert "samesite=strict" in cookie.lower()
    status, body, _ = call(app, "/board/C01", headers={"cookie": f"lastmile_board={wall}"})
    assert status == 200 and b'data-community="C01"' in body
    status, body, _ = call(app, "/board/api/sales", headers={"cookie": f"lastmile_board={wall}"})
    assert status == 200 and json.loads(body)["figures"]["orders_today"] == 3


def test_openapi_documents_every_panels_json(scenario: BoardScenario) -> None:
    from tests.asgi import call

    app, _, _ = _app(scenario.cfg)
    schema = json.loads(call(app, "/openapi.json")[1])
    for name in PANELS:
        operation = schema["paths"][f"/board/api/{name}"]["get"]
        assert operation["x-required-scope"] == "board:read"
        assert {"ApiKey": []} in operation["security"] and {"BoardCookie": []} in operation["security"]
        assert {"401", "403", "429", "503"} <= set(operation["responses"])
        ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        figures_ref = schema["components"]["schemas"][ref]["properties"]["figures"]["$ref"].rsplit("/", 1)[1]
        assert schema["components"]["schemas"][figures_ref]["properties"], name
    pickups = schema["components"]["schemas"]["PickupFigures"]["properties"]
    assert "slot started" in pickups["ready"]["description"]
    assert "/board/api/board" in schema["paths"]


def test_a_held_warehouse_answers_503_saying_what_to_do(scenario: BoardScenario) -> None:
    from tests.asgi import call

    def held(_: Settings) -> Any:
        raise BoardUnavailable("the embedded warehouse is held by another process (lastmile stream?): start the worker with --serve-port")

    app, wall, _ = _app(scenario.cfg)
    app.state.board.opener = held
    status, body, _ = call(app, "/board/api/board", key=wall)
    assert status == 503 and "--serve-port" in json.loads(body)["detail"]


def test_screens_share_one_computation_per_second(scenario: BoardScenario) -> None:
    calls = []

    def opener(cfg: Settings) -> Any:
        calls.append(1)
        return connect(cfg)

    source = BoardSource(scenario.cfg, opener=opener, cache_seconds=60)
    first = source.board("C01")
    assert source.board("C01") is first and source.board("C02") is not first and len(calls) == 1


def test_the_page_loads_plotly_from_the_wheel_not_a_cdn() -> None:
    """The browser tests load the page offline; this pins where its scripts come from."""
    from lastmile.board.web import STATIC, plotly_js

    assert plotly_js().stat().st_size > 1_000_000
    page = (STATIC / "board.html").read_text(encoding="utf-8")
    scripts = [line for line in page.splitlines() if "<script" in line or "stylesheet" in line]
    assert scripts and all('"/board/static/' in line for line in scripts), scripts


def test_run_ends_by_saying_where_the_board_is(home: Settings) -> None:
    from typer.testing import CliRunner

    from lastmile.api_auth import create_key
    from lastmile.cli import app

    runner = CliRunner()
    plain = runner.invoke(app, ["run", "--orders", "200", "--weeks", "1", "--through", "ingest"])
    assert plain.exit_code == 0, plain.output
    lines = plain.stdout.strip().splitlines()
    assert lines[-1].startswith("live board: http://127.0.0.1:8000/board (start it with `lastmile serve`")
    assert "lastmile api-key create --name wall --scopes board:read" in lines[-1]
    assert lines[-2].startswith("weekly report: lastmile report writes ") and lines[-2].endswith("report.html")
    create_key(home, "wall", ["board:read"])
    found = runner.invoke(app, ["run", "--orders", "200", "--weeks", "1", "--through", "ingest", "--json"])
    board = json.loads(found.stdout.strip().splitlines()[-1])["board"]
    assert board == {"url": "http://127.0.0.1:8000/board", "start": "lastmile serve",
                     "key": "open it once with ?key=<a key with board:read>"}
