"""Who gets into the API and what a read may change: keys, scopes, health fields and consent,
rate limits, the audit log, and impressions recorded only by POST.

The service behind the app is the real :class:`ModelService` code for spending health and
impressions (policy, cap ledger) over a small in-memory set of online feature rows and a
fixed spending-health model, so these tests need no trained warehouse; the slow API tests
repeat the central checks on the trained one.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from lastmile.api import create_app
from lastmile.api_auth import RateLimiter, audit_path, create_key, keys_path, read_audit, revoke_key
from lastmile.config import Settings, settings
from lastmile.models.policy import CapLedger, SpendingPolicy
from lastmile.models.service import ModelService, UnknownCustomer
from tests.asgi import call

# Online feature rows as Feast returns them: a declared person (dietary need on file), an
# at-risk person without a declaration, and a healthy one.
ROWS: dict[str, dict[str, Any]] = {
    "oid_declared": {"orders_total": 40, "spend_total_cny": 1830.5, "home_locker_id": "LK0042", "home_community_id": "C007",
                     "credit_score": 712, "credit_tier": "B", "sh_impulse_share_28d": 0.61, "dietary_need_declared": True},
    "oid_risky": {"orders_total": 55, "spend_total_cny": 2410.0, "home_locker_id": "LK0007", "home_community_id": "C001",
                  "credit_score": 640, "credit_tier": "C", "sh_impulse_share_28d": 0.72, "dietary_need_declared": None},
    "oid_fine": {"orders_total": 12, "spend_total_cny": 310.0, "home_locker_id": "LK0101", "home_community_id": "C003",
                 "credit_score": 780, "credit_tier": "A", "sh_impulse_share_28d": 0.05, "dietary_need_declared": None},
}
RANKED = [{"sku": f"SK{i:04d}", "score": 1.0 - i / 10, "category": c, "is_impulse": imp, "is_healthy": not imp,
           "community_rank_28d": i + 1, "bought_before": 0}
          for i, (c, imp) in enumerate([("snacks", True), ("vegetables", False), ("fruit", False), ("drinks", True),
                                        ("grain", False), ("tofu", False), ("dairy", False), ("eggs", False)])]
NOW = datetime(2026, 11, 2, 3, tzinfo=timezone.utc)


class Spending:
    """The spending-health model's interface: at risk when impulse buys dominate."""

    feature_service, trained_at = "spending_health_v1", "2026-11-01T00:00:00+00:00"

    def assess(self, row: dict[str, Any]) -> dict[str, Any]:
        share = float(row.get("sh_impulse_share_28d") or 0)
        return {"risk_score": round(100 * share, 1), "at_risk": share >= 0.5,
                "reasons": [{"feature": "sh_impulse_share_28d", "value": share, "contribution": share,
                             "text": f"{share:.0%} of spending on impulse items"}]}


class Service(ModelService):
    """ModelService over in-memory rows: its own spending-health, policy and impression code."""

    def __init__(self) -> None:
        self.spend, self.policy, self.ledger = Spending(), SpendingPolicy(daily_cap=3), CapLedger()

    def customer_features(self, oneid: str) -> dict[str, Any]:
        if oneid not in ROWS:
            raise UnknownCustomer(oneid)
        return dict(ROWS[oneid])

    def recommend(self, oneid: str, limit: int = 10, now: datetime | None = None,
                  features: dict[str, Any] | None = None) -> dict[str, Any]:
        row = features or self.customer_features(oneid)
        health = self.spend.assess(row)
        d = self.policy.apply(oneid, RANKED, health, bool(row.get("dietary_need_declared")), {}, self.ledger,
                              self.business_day(now or NOW), limit)
        return {"oneid": oneid, "community_id": row["home_community_id"], "items": d.items, "nudges": d.nudges,
                "policy": {"at_risk": d.at_risk, "risk_score": health["risk_score"], "capped": d.capped,
                           "daily_cap": d.cap, "shown_today": d.shown_today, "exempt": d.exempt, "note": d.note},
                "model": {"name": "recommender", "feature_service": "recommendation_v1", "trained_at": "2026-11-01"}}

    def record_impressions(self, oneid: str, skus: list[str], now: datetime | None = None, send_id: str | None = None,
                           features: dict[str, Any] | None = None) -> dict[str, Any]:
        return super().record_impressions(oneid, skus, now or NOW, send_id, features)


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("LASTMILE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LASTMILE_HASH_KEY", "test-key-not-secret")
    for name in ("LASTMILE_API_KEYS_FILE", "LASTMILE_API_AUDIT_LOG", "LASTMILE_API_RATE_PER_MINUTE"):
        monkeypatch.delenv(name, raising=False)
    yield settings()


