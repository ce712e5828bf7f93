"""HTTP API for marketing automation: recommendations, spending health and features per OneID.

``create_app(cfg)`` builds the FastAPI app; ``lastmile serve`` runs it with uvicorn. Every
customer answer comes from the Feast online store and the saved models (never the warehouse);
the operations board under ``/board`` (:mod:`lastmile.board.web`) reads the warehouse. Errors
are JSON: 401 without a valid API key, 403 for a key lacking the endpoint's scope, 404 for a
OneID the online store does not know, 422 for a malformed request, 429 over the key's rate
limit (with ``Retry-After``), 503 when the models or the store are not set up or the audit
log cannot be written, 500 with no traceback for anything else. OpenAPI docs at /docs, the
schema (with its security schemes) at /openapi.json; both and /healthz need no key.

Who may read what, the rate limits and the audit log: :mod:`lastmile.api_auth`. Reads are
safe: ``GET`` never changes anything; the send path records what it showed with ``POST
/customers/{oneid}/recommendations/impressions`` (that is what the daily cap counts).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from lastmile.api_auth import (
    HEALTH_FEATURES,
    ApiKey,
    AuditLog,
    AuditUnavailable,
    AuthError,
    Forbidden,
    KeyRing,
    RateLimited,
    RateLimiter,
    audit_path,
    feature_categories,
    keys_path,
)
from lastmile.config import Settings, settings as current_settings
from lastmile.models.consent import health_data_consented

log = logging.getLogger("lastmile.api")

OneID = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="The customer's OneID (e.g. oid_…).")]


class Error(BaseModel):
    detail: str | list[dict[str, Any]] = Field(description="What was wrong (422: FastAPI's list of field errors).")


class Item(BaseModel):
    sku: str
    score: float
    category: str | None = None
    is_impulse: bool
    is_healthy: bool
    community_rank_28d: int | None = None
    bought_before: int = 0
    stock: str | None = Field(None, description="would_expire (moved up: stock that would otherwise be written off) or "
                              "selling_out (moved last: the front warehouse is running out); null otherwise.")


class Nudge(BaseModel):
    sku: str
    category: str
    kind: str
    text: str


class Policy(BaseModel):
    at_risk: bool
    risk_score: float
    capped: bool
    daily_cap: int | None = None
    shown_today: int = Field(description="Recommendations recorded as shown today (by POST .../impressions).")
    exempt: bool | None = Field(None, description="Declared dietary need: exempt from the daily cap (medical exception). "
                                "Health field: null unless the key has health:read and the person's declaration is on file.")
    note: str = ""


class ModelInfo(BaseModel):
    name: str
    feature_service: str
    trained_at: str
    candidate_backend: str | None = None
    beats_baseline: bool | None = None


class Recommendations(BaseModel):
    oneid: str
    community_id: str
    items: list[Item]
    nudges: list[Nudge]
    policy: Policy
    model: ModelInfo


class Reason(BaseModel):
    feature: str
    value: float
    contribution: float
    text: str


class SpendingHealth(BaseModel):
    oneid: str
    risk_score: float = Field(description="Over-consumption risk, 0-100.")
    at_risk: bool
    reasons: list[Reason]
    dietary_need_declared: bool | None = Field(None, description="Health field: null unless the key has health:read "
                                               "and the person's declaration is on file.")
    model: ModelInfo


class Features(BaseModel):
    oneid: str
    features: dict[str, Any] = Field(description="Online features; health fields (dietary_need_declared) are null "
                                     "unless the key has health:read and the person's declaration is on file.")


SKU = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


class ImpressionsIn(BaseModel):
    skus: list[SKU] = Field(min_length=1, max_length=50, description="The SKUs the send is about to show (in order).")
    send_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
                                description="The send's own id: a retry with the same id counts nothing again.")


class Impressions(BaseModel):
    oneid: str
    recorded: list[str] = Field(description="Counted as shown today: show these.")
    refused: list[str] = Field(description="Over the daily cap: do not show these.")
    shown_today: int
    capped: bool
    daily_cap: int | None = None


def warm_up(service: Any) -> None:
    """Take start-up costs off the first requests, then freeze what start-up allocated.

    The service runs both online reads once (Feast resolves the feature references and SQLite
    prepares its statements). ``gc.freeze()`` then moves every object alive at that point
    (models, Feast's registry, imported modules: ~200k objects) out of the collector's reach:
    they live as long as the process, and each full collection scanning them paused a request
    for ~150 ms on the serving benchmark. Process-wide, so only for a process that serves.
    """
    import gc

    service.warm()
    gc.collect()
    gc.freeze()


def withhold_health(answer: dict[str, Any], kind: str) -> dict[str, Any]:
    """Null every health-related field of an answer (``kind``: the endpoint)."""
    if kind == "recommendations":
        policy = answer["policy"]
        if policy.get("exempt"):
            policy["note"] = ""
        policy["exempt"] = None
    elif kind == "spending-health":
        answer["dietary_need_declared"] = None
    elif kind == "features":
        for name in HEALTH_FEATURES & set(answer["features"]):
            answer["features"][name] = None
    return answer


def create_app(cfg: Settings | None = None, service: Any = None, warm: bool = False,
               limiter: RateLimiter | None = None) -> FastAPI:
    """The API. ``warm=True`` (``lastmile serve``) builds the service now and warms it (:func:`warm_up`)."""
    from lastmile.models.service import ModelService, ModelsMissing, UnknownCustomer

    cfg = cfg or current_settings()
    app = FastAPI(title="lastmile marketing automation API", version="1",
                  description="Recommendations, spending health and features per OneID, served from the Feast online store. "
                  "Every customer endpoint needs an API key (`lastmile api-key create`) with the scope it names; "
                  "health-related fields need `health:read` and the person's declaration on file.")
    state: dict[str, Any] = {"service": service}
    keyring = KeyRing(keys_path(cfg))
    limiter = limiter or RateLimiter()
    audit = AuditLog(audit_path(cfg), cfg.hash_key_bytes())

    def svc() -> Any:
        if state["service"] is None:
            state["service"] = ModelService(cfg)
        return state["service"]

    if warm:
        try:
            warm_up(svc())
        except ModelsMissing as exc:  # still serve: every customer route answers 503 until trained
            log.warning("API not warmed up: %s", exc)

    @app.exception_handler(UnknownCustomer)
    async def _unknown(_: Request, exc: UnknownCustomer) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": f"unknown OneID: {exc.args[0]}"})

    @app.exception_handler(ModelsMissing)
    async def _missing(_: Request, exc: ModelsMissing) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.exception_handler(AuthError)
    async def _unauthorized(_: Request, exc: AuthError) -> JSONResponse:
        return JSONResponse(status_code=401, content={"detail": str(exc)}, headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(Forbidden)
    async def _forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return JSONResponse(status_code=403, content={"detail": str(exc)})

    @app.exception_handler(RateLimited)
    async def _limited(_: Request, exc: RateLimited) -> JSONResponse:
        return JSONResponse(status_code=429, content={"detail": str(exc)}, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(AuditUnavailable)
    async def _no_audit(_: Request, exc: AuditUnavailable) -> JSONResponse:
        log.error("%s", exc)
        return JSONResponse(status_code=503, content={"detail": "audit log unavailable: personal data is not served without it"})

    @app.middleware("http")
    async def _never_a_traceback(request: Request, call_next: Any) -> Any:
        # Starlette's own 500 handling re-raises after answering; this answers JSON and stops there.
        try:
            return await call_next(request)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            log.exception("request failed: %s", request.url.path)
            return JSONResponse(status_code=500, content={"detail": f"internal error ({type(exc).__name__})"})

    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="ApiKey",
                                  description="An API key from `lastmile api-key create`.")
    bearer = HTTPBearer(auto_error=False, scheme_name="Bearer", description="The same API key as a bearer token.")

    def needs(scope: str) -> Any:
        """A dependency: the caller's key, authenticated, within its rate limit, holding ``scope``."""

        # Defaults, not Annotated: the annotations are strings (postponed), and FastAPI resolves
        # them in the module's namespace, where these local schemes do not exist.
        async def caller(header_key: str | None = Security(api_key_header),
                         token: HTTPAuthorizationCredentials | None = Security(bearer)) -> ApiKey:
            key = keyring.authenticate(header_key or (token.credentials if token else None))
            limiter.take(key)
            if not key.allows(scope):
                raise Forbidden(f"key {key.id} ({key.name}) lacks the scope {scope}")
            return key

        return Depends(caller)

    def sees_health(key: ApiKey, features: dict[str, Any]) -> bool:
        return key.allows("health:read") and health_data_consented(features)

    errors: dict[int | str, dict[str, Any]] = {code: {"model": Error} for code in (401, 403, 404, 422, 429, 503)}
    marketing: dict[str, Any] = {"tags": ["customers"], "responses": errors, "openapi_extra": {"x-required-scope": "marketing:read"}}

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/customers/{oneid}/recommendations", response_model=Recommendations, **marketing)
    def recommendations(oneid: OneID, limit: Annotated[int, Query(ge=1, le=50)] = 10,
                        key: ApiKey = needs("marketing:read")) -> dict[str, Any]:
        """Re-ranked recommendations, with the spending-health policy (cap, nudges) applied.

        Scope marketing:read. A read: it counts nothing against the daily cap; record what a
        send shows with POST .../recommendations/impressions.
        """
        service = svc()
        row = service.customer_features(oneid)
        answer = service.recommend(oneid, limit=limit, features=row)
        health = sees_health(key, row)
        if not health:
            withhold_health(answer, "recommendations")
        audit.record(key, "GET recommendations", oneid, ["spending_health", "purchases"] + (["health"] if health else []))
        return answer

    @app.post("/customers/{oneid}/recommendations/impressions", response_model=Impressions, tags=["customers"],
              responses=errors, openapi_extra={"x-required-scope": "marketing:write"})
    def impressions(oneid: OneID, body: ImpressionsIn, key: ApiKey = needs("marketing:write")) -> dict[str, Any]:
        """Record the recommendations a send shows (what the daily cap counts). Scope marketing:write.

        Record before sending and send only ``recorded``: for a customer under the daily cap,
        SKUs beyond it come back in ``refused``, uncounted.
        """
        service = svc()
        row = service.customer_features(oneid)
        done = service.record_impressions(oneid, list(body.skus), send_id=body.send_id, features=row)
        audit.record(key, "POST impressions", oneid, ["recommendations_shown"])
        return done

    @app.get("/customers/{oneid}/spending-health", response_model=SpendingHealth, **marketing)
    def spending_health(oneid: OneID, key: ApiKey = needs("marketing:read")) -> dict[str, Any]:
        """Over-consumption risk score with its reasons. Scope marketing:read."""
        service = svc()
        row = service.customer_features(oneid)
        answer = service.spending_health(oneid, features=row)
        health = sees_health(key, row)
        if not health:
            withhold_health(answer, "spending-health")
        audit.record(key, "GET spending-health", oneid, ["spending_health"] + (["health"] if health else []))
        return answer

    @app.get("/customers/{oneid}/features", response_model=Features, **marketing)
    def features(oneid: OneID, key: ApiKey = needs("marketing:read")) -> dict[str, Any]:
        """The customer's online features (profile, credit, spending health, affinity, real time, consent). Scope marketing:read."""
        row = svc().customer_features(oneid)
        values = {k: v for k, v in row.items() if k != "oneid"}
        answer = {"oneid": oneid, "features": values}
        health = sees_health(key, row)
        if not health:
            withhold_health(answer, "features")
        shown = [k for k, v in values.items() if v is not None]
        audit.record(key, "GET features", oneid, feature_categories(shown))
        return answer

    # The operations board (/board, /board/api/...): same keys and limits, scope board:read.
    from lastmile.board.web import mount_board

    mount_board(app, cfg, keyring, limiter)
    # Audiences (/audiences, /customers/{oneid}/audiences): published membership, scope marketing:read.
    from lastmile.api_audiences import mount_audiences

    mount_audiences(app, cfg, needs, audit, errors)
    # Stocking (/communities/{id}/forecast, /communities/{id}/stocking-plan): scope board:read.
    from lastmile.api_stocking import mount_stocking

    mount_stocking(app, cfg, needs, errors)
    # The group leader's daily brief (/leaders/{leader_id}/brief): scope leaders:read.
    from lastmile.api_leaders import mount_leaders

    mount_leaders(app, cfg, needs, audit, errors)
    app.state.keyring = keyring
    app.state.audit = audit
    return app
