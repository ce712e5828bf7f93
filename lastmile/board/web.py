"""The board's routes in the API app (``lastmile serve``): the page, its JSON and its assets.

* ``GET /board`` (every community) and ``GET /board/{community_id}`` (one): the page. It polls
  ``/board/api/board`` every 1.5 s and redraws in place (no reload).
* ``GET /board/api/board``: every panel at once; ``GET /board/api/{panel}``: one panel. Both
  take ``community`` (empty: all) and ``as_of`` (``YYYY-MM-DD``; empty: the newest order's
  business day). Their JSON is described by the models below, so ``/openapi.json`` documents it.
* ``GET /board/static/...``: the page's script and style, and plotly.js from the plotly wheel
  (no CDN: the board works offline).

Authentication is the API's: a key with the ``board:read`` scope (``admin`` has it) in
``X-API-Key`` or ``Authorization: Bearer``. A browser cannot send headers from an address,
so ``/board?key=<key>`` once checks the key, stores it in an HttpOnly, SameSite=Strict cookie
scoped to ``/board`` and redirects to the same address without the key (so it does not
stay in the history or on screen); later requests carry the cookie. Without a valid key the
page answers 401 with a form asking for one. Screens get a read-only key:
``lastmile api-key create --name wall --scopes board:read``.
"""

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Path as PathParam, Query, Request, Security
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import APIKeyCookie, APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, create_model

from lastmile.api_auth import ApiKey, AuthError, Forbidden, KeyRing, RateLimiter
from lastmile.board.clock import BadAsOf, parse_as_of
from lastmile.board.panels import PANELS
from lastmile.board.source import BoardSource, BoardUnavailable
from lastmile.config import Settings

STATIC = Path(__file__).parent / "static"
COOKIE = "lastmile_board"
SCOPE = "board:read"
COMMUNITY_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"


# --- the JSON, for the OpenAPI schema -----------------------------------------------------

class Window(BaseModel):
    """Which business day the figures are for, and up to which instant."""

    day: str = Field(description="The business day shown (YYYY-MM-DD, in `zone`).")
    zone: str = Field(description="LASTMILE_BUSINESS_TZ.")
    day_start: str
    day_end: str
    week_start: str = Field(description="Monday of the business week holding `day`.")
    now: str = Field(description="The instant 'so far today' figures stop at (UTC).")
    wall_now: str = Field(description="The wall clock when computed (UTC); ingestion figures are measured against it.")
    newest_event_at: str | None = Field(None, description="Newest order, pickup or locker reading in the warehouse.")
    newest_order_at: str | None = None
    day_source: str = Field(description="newest_order (default: the newest order's business day), as_of, or wall_clock.")
    now_source: str = Field(description="wall_clock, newest_event (the data's own clock in a past day), end_of_day or start_of_day.")


class Absent(BaseModel):
    query: str
    missing_tables: list[str]


class PickupFigures(BaseModel):
    ready: int = Field(description="Orders whose pickup slot started today, up to now.")
    collected: int = Field(description="Of those, orders with a pickup event up to now.")
    completion_rate: float | None = Field(description="collected / ready (null with nothing ready).")
    overdue: int = Field(description="Ready orders past the end of their slot and not collected.")
    median_ready_to_pickup_min: float | None = Field(description="Median minutes from slot start to first pickup.")


class CommunityPickups(PickupFigures):
    community_id: str


class LockerPickups(PickupFigures):
    community_id: str
    locker_id: str


class Pickups(BaseModel):
    total: PickupFigures
    by_community: list[CommunityPickups]
    by_locker: list[LockerPickups]


class StarsDay(BaseModel):
    day: str
    reviews: int
    stars: float


class StiScores(BaseModel):
    service_temperature: float | None = Field(None, description="Weighted total, 0-100.")
    traceability_score: float | None = None
    cold_chain_score: float | None = None
    punctuality_score: float | None = None
    communication_score: float | None = None
    after_sales_score: float | None = None
    packaging_score: float | None = None


class CommunitySti(StiScores):
    community_id: str
    orders: int


class Satisfaction(BaseModel):
    stars_today: float | None = Field(None, description="Mean stars of reviews written today.")
    reviews_today: int | None = None
    stars_7d: float | None = Field(None, description="Mean stars over the 7 business days ending today.")
    reviews_7d: int | None = None
    by_day: list[StarsDay] = []
    sti_week_start: str | None = Field(None, description="The week of the service-temperature index shown.")
    sti: StiScores | None = Field(None, description="One community's index, or the orders-weighted mean over several.")
    sti_by_community: list[CommunitySti] = []