@pytest.fixture
def app(cfg: Settings) -> Any:
    return create_app(cfg, service=Service())


def key(cfg: Settings, *scopes: str, rate: int | None = None) -> str:
    return create_key(cfg, "test", scopes, rate)[1]


ENDPOINTS = ["/customers/oid_risky/recommendations", "/customers/oid_risky/spending-health", "/customers/oid_risky/features"]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_calls_without_a_valid_key_get_401(cfg: Settings, app: Any, path: str) -> None:
    good = key(cfg, "marketing:read")
    for sent in (None, "", "lm_00000000_guess", good[:-1] + ("A" if good[-1] != "A" else "B"), "not-a-key"):
        status, body, headers = call(app, path, key=sent)
        assert status == 401, (sent, body)
        assert headers["www-authenticate"] == "Bearer" and b"oid_risky" not in body and b"LK0007" not in body
    assert call(app, path, key=good)[0] == 200
    assert call(app, path, headers={"Authorization": f"Bearer {good}"})[0] == 200


def test_post_without_a_key_gets_401_and_counts_nothing(cfg: Settings, app: Any) -> None:
    status, _, _ = call(app, "/customers/oid_risky/recommendations/impressions", method="POST", body={"skus": ["SK0001"]})
    assert status == 401
    reader = key(cfg, "marketing:read")
    assert json.loads(call(app, "/customers/oid_risky/recommendations", key=reader)[1])["policy"]["shown_today"] == 0


def test_a_revoked_key_is_refused_without_a_restart(cfg: Settings, app: Any) -> None:
    secret = key(cfg, "marketing:read")
    assert call(app, ENDPOINTS[2], key=secret)[0] == 200
    revoke_key(cfg, secret.split("_")[1])
    assert call(app, ENDPOINTS[2], key=secret)[0] == 401


def test_a_key_without_the_endpoints_scope_gets_403(cfg: Settings, app: Any) -> None:
    board = key(cfg, "board:read")
    for path in ENDPOINTS:
        status, body, _ = call(app, path, key=board)
        assert status == 403 and b"marketing:read" in body
    reader = key(cfg, "marketing:read")
    status, body, _ = call(app, "/customers/oid_risky/recommendations/impressions", key=reader, method="POST",
                           body={"skus": ["SK0001"]})
    assert status == 403 and b"marketing:write" in body
    assert call(app, ENDPOINTS[2], key=key(cfg, "admin"))[0] == 200


def test_health_fields_are_withheld_from_a_key_without_the_health_scope(cfg: Settings, app: Any) -> None:
    marketing = key(cfg, "marketing:read")
    features = json.loads(call(app, "/customers/oid_declared/features", key=marketing)[1])["features"]
    assert features["dietary_need_declared"] is None and features["credit_tier"] == "B"
    health = json.loads(call(app, "/customers/oid_declared/spending-health", key=marketing)[1])
    assert health["dietary_need_declared"] is None and health["risk_score"] == 61.0
    policy = json.loads(call(app, "/customers/oid_declared/recommendations", key=marketing)[1])["policy"]
    assert policy["exempt"] is None and "dietary" not in policy["note"]


