"""Audience freshness: warehouse audiences refreshed after each build, event audiences by the stream.

The build itself is replaced by its result (a dbt build takes tens of seconds and is tested
elsewhere); the refresh after it runs on the small hand-written warehouse of
tests/test_audiences.py, so every expected member is read off its rows.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lastmile.audiences import AudienceError, load_audience
from lastmile.audiences.freshness import refresh_after_build
from lastmile.cli import app
from lastmile.transform import BuildResult
from tests.test_audiences import _members, audience, small  # noqa: F401 (fixture)

runner = CliRunner()

FIRST_ORDER = "freshness: event\nrule: {event: order, at_least: 1, days: 3650}\n"


def _built(monkeypatch: pytest.MonkeyPatch, success: bool = True) -> None:
    monkeypatch.setattr("lastmile.transform.build", lambda *a, **k: BuildResult("build", success, 1.0, {"success": 3}))


def test_event_freshness_allows_only_event_conditions(tmp_path: Path) -> None:
    ok = load_audience(audience(tmp_path, "first_order", FIRST_ORDER))
    assert ok.freshness == "event"
    assert load_audience(audience(tmp_path, "gold", "rule: {trait: credit_tier, op: '=', value: gold}\n")).freshness == "warehouse"
    mixed = audience(tmp_path, "mixed", """
        freshness: event
        rule:
          all:
            - {event: order, at_least: 1, days: 30}
            - {trait: credit_tier, op: '=', value: gold}
        """)
    with pytest.raises(AudienceError, match=r"mixed.yml:8: freshness: event allows only event conditions"):
        load_audience(mixed)
    with pytest.raises(AudienceError, match=r"sql.yml:4: freshness: event needs a rule"):
        load_audience(audience(tmp_path, "sql", "freshness: event\nsql: credit_tier = 'gold'\n"))
    with pytest.raises(AudienceError, match=r"hourly.yml:4: unknown freshness 'hourly'; expected one of warehouse, event"):
        load_audience(audience(tmp_path, "hourly", "freshness: hourly\nrule: {event: order, days: 1}\n"))


def test_transform_refreshes_the_warehouse_audiences_and_reports_their_sizes(small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "audiences"
    folder.mkdir()
    audience(folder, "gold", "rule: {trait: credit_tier, op: '=', value: gold}\n")
    audience(folder, "first_order", FIRST_ORDER)  # the stream's: not refreshed by a build
    monkeypatch.setenv("LASTMILE_AUDIENCES_DIR", str(folder))
    _built(monkeypatch)
    result = runner.invoke(app, ["transform", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["success"] is True, out
    assert all("error" not in a for a in out["audiences"]), out["audiences"]
    assert [(a["audience"], a["size"], a["entries"]) for a in out["audiences"]] == [("gold", 2, 2)]
    assert _members(small, "gold") == {"p1", "p3"}
    assert _members(small, "first_order") == set()
    table = runner.invoke(app, ["transform"])
    assert table.exit_code == 0 and "gold" in table.output and "audiences (published)" in table.output


def test_a_failed_refresh_is_reported_and_the_build_still_succeeds(small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "audiences"
    folder.mkdir()
    audience(folder, "bad", "sql: no_such_column > 1\n")
    audience(folder, "gold", "rule: {trait: credit_tier, op: '=', value: gold}\n")
    monkeypatch.setenv("LASTMILE_AUDIENCES_DIR", str(folder))
    _built(monkeypatch)
    result = runner.invoke(app, ["transform", "--json"])
    assert result.exit_code == 0, result.output
    bad, gold = json.loads(result.output)["audiences"]
    assert bad["audience"] == "bad" and "refused the audience's predicate" in bad["error"]
    assert gold["size"] == 2 and _members(small, "gold") == {"p1", "p3"}
    # a folder that does not load is reported too
    audience(folder, "broken", "rule: {trait: nope, op: '=', value: 1}\n")
    assert "unknown trait 'nope'" in refresh_after_build(small, folder)[0]["error"]


def test_no_refresh_after_a_failed_build_or_when_switched_off(small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "audiences"
    folder.mkdir()
    audience(folder, "gold", "rule: {trait: credit_tier, op: '=', value: gold}\n")
    monkeypatch.setenv("LASTMILE_AUDIENCES_DIR", str(folder))
    _built(monkeypatch, success=False)
    failed = runner.invoke(app, ["transform", "--json"])
    assert failed.exit_code == 1 and "audiences" not in json.loads(failed.output)
    _built(monkeypatch)
    off = runner.invoke(app, ["transform", "--json", "--no-audiences"])
    assert off.exit_code == 0 and "audiences" not in json.loads(off.output)
    assert "audience_members" not in small.tables()  # nothing was ever published


# --- event audiences behind the stream -------------------------------------------------------

class _Written:
    """The part of a written batch the audiences read: the rows of each raw table."""

    def __init__(self, orders: list[str], returns: tuple[str, ...] | list[str] = ()) -> None:
        self.tables = {"raw_order": orders, "raw_return": list(returns)}

    def rows(self, table: str) -> list[dict]:
        return [{"event_id": e} for e in self.tables.get(table, [])]


def test_event_audiences_enter_the_people_a_batch_touched_once(small, tmp_path: Path) -> None:
    from lastmile.audiences import load_audiences
    from lastmile.audiences.destinations import event_id
    from lastmile.streaming.audiences import EventAudiences

    audience(tmp_path, "first_order", FIRST_ORDER)
    audience(tmp_path, "three_orders", "freshness: event\nrule: {event: order, at_least: 3, days: 30}\n")
    audience(tmp_path, "gold", "rule: {trait: credit_tier, op: '=', value: gold}\n")
    stream = EventAudiences(small, load_audiences(tmp_path))
    assert [a.name for a in stream.audiences] == ["first_order", "three_orders"]
    # p1 (3 orders in 30 days), p3 (2 in 30 days) and an order nobody is resolved for yet
    stream.note(_Written(["e1", "e4", "e-unresolved"]))
    stream.after_resolve()
    entries = [json.loads(v) for _, v in stream.drain()]
    assert sorted((e["audience"], e["oneid"]) for e in entries) == [("first_order", "p1"), ("first_order", "p3"), ("three_orders", "p1")]
    first = entries[0]
    assert first["change"] == "enter"
    stamp = datetime.fromisoformat(first["at"].replace("Z", "+00:00"))
    assert first["event_id"] == event_id(first["audience"], first["version"], first["oneid"], "enter", stamp)
    assert _members(small, "first_order") == {"p1", "p3"} and _members(small, "three_orders") == {"p1"}
    assert _members(small, "gold") == set()  # a warehouse audience: the build's refresh publishes it
    # p1 again with p5: only p5 is new; the unresolved order is still waiting for its person
    stream.note(_Written(["e2", "e7"]))
    stream.after_resolve()
    assert sorted((json.loads(v)["audience"], k.decode()) for k, v in stream.drain()) == [("first_order", "p5"), ("three_orders", "p5")]
    assert small.scalar("SELECT count() FROM audience_membership_changes WHERE audience = 'first_order'") == 3
    assert stream.stats.entries == 5 and stream._noted == {"e-unresolved": 2}


def test_an_hours_window_and_a_where_filter_on_the_event(small, tmp_path: Path) -> None:
    """"Had a temperature claim in the last hour": p2's claim 30 minutes before the newest
    event counts; p4's claim 2 hours before, and p1's packaging return, do not."""
    from datetime import timedelta

    from lastmile.audiences import load_audiences, select_members
    from tests.test_audiences import NOW

    returns = [("r1", "p2", "claim", "temperature", NOW - timedelta(minutes=30)),
               ("r2", "p4", "claim", "temperature", NOW - timedelta(hours=2)),
               ("r3", "p1", "packaging", None, NOW - timedelta(minutes=10))]
    small.insert_rows("raw_return", [(e, "return", kind, reason, at.replace(tzinfo=None)) for e, _, kind, reason, at in returns],
                      ["event_id", "event_type", "kind", "reason", "occurred_at"])
    small.insert_rows("event_oneid", [("return", e, oneid) for e, oneid, *_ in returns], ["event_type", "event_id", "oneid"])
    audience(tmp_path, "warm_claim", """
        freshness: event
        rule: {event: return, where: {kind: claim, reason: [temperature]}, at_least: 1, hours: 1}
        """)
    (warm,) = load_audiences(tmp_path)
    assert "`reason` IN" in warm.compile().predicate and "temperature" not in warm.compile().predicate
    assert select_members(small, warm) == {"p2"}
    with pytest.raises(AudienceError, match=r"bad.yml:4: unknown field 'buyer' of order; expected one of .*total_amount"):
        load_audience(audience(tmp_path, "bad", "rule: {event: order, where: {buyer: x}, hours: 1}\n"))
    with pytest.raises(AudienceError, match=r"both.yml:4: an event rule needs exactly one window: days or hours"):
        load_audience(audience(tmp_path, "both", "rule: {event: order, days: 1, hours: 1}\n"))


def test_the_worker_does_no_audience_work_without_an_event_audience(small, home, tmp_path: Path) -> None:
    from dataclasses import replace

    from pipelines.faust_worker import event_audiences

    folder = tmp_path / "audiences"
    folder.mkdir()
    audience(folder, "gold", "rule: {trait: credit_tier, op: '=', value: gold}\n")
    assert event_audiences(replace(home, audiences_dir=str(folder)), small) is None
    assert event_audiences(home, small) is None  # the shipped audiences are all warehouse audiences
    audience(folder, "first_order", FIRST_ORDER)
    stream = event_audiences(replace(home, audiences_dir=str(folder)), small)
    assert stream is not None and [a.name for a in stream.audiences] == ["first_order"]
    audience(folder, "broken", "rule: {trait: nope, op: '=', value: 1}\n")
    assert event_audiences(replace(home, audiences_dir=str(folder)), small) is None  # logged; ingestion goes on


def test_event_audience_members_leave_when_the_window_passes(small, tmp_path: Path) -> None:
    """"A temperature claim in the last hour": p2 enters on their claim; once the stream's time
    (the newest event) is more than an hour past it, p2 leaves: an exit in the history, the
    membership closed and an exit message with the id a delivery would give it."""
    from datetime import timedelta

    from lastmile.audiences import load_audiences
    from lastmile.audiences.destinations import event_id
    from lastmile.streaming.audiences import EventAudiences
    from tests.test_audiences import NOW

    small.insert_rows("raw_return", [("r-warm", "return", "claim", "temperature", (NOW + timedelta(minutes=5)).replace(tzinfo=None))],
                      ["event_id", "event_type", "kind", "reason", "occurred_at"])
    small.insert_rows("event_oneid", [("return", "r-warm", "p2")], ["event_type", "event_id", "oneid"])
    audience(tmp_path, "warm_claim", "freshness: event\nrule: {event: return, where: {kind: claim, reason: temperature}, at_least: 1, hours: 1}\n")
    stream = EventAudiences(small, load_audiences(tmp_path))
    stream.note(_Written([], returns=["r-warm"]))
    stream.after_resolve()
    assert [(json.loads(v)["change"], k.decode()) for k, v in stream.drain()] == [("enter", "p2")]
    stream.after_resolve()  # the stream's time has not moved: nobody leaves
    assert stream.drain() == [] and _members(small, "warm_claim") == {"p2"}
    # 50 minutes later (an order of p5): the claim is 45 minutes old, p2 stays
    _order(small, "e-later", "p5", NOW + timedelta(minutes=50))
    stream.after_resolve()
    assert stream.drain() == [] and _members(small, "warm_claim") == {"p2"}
    # 70 minutes after the claim: it left the window
    _order(small, "e-much-later", "p5", NOW + timedelta(minutes=75))
    stream.after_resolve()
    (exit_,) = [json.loads(v) for _, v in stream.drain()]
    assert (exit_["change"], exit_["oneid"]) == ("exit", "p2") and _members(small, "warm_claim") == set()
    stamp = datetime.fromisoformat(exit_["at"].replace("Z", "+00:00"))
    assert exit_["event_id"] == event_id("warm_claim", exit_["version"], "p2", "exit", stamp)
    assert small.rows("SELECT toString(change) FROM audience_membership_changes WHERE audience = 'warm_claim' ORDER BY at") == [
        ("enter",), ("exit",)]
    assert stream.stats.exits == 1


def test_what_the_stream_sent_is_in_the_outbox_and_not_delivered_again(small, tmp_path: Path) -> None:
    """The worker's entries reach lastmile.audience_changes itself; recorded as delivered to the
    Kafka destination on that topic, a later publish sends them no second time (same ids)."""
    from lastmile.audiences import load_audiences
    from lastmile.audiences.destinations import Destination, pending
    from lastmile.streaming.audiences import EventAudiences

    audience(tmp_path, "first_order", FIRST_ORDER)
    kafka = Destination("audience_changes", "kafka", None)
    webhook = Destination("scrm", "webhook", None, url="http://127.0.0.1:9/")
    stream = EventAudiences(small, load_audiences(tmp_path), destinations=[kafka, webhook])
    stream.note(_Written(["e1", "e4"]))
    stream.after_resolve()
    sent = stream.drain()
    assert len(sent) == 2 and len(pending(small, kafka)) == 2
    stream.delivered(sent)  # the broker acknowledged them
    assert pending(small, kafka) == []
    assert sorted(e["event_id"] for e in pending(small, webhook)) == sorted(json.loads(v)["event_id"] for _, v in sent)


def _order(warehouse, event: str, oneid: str, at: datetime) -> None:
    warehouse.insert_rows("raw_order", [(event, "order", f"o-{event}", at.replace(tzinfo=None))], ["event_id", "event_type", "order_id", "occurred_at"])
    warehouse.insert_rows("event_oneid", [("order", event, oneid)], ["event_type", "event_id", "oneid"])
