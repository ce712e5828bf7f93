"""The main job end to end: `lastmile run` twice on the same seed leaves the same counts."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

from typer.testing import CliRunner

from lastmile.cli import app
from lastmile.audiences import load_audiences
from lastmile.config import Settings
from lastmile.warehouse import connect

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def run_json(*args: str) -> dict:
    result = runner.invoke(app, ["run", "--json", *args])
    if result.exc_info and not isinstance(result.exception, SystemExit):
        traceback.print_exception(*result.exc_info)  # shows in pytest's captured output
    assert result.exit_code == 0, (result.output, repr(result.exception))
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_run_is_idempotent_and_counts_add_up(home: Settings) -> None:
    first = run_json("--orders", "1000", "--weeks", "2", "--seed", "7")
    ingest = first["ingest"]
    assert ingest["read"] == ingest["valid"] + ingest["quarantined"]
    warehouse = first["warehouse"]
    assert warehouse["rows"]["raw_order"] > 900
    assert warehouse["rows"]["raw_locker_telemetry"] > 10_000
    # The simulator injects exact re-sends: the warehouse holds each event once.
    assert warehouse["total_rows"] < ingest["valid"]
    assert warehouse["total_quarantined"] == ingest["quarantined"] > 0
    assert set(first["seconds"]) >= {"simulate", "ingest (Apache Beam)", "cold chain (PyFlink)"}
    cold_chain = first["cold_chain"]
    assert cold_chain["readings"] > 10_000 and cold_chain["excursions"] >= 1

    # Every later stage ran: dbt built and tested, the quality gate passed, features published;
    # two weeks are too short a history for the models' time split, which the run says.
    assert first["dbt"]["success"] and first["quality"]["success"] and "materialized" in first["features"]
    assert "not enough history" in first["models_report"]

    # The shipped audiences were refreshed over the marts just built, their sizes reported
    # and published: top_credit_tier is exactly the gold tier of dim_customer.
    shipped = {a.name for a in load_audiences(ROOT / "audiences")}
    audiences = {a["audience"]: a for a in first["audiences"]}
    assert set(audiences) == shipped and all("error" not in a for a in audiences.values())
    published = connect(home)
    gold = published.scalar("SELECT count() FROM dim_customer WHERE credit_tier = 'gold'")
    assert audiences["top_credit_tier"]["size"] == audiences["top_credit_tier"]["entries"] == gold > 0
    assert sum(a["size"] for a in audiences.values()) == published.count("audience_members") > 0
    # the analysts' view of the membership was built over the tables and reads them
    assert published.scalar("SELECT count() FROM stg_audiences__members") == published.count("audience_members")
    assert "audiences" in first["seconds"]
    # The journeys stage replayed the last week of loaded events through the contact rules.
    journeys = {j["journey"]: j for j in first["journeys"]["journeys"]}
    assert set(journeys) == {p.stem for p in (ROOT / "journeys").glob("*.yml")}
    assert first["journeys"]["events"] > 0 and sum(j["entered"] for j in journeys.values()) > 0
    assert journeys["review_reward"]["refused"] == sum(journeys["review_reward"]["refusals"].values()) > 0

    second = run_json("--orders", "1000", "--weeks", "2", "--seed", "7", "--through", "cold-chain")
    assert second["warehouse"] == warehouse
    assert {k: second["cold_chain"][k] for k in ("excursions", "incidents", "claims_auto_approved")} == \
        {k: cold_chain[k] for k in ("excursions", "incidents", "claims_auto_approved")}


def test_run_refuses_an_unknown_stage(home: Settings) -> None:
    result = runner.invoke(app, ["run", "--through", "dashboards"])
    assert result.exit_code == 2 and "--through must be one of" in result.output


def test_run_refuses_a_window_that_ends_in_the_future(home: Settings) -> None:
    result = runner.invoke(app, ["run", "--weeks", "40"])
    assert result.exit_code == 2
    assert "after today" in result.output