class Compartment(BaseModel):
    compartment_id: str
    product_class: str
    temperature_c: float | None
    humidity_pct: float | None
    door: str | None
    power: str | None
    state: str = Field(description="ok, door_open, on_battery, power_off, out_of_range, excursion (out of range for at "
                       "least the cold-chain job's minimum) or silent (no reading for longer than its silence threshold).")
    range_c: list[float | None] = Field(description="[lowest, highest] allowed °C for the product class (null: unbounded).")
    last_reading_at: str | None
    out_of_range_min: float | None
    out_of_range_since: str | None


class Locker(BaseModel):
    locker_id: str
    community_id: str
    compartments: list[Compartment]


class Excursion(Compartment):
    locker_id: str
    community_id: str


class IncidentCount(BaseModel):
    kind: str
    severity: str
    incidents: int


class ColdChain(BaseModel):
    lockers: list[Locker] = []
    compartments: int | None = None
    states: dict[str, int] = {}
    open_excursions: int | None = None
    excursions: list[Excursion] = []
    claims_auto_approved_today: int | None = Field(None, description="Auto-approved claim decisions for incidents that started today.")
    compensation_auto_approved_cny: float | None = None
    incidents_today: list[IncidentCount] = []


class HourSales(BaseModel):
    hour: int
    orders: int
    amount_cny: float


class BestSeller(BaseModel):
    sku: str
    name: str | None
    name_en: str | None
    category: str | None
    qty: int
    amount_cny: float
    orders: int


class Availability(BaseModel):
    available: bool
    reason: str = ""
    tables: list[str] = []


class Sales(BaseModel):
    orders_today: int
    amount_today_cny: float
    by_hour: list[HourSales]
    best_sellers: list[BestSeller]
    forecast: Availability = Field(description="The forecast line: absent until a forecast table exists (never faked).")
    stock: Availability = Field(description="Surplus / about to sell out: absent until inventory is in the warehouse.")


class Compensation(BaseModel):
    order_id: str
    decision: str
    compensation_cny: float
    severity: str
    kind: str
    community_id: str
    locker_id: str
    started_at: str | None
    reason: str


class QuarantineReason(BaseModel):
    reason: str
    last_hour: int
    hourly_before: float = Field(description="Hourly mean over the 24 hours before the last hour.")
    spike: bool


class BatchAlert(BaseModel):
    alert_id: str
    batch_id: str
    sku: str
    origin: str
    bad: int = Field(description="Orders with a bad review or claim blamed on the batch.")
    feedback: int = Field(description="Orders of the batch with a review or claim.")
    bad_rate: float
    baseline_rate: float = Field(description="The SKU baseline the batch was tested against.")
    alert_at: str | None


class BatchQualityFeed(Availability):
    alerts: list[BatchAlert] = Field(default=[], description="Batches alerted today, newest first (empty until the table exists).")


class Alerts(BaseModel):
    compensations: list[Compensation] = []
    quarantine: list[QuarantineReason] = []
    quarantine_spikes: list[str] = []
    journeys: Availability
    batch_quality: BatchQualityFeed


class TableIngest(BaseModel):
    table: str
    last_10s: int
    last_60s: int
    last_hour: int
    lag_p50_ms: float | None


class Pipeline(BaseModel):
    events_per_s: float | None = Field(None, description="Rows written to raw tables and quarantine in the last 10 s, per second.")
    events_last_minute: int | None = None
    freshness_p50_s: float | None = Field(None, description="Median occurred_at → warehouse delay over the last minute (slowest table).")
    last_ingest_age_s: float | None = None
    quarantined_share_last_hour: float | None = None
    quarantined_share_all: float | None = None
    by_table: list[TableIngest] = []
    dbt: dict[str, Any] | None = Field(None, description="The last dbt command: command, at, elapsed_s, statuses, success.")
    quality_gate: dict[str, Any] | None = Field(None, description="The last quality gate: at, success, evaluated, failed, suites.")
    worker: dict[str, Any] | None = Field(None, description="The stream worker's status file, when it shares this data directory.")


def _panel_model(name: str, figures: type[BaseModel]) -> type[BaseModel]:
    return create_model(
        f"{name.title().replace('_', '')}Panel",
        __doc__=f"The {name} panel: its figures, the statements not run (tables absent) and why, its definitions.",
        name=(str, ...), title=(dict[str, str], Field(description="en and zh")), source=(str, ...), figures=(figures, ...),
        absent=(list[Absent], Field(description="Statements not run because their tables are not in the warehouse.")),
        definitions=(dict[str, str], Field(description="What each figure means.")),
        seconds=(float, Field(description="Time to compute the panel.")))