def test_health_fields_go_to_the_health_scope_only_for_consenting_people(cfg: Settings, app: Any) -> None:
    doctor = key(cfg, "marketing:read", "health:read")
    features = json.loads(call(app, "/customers/oid_declared/features", key=doctor)[1])["features"]
    assert features["dietary_need_declared"] is True
    assert json.loads(call(app, "/customers/oid_declared/spending-health", key=doctor)[1])["dietary_need_declared"] is True
    policy = json.loads(call(app, "/customers/oid_declared/recommendations", key=doctor)[1])["policy"]
    assert policy["exempt"] is True and "dietary" in policy["note"]
    # No declaration on file: no consent, so nothing is said about health, even to this key.
    assert json.loads(call(app, "/customers/oid_risky/spending-health", key=doctor)[1])["dietary_need_declared"] is None
    assert json.loads(call(app, "/customers/oid_risky/recommendations", key=doctor)[1])["policy"]["exempt"] is None


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(cfg: Settings) -> None:
    clock = [1000.0]
    app = create_app(cfg, service=Service(), limiter=RateLimiter(clock=lambda: clock[0]))
    slow, other = key(cfg, "marketing:read", rate=30), key(cfg, "marketing:read", rate=30)  # bursts of 3, one every 2 s
    assert [call(app, ENDPOINTS[2], key=slow)[0] for _ in range(3)] == [200, 200, 200]
    status, body, headers = call(app, ENDPOINTS[2], key=slow)
    assert status == 429 and int(headers["retry-after"]) == 2 and b"rate limit" in body
    assert call(app, ENDPOINTS[2], key=other)[0] == 200  # per key
    clock[0] += 2.0
    assert call(app, ENDPOINTS[2], key=slow)[0] == 200
    assert call(app, ENDPOINTS[2], key=slow)[0] == 429


def test_reads_leave_shown_today_unchanged_and_the_post_counts(cfg: Settings, app: Any) -> None:
    reader, sender = key(cfg, "marketing:read", rate=6000), key(cfg, "marketing:write")
    path = "/customers/oid_risky/recommendations?limit=10"
    for _ in range(25):
        answer = json.loads(call(app, path, key=reader)[1])
        assert answer["policy"]["shown_today"] == 0 and len(answer["items"]) == 3
    post = "/customers/oid_risky/recommendations/impressions"
    skus = [i["sku"] for i in answer["items"]]
    status, body, _ = call(app, post, key=sender, method="POST", body={"skus": skus[:2], "send_id": "wechat-0001"})
    assert status == 200, body
    assert json.loads(body) == {"oneid": "oid_risky", "recorded": skus[:2], "refused": [], "shown_today": 2,
                                "capped": True, "daily_cap": 3}
    after = json.loads(call(app, path, key=reader)[1])
    assert after["policy"]["shown_today"] == 2 and len(after["items"]) == 1
    # A retried send counts nothing again; a new one gets only the room left under the cap.
    assert json.loads(call(app, post, key=sender, method="POST", body={"skus": skus[:2], "send_id": "wechat-0001"})[1])["shown_today"] == 2
    last = json.loads(call(app, post, key=sender, method="POST", body={"skus": skus, "send_id": "wechat-0002"})[1])
    assert last["recorded"] == skus[:1] and last["refused"] == skus[1:] and last["shown_today"] == 3


def test_impressions_of_uncapped_customers_are_all_recorded(cfg: Settings, app: Any) -> None:
    sender = key(cfg, "marketing:write")
    skus = [f"SK{i:04d}" for i in range(8)]
    done = json.loads(call(app, "/customers/oid_fine/recommendations/impressions", key=sender, method="POST",
                           body={"skus": skus})[1])
    assert done["recorded"] == skus and not done["capped"] and done["shown_today"] == 8
    assert call(app, "/customers/oid_unknown/recommendations/impressions", key=sender, method="POST",
                body={"skus": skus})[0] == 404
    assert call(app, "/customers/oid_fine/recommendations/impressions", key=sender, method="POST",
                body={"skus": []})[0] == 422


