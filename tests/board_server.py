"""The API app (with the board) under a real uvicorn on a free loopback port, in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lastmile.config import Settings


@contextmanager
def serving(cfg: Settings) -> Iterator[str]:
    """``lastmile serve``'s app on http://127.0.0.1:<free port>; yields the base URL."""
    import uvicorn

    from lastmile.api import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def figure(page: Any, name: str) -> str | None:
    """The exact value behind a figure on the page (its ``data-value``)."""
    return page.locator(f"[data-figure='{name}']").get_attribute("data-value")


def wait_drawn(page: Any, times: int = 1, timeout_ms: int = 20_000) -> None:
    page.wait_for_function(f"Number(document.body.getAttribute('data-drawn') || 0) >= {times}", timeout=timeout_ms)
