"""The API's leader route: ``GET /leaders/{leader_id}/brief``, the group leader's daily brief.

Mounted by :func:`lastmile.api.create_app` behind the same keys, rate limits and audit log as
the other routes, with the scope ``leaders:read`` (a WeCom bot posting briefs needs nothing
else). The brief is :func:`lastmile.leaders.brief.assemble` under the configured identifier
(:func:`lastmile.leaders.export.present`); ``format=csv`` or ``md`` answers the WeCom export
as text. Every neighbour a brief names is one line in the audit log.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from lastmile.api_auth import ApiKey, AuditLog
from lastmile.api_support import WarehouseSource, answer_errors
from lastmile.config import Settings
from lastmile.leaders.brief import BriefUnavailable, UnknownLeader, assemble
from lastmile.leaders.export import oneids, present, to_csv, to_markdown

LeaderId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="The leader's id (ref_leaders.leader_id).")]
SCOPE = "leaders:read"


class Named(BaseModel):
    neighbour: str = Field(description="The neighbour: a keyed hash of the OneID, one per leader (as in the leader's audience exports).")
    id_kind: Literal["keyed_hash", "oneid"]


class Due(Named):
    sku: str
    sku_name: str | None
    due: date = Field(description="Day the next purchase is due (the replenishment rhythm).")
    last_purchase: date
    purchases: int = Field(description="Days the SKU was bought on in the rhythm's history.")
    mean_interval_days: float


class NewNeighbour(Named):
    first_order_at: str = Field(description="First order ever (UTC, ISO 8601).")
    channel: str


class UsualSku(BaseModel):
    sku: str
    sku_name: str | None


class QuietRegular(Named):
    purchase_days: int
    mean_interval_days: float = Field(description="Mean days between purchase days (RFM recency / frequency).")
    last_purchase: date
    days_since_last_purchase: int = Field(description="Days from the last purchase to the brief's day.")
    total_spend_cny: float | None
    used_to_buy: list[UsualSku] = Field(description="The SKUs bought on the most orders, most first.")


class LockerOrder(Named):
    order_id: str
    locker_id: str
    compartment_id: str
    slot_start: str
    slot_end: str
    hours_overdue: float | None = Field(None, description="Hours from the end of the slot to the morning (overdue only).")


class Claim(Named):
    order_id: str
    reason: str | None
    amount_cny: float | None
    claimed_at: str


def _section(row: type[BaseModel], what: str) -> type[BaseModel]:
    fields = {"neighbours": (list[row], Field(description=f"{what}: consenting neighbours of the building.")),
              "not_consented": (int, Field(description="Neighbours left out for lack of consent on wecom_leader (counted, never named)."))}
    from pydantic import create_model

    return create_model(f"{row.__name__}Section", **fields)  # type: ignore[call-overload]


DueSection = _section(Due, "Due to reorder")
NewSection = _section(NewNeighbour, "New neighbours")
QuietSection = _section(QuietRegular, "Regulars gone quiet")
LockerSection = _section(LockerOrder, "Orders in the lockers")
ClaimSection = _section(Claim, "Open claims")


class Lockers(BaseModel):
    waiting: LockerSection  # type: ignore[valid-type]
    overdue: LockerSection  # type: ignore[valid-type]


class TopSku(BaseModel):
    sku: str
    sku_name: str | None
    category: str | None
    orders: int
    units: int
    amount_cny: float | None


class Sales(BaseModel):
    from_: date = Field(alias="from")
    to: date
    top: list[TopSku]


class Surplus(BaseModel):
    sku: str
    sku_name: str | None
    surplus_units: int = Field(description="Stock after this morning's delivery beyond the plan's median demand.")
    stock_units: int
    p50_demand: float


class Brief(BaseModel):
    leader_id: str
    building_id: str
    building_name: str
    community_id: str
    day: date
    day_rule: str = Field(description="given, today, or the morning after the newest order.")
    as_of: str = Field(description="The morning (UTC): the end of the contact rules' quiet hours on `day`.")
    time_zone: str
    marts_as_of: date | None = Field(description="Date the marts' RFM numbers are as of.")
    due_to_reorder: DueSection  # type: ignore[valid-type]
    new_neighbours: NewSection  # type: ignore[valid-type]
    quiet_regulars: QuietSection  # type: ignore[valid-type]
    lockers: Lockers
    open_claims: ClaimSection  # type: ignore[valid-type]
    sales_this_week: Sales
    surplus: list[Surplus] | None = Field(description="null while no stocking plan exists for this morning's delivery.")
    notes: list[str]


class LeaderSource(WarehouseSource):
    """The warehouse, opened on first use; a warehouse that cannot answer is a 503."""

    passes = (UnknownLeader, BriefUnavailable)
    unavailable = BriefUnavailable


def mount_leaders(app: FastAPI, cfg: Settings, needs: Callable[[str], Any], audit: AuditLog,
                  errors: dict[int | str, dict[str, Any]], source: LeaderSource | None = None) -> LeaderSource:
    """Add the leader route to ``app``; ``needs(scope)`` is the API's key dependency."""
    source = source or LeaderSource(cfg)

    answer_errors(app, {UnknownLeader: 404, BriefUnavailable: 503})

    @app.get("/leaders/{leader_id}/brief", tags=["leaders"], response_model=Brief, response_model_by_alias=True, response_model_exclude_unset=True,
             responses={**errors, 200: {"content": {"text/csv": {}, "text/markdown": {}},
                                        "description": "The brief (JSON), or its WeCom export with format=csv or md."}},
             openapi_extra={"x-required-scope": SCOPE})
    def leader_brief(leader_id: LeaderId,
                     as_of: Annotated[date | None, Query(description="Business day of the brief (YYYY-MM-DD); "
                                                         "default today, or the day after the newest order.")] = None,
                     format: Annotated[Literal["json", "csv", "md"], Query(description="json, or the WeCom export as csv or md.")] = "json",
                     key: ApiKey = needs(SCOPE)) -> Any:
        """The leader's daily brief for the morning of ``as_of``: consenting neighbours only. Scope leaders:read."""
        brief = source.read(lambda w: assemble(w, leader_id, as_of, cfg=cfg))
        for oneid in oneids(brief):
            audit.record(key, "GET leader brief", oneid, ["leader_brief"])
        shown = present(brief, cfg)
        if format == "csv":
            return PlainTextResponse(to_csv(shown), media_type="text/csv; charset=utf-8")
        if format == "md":
            return PlainTextResponse(to_markdown(shown), media_type="text/markdown; charset=utf-8")
        return shown

    app.state.leaders = source
    return source
