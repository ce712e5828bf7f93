"""HTTP API contract: every answer matches the OpenAPI schema; 404 unknown OneID, 422 bad
request, never a traceback. Requests go straight to the ASGI app (httpx, which FastAPI's
TestClient needs, is not in the lock; schemathesis neither).

The session's trained warehouse (conftest ``trained_warehouse``): the default simulation,
feature store materialized, both models trained; shared with the model tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from lastmile.api import create_app
from lastmile.config import Settings
from lastmile.warehouse import connect
from tests.warehouses import feature_home

pytestmark = pytest.mark.slow


def call(app: Any, path: str) -> tuple[int, bytes]:
    """One GET through the ASGI interface."""
    path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(b"host", b"test")], "client": ("127.0.0.1", 1), "server": ("test", 80)}
    out: dict[str, Any] = {"status": None, "body": b""}

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return out["status"], out["body"]


@pytest.fixture(scope="module")
def api(trained_warehouse) -> Iterator[tuple[Settings, Any, dict]]:
    home, _, _ = trained_warehouse
    with feature_home(home) as cfg:
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
        assert {"200", "404", "422"} <= set(spec["paths"][p]["get"]["responses"])
    status, _ = call(app, "/docs")
    assert status == 200
