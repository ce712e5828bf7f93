"""Audience routes of the API and `lastmile audience export`: published membership, read back.

A small warehouse as in tests/test_audiences.py (``audience_traits`` written by hand), with
more people so that paging crosses several pages; audiences are refreshed through the
public ``refresh`` and read back through the API and the command line.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lastmile.api import create_app
from lastmile.api_auth import create_key, read_audit
from lastmile.audiences import load_audiences, refresh
from lastmile.cli import app as cli
from lastmile.config import Settings, settings
from lastmile.warehouse import connect, migrate
from tests.asgi import call
from tests.test_audiences import NOW, _traits, audience

runner = CliRunner()

#: 257 people: every third is gold (p000, p003, ...), so "gold" has 86 members.
PEOPLE = [(f"p{i:03d}", "c1", "b1", "l1", "gold" if i % 3 == 0 else "silver", i % 5, 0.1, "tea") for i in range(257)]
GOLD = sorted(p[0] for p in PEOPLE if p[4] == "gold")


@pytest.fixture
def published(home: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Two audiences in a folder of their own, ``gold`` refreshed (published), ``returners`` never refreshed."""
    folder = tmp_path / "audiences"
    folder.mkdir()
    audience(folder, "gold", "rule: {trait: credit_tier, op: '=', value: gold}\n")
    audience(folder, "returners", "sql: packaging_returns >= 4\n")
    monkeypatch.setenv("LASTMILE_AUDIENCES_DIR", str(folder))
    cfg = settings()
    warehouse = connect(cfg)
    migrate(warehouse)
    _traits(warehouse, PEOPLE)
    refresh(warehouse, {a.name: a for a in load_audiences(folder)}["gold"], now=NOW)
    yield cfg


@pytest.fixture
def api(published: Settings) -> Any:
    return create_app(published, service=object())


def key(cfg: Settings, *scopes: str) -> str:
    return create_key(cfg, "test", scopes)[1]


def get(app: Any, path: str, secret: str) -> tuple[int, Any]:
    status, body, _ = call(app, path, key=secret)
    return status, json.loads(body)


ROUTES = ["/audiences", "/audiences/gold", "/audiences/gold/members", "/customers/p000/audiences"]


def test_routes_need_a_key_with_marketing_read(published: Settings, api: Any) -> None:
    board = key(published, "board:read")
    for path in ROUTES:
        status, body, headers = call(api, path)
        assert status == 401 and headers["www-authenticate"] == "Bearer" and b"p000" not in body
        status, body, _ = call(api, path, key=board)
        assert status == 403 and b"marketing:read" in body and b"p000" not in body
    reader = key(published, "marketing:read")
    assert all(call(api, path, key=reader)[0] == 200 for path in ROUTES)


def test_list_and_detail_show_size_version_and_last_refresh(published: Settings, api: Any) -> None:
    reader = key(published, "marketing:read")
    status, listed = get(api, "/audiences", reader)
    assert status == 200
    by_name = {a["name"]: a for a in listed}
    gold = {a.name: a for a in load_audiences(published.audiences_path)}["gold"]
    assert by_name["gold"]["size"] == len(GOLD) == 86
    assert by_name["gold"]["version"] == by_name["gold"]["published_version"] == gold.version
    assert by_name["gold"]["last_refresh_at"].startswith("2026-05-31T12:00:00")
    # never refreshed: nobody published, no refresh time, yet listed with its file's version
    assert (by_name["returners"]["size"], by_name["returners"]["published_version"], by_name["returners"]["last_refresh_at"]) == (0, None, None)
    status, detail = get(api, "/audiences/gold", reader)
    assert status == 200 and detail["definition"] == {"trait": "credit_tier", "op": "=", "value": "gold"}
    assert detail["kind"] == "rule" and detail["owner"] == "tests" and detail["size"] == 86
    assert get(api, "/audiences/returners", reader)[1]["definition"] == "packaging_returns >= 4"


def test_an_unknown_audience_is_404(published: Settings, api: Any) -> None:
    reader = key(published, "marketing:read")
    for path in ("/audiences/nobody", "/audiences/nobody/members"):
        status, body = get(api, path, reader)
        assert status == 404 and body["detail"] == "unknown audience: nobody"
    assert call(api, "/audiences/Bad%20Name", key=reader)[0] == 422


