"""HTTP API for marketing automation: recommendations, spending health and features per OneID.

``create_app(cfg)`` builds the FastAPI app; ``lastmile serve`` runs it with uvicorn. Every
answer comes from the Feast online store and the saved models (never the warehouse). Errors
are JSON: 404 for a OneID the online store does not know, 422 for a malformed request, 503
when the models or the store are not set up, 500 with no traceback for anything else.
OpenAPI docs at /docs, the schema at /openapi.json.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from lastmile.config import Settings, settings as current_settings

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
    shown_today: int
    exempt: bool = Field(description="Declared dietary need: exempt from the daily cap (medical exception).")
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
    dietary_need_declared: bool
    model: ModelInfo


class Features(BaseModel):
    oneid: str
    features: dict[str, Any]


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


def create_app(cfg: Settings | None = None, service: Any = None, warm: bool = False) -> FastAPI:
    """The API. ``warm=True`` (``lastmile serve``) builds the service now and warms it (:func:`warm_up`)."""
    from lastmile.models.service import ModelService, ModelsMissing, UnknownCustomer

    app = FastAPI(title="lastmile marketing automation API", version="1",
                  description="Recommendations, spending health and features per OneID, served from the Feast online store.")
    state: dict[str, Any] = {"service": service}

    def svc() -> Any:
        if state["service"] is None:
            state["service"] = ModelService(cfg or current_settings())
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

    @app.middleware("http")
    async def _never_a_traceback(request: Request, call_next: Any) -> Any:
        # Starlette's own 500 handling re-raises after answering; this answers JSON and stops there.
        try:
            return await call_next(request)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            log.exception("request failed: %s", request.url.path)
            return JSONResponse(status_code=500, content={"detail": f"internal error ({type(exc).__name__})"})

    errors = {404: {"model": Error}, 422: {"model": Error}, 503: {"model": Error}}

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/customers/{oneid}/recommendations", response_model=Recommendations, responses=errors, tags=["customers"])
    def recommendations(oneid: OneID, limit: Annotated[int, Query(ge=1, le=50)] = 10) -> dict[str, Any]:
        """Re-ranked recommendations, with the spending-health policy (cap, nudges) applied."""
        return svc().recommend(oneid, limit=limit)

    @app.get("/customers/{oneid}/spending-health", response_model=SpendingHealth, responses=errors, tags=["customers"])
    def spending_health(oneid: OneID) -> dict[str, Any]:
        """Over-consumption risk score with its reasons."""
        return svc().spending_health(oneid)

    @app.get("/customers/{oneid}/features", response_model=Features, responses=errors, tags=["customers"])
    def features(oneid: OneID) -> dict[str, Any]:
        """The customer's online features (profile, credit, spending health, affinity, real time, consent)."""
        row = svc().customer_features(oneid)
        return {"oneid": oneid, "features": {k: v for k, v in row.items() if k != "oneid"}}

    return app