def test_the_audit_log_records_who_read_which_fields_of_whom(cfg: Settings, app: Any) -> None:
    marketing, doctor = key(cfg, "marketing:read"), key(cfg, "marketing:read", "health:read")
    call(app, "/customers/oid_declared/features", key=marketing)
    call(app, "/customers/oid_declared/spending-health", key=doctor)
    call(app, "/customers/oid_risky/recommendations", key=marketing)
    call(app, "/customers/oid_risky/features")  # refused: not a read of anyone's data
    raw = audit_path(cfg).read_text()
    assert marketing not in raw and doctor not in raw and "oid_declared" not in raw and "oid_risky" not in raw
    entries = [json.loads(line) for line in raw.splitlines()]
    assert [(e["key_id"], e["action"]) for e in entries] == [
        (marketing.split("_")[1], "GET features"), (doctor.split("_")[1], "GET spending-health"),
        (marketing.split("_")[1], "GET recommendations")]
    assert entries[0]["fields"] == ["credit", "home_locker", "purchases", "spending_health"]  # no health: withheld
    assert entries[1]["fields"] == ["health", "spending_health"]
    assert all(e["at"].endswith("+00:00") and e["status"] == 200 for e in entries)
    about = list(read_audit(cfg, oneid="oid_declared"))
    assert [e["action"] for e in about] == ["GET features", "GET spending-health"]
    assert stat.S_IMODE(os.stat(audit_path(cfg)).st_mode) == 0o600


def test_no_audit_no_answer(cfg: Settings, app: Any) -> None:
    audit_path(cfg).parent.mkdir(parents=True, exist_ok=True)
    audit_path(cfg).mkdir()  # cannot be appended to
    status, body, _ = call(app, "/customers/oid_declared/features", key=key(cfg, "marketing:read"))
    assert status == 503 and b"audit" in body and b"LK0042" not in body


def test_keys_file_holds_no_secret(cfg: Settings) -> None:
    secret = key(cfg, "marketing:read", "health:read")
    text = keys_path(cfg).read_text()
    assert secret not in text and secret.split("_", 2)[2] not in text
    assert stat.S_IMODE(os.stat(keys_path(cfg)).st_mode) == 0o600
    (entry,) = json.loads(text)["keys"]
    assert entry["scopes"] == ["marketing:read", "health:read"] and len(entry["sha256"]) == 64
    with pytest.raises(ValueError, match="unknown scope"):
        create_key(cfg, "x", ["marketing:everything"])


def test_openapi_shows_the_security_schemes(cfg: Settings, app: Any) -> None:
    status, body, _ = call(app, "/openapi.json")  # the docs themselves need no key
    spec = json.loads(body)
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["Bearer"]["type"] == "http" and schemes["Bearer"]["scheme"] == "bearer"
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if path.startswith("/customers/"):
                assert {"ApiKey": []} in op["security"] and {"401", "403", "429"} <= set(op["responses"]), (path, method)
                assert op["x-required-scope"] in ("marketing:read", "marketing:write")
    assert call(app, "/healthz")[0] == 200


def test_serve_refuses_to_start_without_a_key(cfg: Settings) -> None:
    from typer.testing import CliRunner

    from lastmile.cli import app as cli

    out = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"])
    assert out.exit_code == 2 and "api-key create" in out.output
    created = CliRunner().invoke(cli, ["api-key", "create", "--name", "marketing", "--scopes", "marketing:read"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("lm_") and secret not in keys_path(cfg).read_text()
    listed = CliRunner().invoke(cli, ["api-key", "list", "--json"])
    assert json.loads(listed.stdout)[0]["name"] == "marketing" and secret not in listed.output


def test_redis_password_reaches_feasts_connection_string(monkeypatch: pytest.MonkeyPatch, cfg: Settings) -> None:
    from lastmile.features.store import online_store_config

    monkeypatch.setenv("LASTMILE_FEAST_ONLINE_STORE", "redis://redis:6379/0")
    monkeypatch.setenv("LASTMILE_REDIS_PASSWORD", '12345"x=y')
    conn = online_store_config(settings())["connection_string"]
    # Feast's parse: comma-separated, each value after the first "=" JSON-decoded.
    nodes, params = conn.split(",")[0], dict(p.split("=", 1) for p in conn.split(",")[1:])
    assert nodes == "redis:6379" and json.loads(params["password"]) == '12345"x=y' and params["db"] == "0"
    monkeypatch.setenv("LASTMILE_FEAST_ONLINE_STORE", "rediss://cache.example.com:6380")  # TLS
    assert online_store_config(settings())["connection_string"].startswith("cache.example.com:6380,ssl=true,password=")
