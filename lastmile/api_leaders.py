"""The API's leader route: ``GET /leaders/{leader_id}/brief``, the group leader's daily brief.

Mounted by :func:`lastmile.api.create_app` behind the same keys, rate limits and audit log as
the other routes, with the scope ``leaders:read`` (a WeCom bot posting briefs needs nothing
else). The brief is :func:`lastmile.leaders.brief.assemble` under the configured identifier
(:func:`lastmile.leaders.export.present`); ``format=csv`` or ``md`` answers the WeCom export
as text. Every neighbour a brief names is one line in the audit log.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from lastmile.api_auth import ApiKey, AuditLog
from lastmile.config import Settings
from lastmile.leaders.brief import BriefUnavailable, UnknownLeader, assemble
from lastmile.leaders.export import oneids, present, to_csv, to_markdown
from lastmile.warehouse import Warehouse

LeaderId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="The leader's id (ref_leaders.leader_id).")]
SCOPE = "leaders:read"


class LeaderSource:
    """The warehouse, opened on first use; a warehouse that cannot answer is a 503."""

    def __init__(self, cfg: Settings, opener: Callable[[Settings], Warehouse] | None = None) -> None:
        self.cfg = cfg
        self.opener = opener
        self._warehouse: Warehouse | None = None
        self._lock = threading.Lock()

    def read(self, what: Callable[[Warehouse], Any]) -> Any:
        with self._lock:
            try:
                if self._warehouse is None:
                    if self.opener is None:
                        from lastmile.warehouse import connect

                        self._warehouse = connect(self.cfg)
                    else:
                        self._warehouse = self.opener(self.cfg)
                return what(self._warehouse)
            except (UnknownLeader, BriefUnavailable):
                raise
            except Exception as exc:  # noqa: BLE001 - a lost connection or a locked embedded warehouse
                if not self.cfg.embedded:
                    self._warehouse = None
                raise BriefUnavailable(f"the warehouse did not answer: {' '.join(str(exc).split())[:300]}") from exc


def mount_leaders(app: FastAPI, cfg: Settings, needs: Callable[[str], Any], audit: AuditLog,
                  errors: dict[int | str, dict[str, Any]], source: LeaderSource | None = None) -> LeaderSource:
    """Add the leader route to ``app``; ``needs(scope)`` is the API's key dependency."""
    source = source or LeaderSource(cfg)

    @app.exception_handler(UnknownLeader)
    async def _unknown(_: Request, exc: UnknownLeader) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(BriefUnavailable)
    async def _unavailable(_: Request, exc: BriefUnavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.get("/leaders/{leader_id}/brief", tags=["leaders"], responses=errors, openapi_extra={"x-required-scope": SCOPE})
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
