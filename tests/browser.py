"""A real headless browser for tests: Debian's Chromium driven by Playwright, kept offline.

Playwright's own browser downloads are not used: ``executable_path`` points at the system
Chromium (``apt-get install chromium``). Every request that is not a local file, inline
data or loopback is aborted and recorded, so a page that loads anything from the network
shows it in :attr:`OfflinePage.blocked` (and renders without it, as it would offline).
Console errors and uncaught page errors are collected in :attr:`OfflinePage.errors`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
LOCAL_SCHEMES = {"file", "data", "blob", "about"}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def is_local(url: str) -> bool:
    """A URL the page may load without a network: a file, inline data, or this machine."""
    parsed = urlparse(url)
    return parsed.scheme in LOCAL_SCHEMES or (parsed.scheme in {"http", "https", "ws"} and parsed.hostname in LOOPBACK_HOSTS)


@dataclass
class OfflinePage:
    page: Any  # playwright.sync_api.Page
    errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@contextmanager
def offline_page(width: int = 1000, height: int = 800) -> Iterator[OfflinePage]:
    """A fresh page in headless Chromium; skips the test if Debian's chromium is absent."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install chromium` runs the browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            seen = OfflinePage(page)
            page.on("console", lambda message: seen.errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: seen.errors.append(str(error)))

            def on_dialog(dialog: Any) -> None:
                seen.dialogs.append(dialog.message)
                dialog.dismiss()

            page.on("dialog", on_dialog)

            def route(request_route: Any) -> None:
                url = request_route.request.url
                if is_local(url):
                    request_route.continue_()
                else:
                    seen.blocked.append(url)
                    request_route.abort()

            page.route("**/*", route)
            yield seen
        finally:
            browser.close()
