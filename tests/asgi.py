"""Requests straight to an ASGI app (httpx, which FastAPI's TestClient needs, is not in the lock)."""

from __future__ import annotations

import asyncio
import json
from typing import Any


def call(app: Any, path: str, key: str | None = None, method: str = "GET", body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    """One request; returns (status, body, response headers). ``key`` goes in ``X-API-Key``."""
    path, _, query = path.partition("?")
    raw = json.dumps(body).encode() if body is not None else b""
    sent = [(b"host", b"test")]
    if key is not None:
        sent.append((b"x-api-key", key.encode()))
    if body is not None:
        sent += [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    sent += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": sent, "client": ("127.0.0.1", 1), "server": ("test", 80)}
    out: dict[str, Any] = {"status": None, "body": b"", "headers": {}}

    async def receive() -> dict:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return out["status"], out["body"], out["headers"]
