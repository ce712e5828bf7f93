"""What the API's warehouse-backed route groups share: a lazily opened warehouse and error statuses.

The audience, stocking and leader routes all read the warehouse the same way: it is opened on
the first request (so the API starts while the warehouse is still coming up), the route's own
"not found" errors reach their handlers untouched, and anything else the warehouse raises is
the route group's "unavailable" error (a 503 the client can retry) rather than a 500.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from lastmile.config import Settings
from lastmile.warehouse import Warehouse


class WarehouseSource:
    """The warehouse, opened on first use (``opener``: how to connect; default the configured one).

    A subclass names ``passes``, the errors its reads raise on purpose (re-raised as they are),
    and ``unavailable``, the error every other failure becomes. After such a failure the
    connection is dropped and reopened on the next read, except for the embedded warehouse,
    whose single connection holds the data.
    """

    passes: ClassVar[tuple[type[BaseException], ...]] = ()
    unavailable: ClassVar[type[Exception]] = RuntimeError

    def __init__(self, cfg: Settings, opener: Callable[[Settings], Warehouse] | None = None) -> None:
        self.cfg = cfg
        self.opener = opener
        self._warehouse: Warehouse | None = None
        self._lock = threading.Lock()

    def read(self, what: Callable[[Warehouse], Any]) -> Any:
        """Run ``what`` on the warehouse; a warehouse that cannot answer raises ``unavailable``."""
        with self._lock:
            try:
                if self._warehouse is None:
                    if self.opener is None:
                        from lastmile.warehouse import connect

                        self._warehouse = connect(self.cfg)
                    else:
                        self._warehouse = self.opener(self.cfg)
                return what(self._warehouse)
            except self.passes:
                raise
            except Exception as exc:  # noqa: BLE001 - a lost connection or a locked embedded warehouse
                if not self.cfg.embedded:
                    self._warehouse = None
                raise self.unavailable(f"the warehouse did not answer: {' '.join(str(exc).split())[:300]}") from exc


def answer_errors(app: FastAPI, statuses: Mapping[type[Exception], int]) -> None:
    """Answer each error type with its HTTP status and the error's message as ``detail``."""

    async def _answer(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=_status_of(exc, statuses), content={"detail": str(exc)})

    for error in statuses:
        app.add_exception_handler(error, _answer)


def _status_of(exc: Exception, statuses: Mapping[type[Exception], int]) -> int:
    """The status of the error's class, or of its nearest registered base class."""
    for cls in type(exc).__mro__:
        if cls in statuses:
            return statuses[cls]
    return 500
