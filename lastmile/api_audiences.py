"""The API's audience routes: definitions, sizes, members page by page, a person's audiences.

Mounted by :func:`lastmile.api.create_app` behind the same keys, rate limits and audit log as
the customer routes (scope ``marketing:read``). Definitions come from the audience files
(``LASTMILE_AUDIENCES_DIR``); membership from the warehouse tables a refresh publishes
(:mod:`lastmile.audiences.reads`), so the API shows what ``lastmile audience refresh`` (or
``lastmile run``) last published, never an unpublished preview.

Members are paged by OneID with an opaque cursor: a refresh between two pages neither
repeats nor skips the people who stayed. Every member returned is one audit-log line, as for
any other answer carrying a person's data.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query
from pydantic import BaseModel, Field

from lastmile.api_auth import ApiKey, AuditLog
from lastmile.api_support import WarehouseSource, answer_errors
from lastmile.audiences import Audience, AudienceError, load_audiences
from lastmile.audiences.reads import MAX_PAGE, BadCursor, audiences_of, decode_cursor, member_page, published
from lastmile.config import Settings

AudienceName = Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="The audience's name (its file's `name:`).")]
OneID = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="The customer's OneID (e.g. oid_…).")]


class AudienceSummary(BaseModel):
    name: str
    description: str
    owner: str
    kind: str = Field(description="sql (a predicate over audience_traits) or rule (the rule language).")
    version: str = Field(description="Version of the definition in the audience file (a hash of the rule).")
    size: int = Field(description="Members published now (0 before the first refresh).")
    published_version: str | None = Field(None, description="Newest version published by a refresh; differs from "
                                          "`version` while an edited file awaits its refresh.")
    last_refresh_at: datetime | None = Field(None, description="Last refresh that published a change or a new version (UTC).")


class AudienceDetail(AudienceSummary):
    definition: str | dict[str, Any] = Field(description="The SQL predicate, or the rule as written in the file.")


class Membership(BaseModel):
    oneid: str
    entered_at: datetime = Field(description="When the person entered (UTC).")
    version: str = Field(description="Definition version the membership was last confirmed under.")


class MemberPage(BaseModel):
    audience: str
    members: list[Membership] = Field(description="Ordered by OneID.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class CustomerAudience(BaseModel):
    audience: str
    entered_at: datetime
    version: str


class CustomerAudiences(BaseModel):
    oneid: str
    audiences: list[CustomerAudience] = Field(description="The audiences the person is in now, by name (empty if none).")


class UnknownAudience(LookupError):
    """No audience file has this name (404)."""


class AudiencesUnavailable(RuntimeError):
    """The audience files or the warehouse cannot be read now (503)."""


class AudienceSource(WarehouseSource):
    """The audience files and the warehouse, opened on first use (``opener``: how to connect)."""

    passes = (BadCursor,)
    unavailable = AudiencesUnavailable

    def audiences(self) -> dict[str, Audience]:
        try:
            return {a.name: a for a in load_audiences(self.cfg.audiences_path)}
        except (AudienceError, OSError) as exc:
            raise AudiencesUnavailable(f"the audience files cannot be read: {exc}") from exc

    def audience(self, name: str) -> Audience:
        found = self.audiences().get(name)
        if found is None:
            raise UnknownAudience(f"unknown audience: {name}")
        return found


def _summary(audience: Audience, source: AudienceSource) -> dict[str, Any]:
    state = source.read(lambda w: published(w, audience.name))
    return {"name": audience.name, "description": audience.description, "owner": audience.owner, "kind": audience.kind,
            "version": audience.version, "size": state.size, "published_version": state.version,
            "last_refresh_at": state.last_refresh_at}


def mount_audiences(app: FastAPI, cfg: Settings, needs: Callable[[str], Any], audit: AuditLog,
                    errors: dict[int | str, dict[str, Any]], source: AudienceSource | None = None) -> AudienceSource:
    """Add the audience routes to ``app``; ``needs(scope)`` is the API's key dependency."""
    source = source or AudienceSource(cfg)
    scoped: dict[str, Any] = {"tags": ["audiences"], "responses": errors, "openapi_extra": {"x-required-scope": "marketing:read"}}

    answer_errors(app, {UnknownAudience: 404, AudiencesUnavailable: 503, BadCursor: 422})

    @app.get("/audiences", response_model=list[AudienceSummary], **scoped)
    def list_audiences(key: ApiKey = needs("marketing:read")) -> list[dict[str, Any]]:
        """Every audience of the audience folder with its published size. Scope marketing:read."""
        return [_summary(a, source) for a in source.audiences().values()]

    @app.get("/audiences/{name}", response_model=AudienceDetail, **scoped)
    def get_audience(name: AudienceName, key: ApiKey = needs("marketing:read")) -> dict[str, Any]:
        """One audience: definition, version, published size and last refresh. Scope marketing:read."""
        audience = source.audience(name)
        return {**_summary(audience, source), "definition": audience.sql if audience.sql is not None else audience.rule}

    @app.get("/audiences/{name}/members", response_model=MemberPage, **scoped)
    def get_members(name: AudienceName,
                    cursor: Annotated[str | None, Query(max_length=200, description="`next_cursor` of the previous page.")] = None,
                    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
                    key: ApiKey = needs("marketing:read")) -> dict[str, Any]:
        """Current members ordered by OneID, a page at a time. Scope marketing:read."""
        audience = source.audience(name)
        after = decode_cursor(cursor) if cursor else None
        members, next_cursor = source.read(lambda w: member_page(w, audience.name, after, limit))
        for member in members:
            audit.record(key, "GET audience members", member.oneid, ["audiences"])
        return {"audience": audience.name, "members": [m.__dict__ for m in members], "next_cursor": next_cursor}

    @app.get("/customers/{oneid}/audiences", response_model=CustomerAudiences, **{**scoped, "tags": ["customers"]})
    def customer_audiences(oneid: OneID, key: ApiKey = needs("marketing:read")) -> dict[str, Any]:
        """The audiences a person is in now. Scope marketing:read."""
        rows = source.read(lambda w: audiences_of(w, oneid))
        audit.record(key, "GET customer audiences", oneid, ["audiences"])
        return {"oneid": oneid, "audiences": [{"audience": a, "entered_at": m.entered_at, "version": m.version} for a, m in rows]}

    app.state.audiences = source
    return source
