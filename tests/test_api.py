"""HTTP API contract: every answer matches the OpenAPI schema; 401 without a key, 404 unknown
OneID, 422 bad request, never a traceback; health fields only for the health scope and for
consenting people; reads leave the daily cap alone. Requests go straight to the ASGI app
(httpx, which FastAPI's TestClient needs, is not in the lock; schemathesis neither).

The session's trained warehouse (conftest ``trained_warehouse``): the default simulation,
feature store materialized, both models trained; shared with the model tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import jsonschema
import pytest

from lastmile.api import create_app
from lastmile.api_auth import audit_path, create_key, read_audit
from lastmile.config import Settings
from lastmile.warehouse import connect
from tests.asgi import call as asgi_call
from tests.warehouses import feature_home

pytestmark = pytest.mark.slow

#: scope -> secret of a key created for the module (the trained warehouse's home stays untouched).
KEYS: dict[str, str] = {}


def call(app: Any, path: str, key: str | None = None) -> tuple[int, bytes]:
    """One GET through the ASGI interface, with the module's admin key unless ``key`` is given."""
    status, body, _ = asgi_call(app, path, key=KEYS.get("admin") if key is None else key)
    return status, body


@pytest.fixture(scope="module")
def api(trained_warehouse, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Any, dict]]:
    home, _, _ = trained_warehouse
    auth = tmp_path_factory.mktemp("api")
    with feature_home(home) as cfg:
        cfg = replace(cfg, api_keys_file=str(auth / "keys.json"), api_audit_log=str(auth / "audit.jsonl"),
                      api_rate_per_minute=100_000)
        for scopes in (["admin"], ["marketing:read"], ["marketing:read", "health:read"], ["marketing:write"]):
            KEYS[",".join(scopes)] = create_key(cfg, "test", scopes)[1]
        app = create_app(cfg)
        status, body = call(app, "/openapi.json")
        assert status == 200
        yield cfg, app, json.loads(body)


def _validate(spec: dict, path: str, status: int, body: bytes) -> Any:
    data = json.loads(body)  # every answer is JSON, never a traceback page
    op = spec["paths"][path]["get"]
    schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
    jsonschema.validate(data, {**schema, "components": spec["components"]})
    return data


def _oneid(cfg: Settings) -> str:
    return connect(cfg).scalar("SELECT oneid FROM feat_customer_profile GROUP BY oneid ORDER BY max(orders_total) DESC, oneid LIMIT 1")


@pytest.mark.parametrize("endpoint", ["recommendations", "spending-health", "features"])
def test_known_customer_matches_the_schema(api, endpoint: str) -> None:
    cfg, app, spec = api
    status, body = call(app, f"/customers/{_oneid(cfg)}/{endpoint}")
    assert status == 200, body
    data = _validate(spec, f"/customers/{{oneid}}/{endpoint}", 200, body)
    assert data["oneid"] == _oneid(cfg)


def test_recommendations_carry_model_and_policy(api) -> None:
    cfg, app, spec = api
    status, body = call(app, f"/customers/{_oneid(cfg)}/recommendations?limit=5")
    data = _validate(spec, "/customers/{oneid}/recommendations", status, body)
    assert data["model"]["feature_service"] == "recommendation_v1"
    assert len(data["items"]) <= 5 and {"at_risk", "capped", "exempt"} <= set(data["policy"])


@pytest.mark.parametrize("endpoint", ["recommendations", "spending-health", "features"])
def test_unknown_oneid_is_404(api, endpoint: str) -> None:
    _, app, spec = api
    status, body = call(app, f"/customers/oid_00000000000000000000/{endpoint}")
    assert status == 404
    assert "unknown OneID" in _validate(spec, f"/customers/{{oneid}}/{endpoint}", 404, body)["detail"]


@pytest.mark.parametrize("path", ["/customers/bad%20id!/features", "/customers/oid_x/recommendations?limit=0",
                                  "/customers/oid_x/recommendations?limit=abc", "/customers/" + "x" * 80 + "/features"])
def test_bad_requests_are_422(api, path: str) -> None:
    _, app, spec = api
    status, body = call(app, path)
    assert status == 422
    template = "/customers/{oneid}/" + path.split("/")[3].split("?")[0]
    _validate(spec, template, 422, body)