def test_paging_returns_every_member_exactly_once_in_oneid_order(published: Settings, api: Any) -> None:
    reader = key(published, "marketing:read")
    seen: list[str] = []
    cursor, pages = None, 0
    while True:
        status, page = get(api, "/audiences/gold/members?limit=20" + (f"&cursor={cursor}" if cursor else ""), reader)
        assert status == 200 and len(page["members"]) <= 20
        seen += [m["oneid"] for m in page["members"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == GOLD and pages == 5  # 86 members: four full pages and one of 6
    first = get(api, "/audiences/gold/members?limit=1", reader)[1]["members"][0]
    assert first["oneid"] == "p000" and first["entered_at"].startswith("2026-05-31T12:00:00")
    # one page of everyone; the limit is bounded; a cursor the API did not write is refused
    assert [m["oneid"] for m in get(api, "/audiences/gold/members?limit=1000", reader)[1]["members"]] == GOLD
    assert call(api, "/audiences/gold/members?limit=1001", key=reader)[0] == 422
    assert call(api, "/audiences/gold/members?limit=0", key=reader)[0] == 422
    status, body = get(api, "/audiences/gold/members?cursor=%25%25%25", reader)
    assert status == 422 and "cursor" in body["detail"]
    # each member read is in the audit log, under its pseudonym, never the OneID
    audited = [e for e in read_audit(published) if e["action"] == "GET audience members"]
    assert len(audited) == 86 + 1 + 86
    assert '"p0' not in published.home.joinpath("api", "audit.jsonl").read_text()


def test_paging_survives_a_refresh_between_pages(published: Settings, api: Any) -> None:
    reader = key(published, "marketing:read")
    page = get(api, "/audiences/gold/members?limit=50", reader)[1]
    # p000 leaves and p001 enters while the client holds its cursor: no one who stayed is repeated or skipped
    warehouse = connect(published)
    _traits(warehouse, [(*p[:4], {"p000": "silver", "p001": "gold"}.get(p[0], p[4]), *p[5:]) for p in PEOPLE])
    refresh(warehouse, {a.name: a for a in load_audiences(published.audiences_path)}["gold"], now=NOW + timedelta(days=1))
    rest = get(api, f"/audiences/gold/members?limit=1000&cursor={page['next_cursor']}", reader)[1]
    assert [m["oneid"] for m in page["members"]] + [m["oneid"] for m in rest["members"]] == GOLD


def test_a_customers_audiences(published: Settings, api: Any) -> None:
    reader = key(published, "marketing:read")
    status, body = get(api, "/customers/p003/audiences", reader)
    assert status == 200 and [a["audience"] for a in body["audiences"]] == ["gold"]
    assert get(api, "/customers/p001/audiences", reader)[1] == {"oneid": "p001", "audiences": []}


def test_a_warehouse_that_cannot_be_read_is_503_not_a_traceback(published: Settings, api: Any) -> None:
    def locked(_: Settings) -> Any:
        raise RuntimeError("Cannot lock file status: held by another process")

    api.state.audiences.opener = locked  # the warehouse is opened on the first audience read
    status, body, _ = call(api, "/audiences", key=key(published, "marketing:read"))
    assert status == 503 and b"did not answer" in body and b"Traceback" not in body


def test_openapi_documents_the_audience_routes(published: Settings, api: Any) -> None:
    status, body, _ = call(api, "/openapi.json")
    schema = json.loads(body)
    assert status == 200
    for path in ROUTES:
        route = schema["paths"][path.replace("gold", "{name}").replace("p000", "{oneid}")]["get"]
        assert route["x-required-scope"] == "marketing:read" and "404" in route["responses"]
        assert route["security"]
    assert {"AudienceSummary", "AudienceDetail", "MemberPage", "Membership", "CustomerAudiences"} <= set(schema["components"]["schemas"])
    members = schema["paths"]["/audiences/{name}/members"]["get"]["parameters"]
    assert {p["name"]: p["schema"].get("maximum") for p in members if p["name"] == "limit"} == {"limit": 1000}


# --- lastmile audience export ---------------------------------------------------------------

def test_export_writes_the_published_members_as_csv_and_jsonl(published: Settings, tmp_path: Path) -> None:
    shown = runner.invoke(cli, ["audience", "export", "gold"])
    assert shown.exit_code == 0, shown.output
    rows = list(csv.DictReader(io.StringIO(shown.stdout)))
    gold = {a.name: a for a in load_audiences(published.audiences_path)}["gold"]
    assert [r["oneid"] for r in rows] == GOLD
    assert {(r["version"], r["entered_at"][:19]) for r in rows} == {(gold.version, "2026-05-31T12:00:00")}
    target = tmp_path / "out" / "gold.jsonl"
    saved = runner.invoke(cli, ["audience", "export", "gold", "--format", "jsonl", "--out", str(target)])
    assert saved.exit_code == 0, saved.output
    lines = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert [line["oneid"] for line in lines] == GOLD and set(lines[0]) == {"oneid", "entered_at", "version"}
    assert "86 members of gold" in saved.output
    # never refreshed: a header and nobody
    assert runner.invoke(cli, ["audience", "export", "returners"]).stdout == "oneid,entered_at,version\n"


def test_export_refuses_an_unknown_audience_or_format(published: Settings) -> None:
    unknown = runner.invoke(cli, ["audience", "export", "nobody"])
    assert unknown.exit_code == 2 and "no audience named nobody" in unknown.output
    bad = runner.invoke(cli, ["audience", "export", "gold", "--format", "xml"])
    assert bad.exit_code == 2 and "--format must be csv or jsonl" in bad.output and "Traceback" not in bad.output


# --- the dbt source for analysts --------------------------------------------------------------

@pytest.mark.slow
def test_the_staging_view_reads_the_published_members(home: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the first refresh the view builds empty; a build after it reads the members."""
    from lastmile import transform

    folder = tmp_path / "audiences"
    folder.mkdir()
    audience(folder, "gold", "rule: {trait: credit_tier, op: '=', value: gold}\n")
    warehouse = connect(home)
    _traits(warehouse, PEOPLE)
    view = "SELECT audience_name, oneid FROM stg_audiences__members ORDER BY audience_name, oneid"
    built, _ = transform.invoke(home, ["build", "--select", "stg_audiences__members"], quiet=True)
    assert built.success, built.failures
    assert warehouse.rows(view) == []
    refresh(warehouse, load_audiences(folder)[0], now=NOW)
    built, _ = transform.invoke(home, ["build", "--select", "stg_audiences__members"], quiet=True)
    assert built.success, built.failures
    assert warehouse.rows(view) == [("gold", o) for o in GOLD]
    # a person who leaves is gone from the view at once (it reads the table with FINAL)
    _traits(warehouse, [(*p[:4], "silver" if p[0] == "p000" else p[4], *p[5:]) for p in PEOPLE])
    refresh(warehouse, load_audiences(folder)[0], now=NOW + timedelta(days=1))
    assert warehouse.rows(view) == [("gold", o) for o in GOLD[1:]]