FIGURES: dict[str, type[BaseModel]] = {"pickups": Pickups, "satisfaction": Satisfaction, "cold_chain": ColdChain,
                                       "sales": Sales, "alerts": Alerts, "pipeline": Pipeline}
PANEL_MODELS = {name: _panel_model(name, model) for name, model in FIGURES.items()}
assert set(PANEL_MODELS) == set(PANELS), "every panel needs its response model"

PanelsModel = create_model("BoardPanels", **{name: (model, ...) for name, model in PANEL_MODELS.items()})


class Board(BaseModel):
    community_id: str | None = Field(description="The community shown; null: every community.")
    window: Window
    panels: PanelsModel  # type: ignore[valid-type]
    seconds: float
    communities: list[dict[str, Any]] = Field([], description="Communities with orders (community_id, name): the page's menu.")


# --- the routes ---------------------------------------------------------------------------

def board_router(cfg: Settings, keyring: KeyRing, limiter: RateLimiter, source: BoardSource | None = None) -> APIRouter:
    """The board's routes; ``keyring`` and ``limiter`` are the API's own (one key file, one limit)."""
    source = source or BoardSource(cfg)
    router = APIRouter()
    header = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="ApiKey")
    bearer = HTTPBearer(auto_error=False, scheme_name="Bearer")
    cookie = APIKeyCookie(name=COOKIE, auto_error=False, scheme_name="BoardCookie",
                          description="Set by opening /board?key=<key> once (HttpOnly).")

    def reader(header_key: str | None = Security(header), token: HTTPAuthorizationCredentials | None = Security(bearer),
               cookie_key: str | None = Security(cookie)) -> ApiKey:
        key = keyring.authenticate(header_key or (token.credentials if token else None) or cookie_key)
        limiter.take(key)
        if not key.allows(SCOPE):
            raise Forbidden(f"key {key.id} ({key.name}) lacks the scope {SCOPE}")
        return key

    errors: dict[int | str, dict[str, Any]] = {code: {"description": text} for code, text in (
        (401, "No valid API key"), (403, "The key lacks board:read"), (422, "Bad community or as_of"),
        (429, "Over the key's rate limit"), (503, "The warehouse cannot be read now (the reason says what to do)"))}
    api = {"tags": ["board"], "responses": errors, "openapi_extra": {"x-required-scope": SCOPE}}

    Community = Annotated[str, Query(pattern=r"^[A-Za-z0-9_.:-]{0,64}$", description="One community; empty: every community.")]
    AsOf = Annotated[str, Query(description="Business day YYYY-MM-DD; empty: the newest order's business day.")]

    def compute(community: str, as_of: str) -> dict[str, Any] | JSONResponse:
        try:
            day = parse_as_of(as_of)
        except BadAsOf as exc:
            return JSONResponse(status_code=422, content={"detail": str(exc)})
        try:
            return source.board(community, day)
        except BoardUnavailable as exc:
            return JSONResponse(status_code=503, content={"detail": str(exc)})

    @router.get("/board/api/board", response_model=Board, **api)
    def board_json(community: Community = "", as_of: AsOf = "", _: ApiKey = Depends(reader)) -> Any:
        """Every panel of the board for one community or all. Scope board:read."""
        found = compute(community, as_of)
        if isinstance(found, JSONResponse):
            return found
        try:
            menu = source.communities()
        except BoardUnavailable as exc:
            return JSONResponse(status_code=503, content={"detail": str(exc)})
        except Exception:  # noqa: BLE001 - the menu is a convenience; the figures stand without it
            menu = []
        return {**found, "communities": menu}

    def one_panel(name: str) -> Any:
        def panel_json(community: Community = "", as_of: AsOf = "", _: ApiKey = Depends(reader)) -> Any:
            found = compute(community, as_of)
            if isinstance(found, JSONResponse):
                return found
            return found["panels"][name]

        panel = PANELS[name]
        panel_json.__doc__ = f"{panel.title_en} ({panel.title_zh}): {panel.source}. Scope board:read."
        panel_json.__name__ = f"board_{name}"
        return panel_json

    for name in PANELS:
        router.add_api_route(f"/board/api/{name}", one_panel(name), methods=["GET"], response_model=PANEL_MODELS[name],
                             summary=f"Board panel: {PANELS[name].title_en}", **api)

    @router.get("/board/static/{asset}", include_in_schema=False)
    def static(asset: Annotated[str, PathParam(pattern=r"^[a-z0-9_.-]+\.(js|css)$")]) -> Response:
        if asset == "plotly.min.js":
            path = plotly_js()
        else:
            path = STATIC / asset
        if not path.is_file():
            return JSONResponse(status_code=404, content={"detail": f"no asset {asset}"})
        return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})

    def page(request: Request, community: str, key: str | None) -> Response:
        if key:
            return _login(request, key)
        try:
            reader(request.headers.get("x-api-key"), _bearer_of(request), request.cookies.get(COOKIE))
        except (AuthError, Forbidden) as exc:
            return HTMLResponse(_login_page(str(exc)), status_code=401 if isinstance(exc, AuthError) else 403)
        html = (STATIC / "board.html").read_text(encoding="utf-8")
        return HTMLResponse(html.replace("{{community}}", _attr(community)).replace("{{zone}}", _attr(cfg.business_tz)),
                            headers={"Cache-Control": "no-store"})

    def _login(request: Request, key: str) -> Response:
        try:
            found = keyring.authenticate(key)
            if not found.allows(SCOPE):
                raise Forbidden(f"key {found.id} ({found.name}) lacks the scope {SCOPE}")
        except (AuthError, Forbidden) as exc:
            return HTMLResponse(_login_page(str(exc)), status_code=401 if isinstance(exc, AuthError) else 403)
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "key"]
        target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
        answer = RedirectResponse(target, status_code=303)
        answer.set_cookie(COOKIE, key, httponly=True, samesite="strict", path="/board",
                          secure=request.url.scheme == "https", max_age=90 * 24 * 3600)
        return answer

    @router.get("/board", response_class=HTMLResponse, tags=["board"],
                responses={401: {"description": "No valid key: a form asking for one"}})
    def board_page(request: Request, key: Annotated[str | None, Query(description="An API key with board:read, once: "
                                                                       "stored in an HttpOnly cookie, then removed from the address.")] = None) -> Response:
        """The board page for every community (``?as_of=YYYY-MM-DD``, ``?theme=dark|light`` optional)."""
        return page(request, "", key)

    @router.get("/board/{community_id}", response_class=HTMLResponse, tags=["board"],
                responses={401: {"description": "No valid key: a form asking for one"}})
    def community_page(request: Request, community_id: Annotated[str, PathParam(pattern=COMMUNITY_PATTERN)],
                       key: Annotated[str | None, Query()] = None) -> Response:
        """The board page for one community."""
        return page(request, community_id, key)

    return router