def test_internal_errors_are_json_without_traceback(api) -> None:
    cfg, _, _ = api

    class Broken:
        def customer_features(self, oneid: str) -> dict:
            raise RuntimeError("secret internals")

    app = create_app(cfg, service=Broken())
    status, body = call(app, "/customers/oid_x/features")
    assert status == 500 and b"Traceback" not in body and b"secret internals" not in body
    assert json.loads(body)["detail"].startswith("internal error")


def test_openapi_documents_every_endpoint(api) -> None:
    _, app, spec = api
    for p in ["/customers/{oneid}/recommendations", "/customers/{oneid}/spending-health", "/customers/{oneid}/features"]:
        assert {"200", "401", "403", "404", "422", "429"} <= set(spec["paths"][p]["get"]["responses"])
    assert {"ApiKey", "Bearer"} <= set(spec["components"]["securitySchemes"])
    status, _ = call(app, "/docs")
    assert status == 200


def _declared(cfg: Settings) -> tuple[str, str]:
    """A person with a dietary declaration on file and one without (both known online)."""
    w = connect(cfg)
    declared = w.scalar("SELECT oneid FROM ref_dietary_declarations FINAL WHERE dietary_need ORDER BY oneid LIMIT 1")
    other = w.scalar("SELECT oneid FROM feat_customer_profile WHERE oneid NOT IN "
                     "(SELECT oneid FROM ref_dietary_declarations) ORDER BY oneid LIMIT 1")
    return declared, other


@pytest.mark.parametrize("endpoint", ["recommendations", "spending-health", "features"])
def test_calls_without_a_key_get_401(api, endpoint: str) -> None:
    cfg, app, spec = api
    status, body = call(app, f"/customers/{_oneid(cfg)}/{endpoint}", key="")
    assert status == 401
    assert "API key" in _validate(spec, f"/customers/{{oneid}}/{endpoint}", 401, body)["detail"]


def test_health_fields_follow_the_scope_and_the_persons_consent(api) -> None:
    cfg, app, spec = api
    declared, other = _declared(cfg)
    marketing, health = KEYS["marketing:read"], KEYS["marketing:read,health:read"]
    for endpoint in ("spending-health", "features"):
        got = {who: {scope: _validate(spec, f"/customers/{{oneid}}/{endpoint}", 200,
                                      call(app, f"/customers/{who}/{endpoint}", key=key)[1])
                     for scope, key in (("marketing", marketing), ("health", health))} for who in (declared, other)}
        field = (lambda d: d["dietary_need_declared"]) if endpoint == "spending-health" else (lambda d: d["features"]["dietary_need_declared"])
        assert field(got[declared]["health"]) is True, endpoint
        assert field(got[declared]["marketing"]) is None and field(got[other]["health"]) is None, endpoint
    assert json.loads(call(app, f"/customers/{declared}/recommendations", key=marketing)[1])["policy"]["exempt"] is None
    assert json.loads(call(app, f"/customers/{declared}/recommendations", key=health)[1])["policy"]["exempt"] is not None


def test_repeated_gets_leave_shown_today_unchanged_the_post_changes_it(api) -> None:
    cfg, app, spec = api
    reader = KEYS["marketing:read"]
    oneid = _oneid(cfg)
    path = f"/customers/{oneid}/recommendations?limit=3"
    answers = [json.loads(call(app, path, key=reader)[1]) for _ in range(25)]
    assert {a["policy"]["shown_today"] for a in answers} == {answers[0]["policy"]["shown_today"]}
    before = answers[0]["policy"]["shown_today"]
    skus = [i["sku"] for i in answers[0]["items"]][:1]
    status, body, _ = asgi_call(app, f"/customers/{oneid}/recommendations/impressions", key=KEYS["marketing:write"],
                                method="POST", body={"skus": skus})
    assert status == 200, body
    assert json.loads(body)["shown_today"] == before + 1
    assert json.loads(call(app, path, key=reader)[1])["policy"]["shown_today"] == before + 1


def test_sensitive_reads_are_in_the_audit_log(api) -> None:
    cfg, app, _ = api
    declared, _ = _declared(cfg)
    call(app, f"/customers/{declared}/features", key=KEYS["marketing:read,health:read"])
    assert declared not in audit_path(cfg).read_text()
    last = list(read_audit(cfg, oneid=declared))[-1]
    assert last["key_id"] == KEYS["marketing:read,health:read"].split("_")[1] and last["action"] == "GET features"
    assert {"health", "credit", "home_locker"} <= set(last["fields"])