def _bearer_of(request: Request) -> HTTPAuthorizationCredentials | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return HTTPAuthorizationCredentials(scheme=scheme, credentials=value) if scheme.lower() == "bearer" and value else None


def _attr(text: str) -> str:
    return (text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;"))


def _login_page(reason: str) -> str:
    return ("<!doctype html><html lang='zh'><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
            "<link rel='icon' href='data:,'><title>运营看板 Operations board</title>"
            "<link rel='stylesheet' href='/board/static/board.css'></head><body class='login'>"
            "<form method='get'><h1>运营看板 Operations board</h1>"
            f"<p class='reason'>{_attr(reason)}</p>"
            "<label>API key (scope board:read)<br><input name='key' type='password' autocomplete='off' required></label>"
            "<button type='submit'>进入 Enter</button>"
            "<p class='hint'>lastmile api-key create --name wall --scopes board:read</p></form></body></html>")


def plotly_js() -> Path:
    """plotly.js as shipped inside the plotly wheel (the board never loads it from a CDN)."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def mount_board(app: Any, cfg: Settings, keyring: KeyRing, limiter: RateLimiter, source: BoardSource | None = None) -> BoardSource:
    """Add the board's routes to the API app; returns the board's warehouse source."""
    source = source or BoardSource(cfg)
    app.include_router(board_router(cfg, keyring, limiter, source))
    app.state.board = source
    return source



def how_to_open(cfg: Settings, host: str = "127.0.0.1", port: int = 8000) -> dict[str, str]:
    """Where the board is and how to start it (``lastmile run`` prints this at its end)."""
    from lastmile.api_auth import active_keys

    has_key = any(k.allows(SCOPE) for k in active_keys(cfg))
    return {"url": f"http://{host}:{port}/board",
            "start": "lastmile serve", "key": (
                "open it once with ?key=<a key with board:read>" if has_key else
                "create a key first: lastmile api-key create --name wall --scopes board:read, then open it once with ?key=<key>")}
