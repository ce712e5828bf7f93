"""Who may call the API, how often, and what they read: API keys, scopes, rate limits, audit.

* **Keys** live in one JSON file (``LASTMILE_API_KEYS_FILE``, default
  ``$LASTMILE_HOME/api/keys.json``, mode 0600). The file holds each key's id, name, scopes,
  rate limit and the sha256 of its secret, never the secret itself: the secret is shown once,
  by ``lastmile api-key create``. A key looks like ``lm_<id>_<secret>``; the id is public (it
  names the key in the audit log), the secret carries 256 random bits, so one sha256 is as
  strong as a slow password hash would be. The API re-reads the file when it changes: a new
  or revoked key takes effect without a restart.
* **Scopes** say what a key may read: :data:`SCOPES`. ``admin`` implies every other scope.
* **Rate limits** are a token bucket per key (``rate_per_minute`` tokens a minute, a burst of
  a tenth of that): an empty bucket answers 429 with ``Retry-After``.
* **Health fields** (the declared dietary need and what follows from it) go only to a key
  with ``health:read`` and only for a person whose declaration is on file
  (:func:`lastmile.models.consent.health_data_consented`).
* **Audit**: every answer carrying a person's data appends one JSON line to an append-only
  file (``LASTMILE_API_AUDIT_LOG``, default ``$LASTMILE_HOME/api/audit.jsonl``): when, which
  key (id and name, never the secret), which endpoint, which categories of fields, and whose.
  "Whose" is a keyed pseudonym of the OneID (:func:`audit_subject`), so the log can answer
  "who read this person's data" (``lastmile api-key audit --oneid``) while ``lastmile
  forget`` still leaves no OneID behind in the data directory. The line is written (and
  flushed to the operating system) before the answer leaves; if it cannot be written, the
  answer is refused.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import math
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from lastmile.config import Settings

#: scope -> what it lets a key read.
SCOPES: dict[str, str] = {
    "marketing:read": "recommendations, spending health and features per OneID (health fields withheld); audiences and their members",
    "marketing:write": "record the recommendations a send showed (impressions, the daily cap)",
    "health:read": "health-related fields (declared dietary need, the medical exception), for consenting people",
    "board:read": "the operations board",
    "leaders:read": "the group leader's daily brief (consenting neighbours of the leader's building)",
    "admin": "every scope",
}

#: Fields that reveal a person's health: served only to health:read keys, for consenting people.
HEALTH_FEATURES = frozenset({"dietary_need_declared"})

KEY_PREFIX = "lm"


class AuthError(Exception):
    """The request carries no key, an unknown key or a revoked one (401)."""


class Forbidden(Exception):
    """The key is valid but lacks the scope the endpoint needs (403)."""


class RateLimited(Exception):
    """The key's bucket is empty (429); ``retry_after`` is in whole seconds."""

    def __init__(self, key_id: str, retry_after: int) -> None:
        super().__init__(f"rate limit of key {key_id} exceeded: retry in {retry_after} s")
        self.retry_after = retry_after


class KeyFileError(ValueError):
    """The keys file cannot be read as lastmile wrote it."""


def keys_path(cfg: Settings) -> Path:
    return Path(cfg.api_keys_file).expanduser() if cfg.api_keys_file else cfg.home / "api" / "keys.json"


def audit_path(cfg: Settings) -> Path:
    return Path(cfg.api_audit_log).expanduser() if cfg.api_audit_log else cfg.home / "api" / "audit.jsonl"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One key as the keys file holds it (no secret)."""

    id: str
    name: str
    scopes: tuple[str, ...]
    sha256: str
    created_at: str
    rate_per_minute: int
    revoked_at: str | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "scopes": list(self.scopes), "sha256": self.sha256,
                "created_at": self.created_at, "rate_per_minute": self.rate_per_minute, "revoked_at": self.revoked_at}


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes, validated: an unknown one is an error naming the known ones."""
    out = tuple(dict.fromkeys(s.strip() for s in scopes if s.strip()))
    unknown = [s for s in out if s not in SCOPES]
    if unknown or not out:
        raise ValueError(f"unknown scope(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(SCOPES)}")
    return out


def _read_keys(path: Path) -> list[ApiKey]:
    if not path.exists():
        return []
    try:
        raw = orjson.loads(path.read_bytes())
        return [ApiKey(id=k["id"], name=k["name"], scopes=tuple(k["scopes"]), sha256=k["sha256"],
                       created_at=k["created_at"], rate_per_minute=int(k["rate_per_minute"]),
                       revoked_at=k.get("revoked_at")) for k in raw["keys"]]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise KeyFileError(f"{path} is not a keys file written by `lastmile api-key create` ({exc})") from exc


class _Locked:
    """An exclusive lock beside the keys file: two `api-key create` at once both land."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")

    def __enter__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _write_keys(path: Path, keys: list[ApiKey]) -> None:
    """Replace the file atomically (readers see the old or the new list), readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(orjson.dumps({"keys": [k.as_json() for k in keys]}, option=orjson.OPT_INDENT_2) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def create_key(cfg: Settings, name: str, scopes: Iterable[str], rate_per_minute: int | None = None) -> tuple[ApiKey, str]:
    """Add a key; returns it and its secret (the only time the secret exists outside the caller)."""
    scopes = check_scopes(scopes)
    if not name.strip():
        raise ValueError("a key needs a --name (who uses it, e.g. marketing)")
    rate = cfg.api_rate_per_minute if rate_per_minute is None else rate_per_minute
    if rate < 1:
        raise ValueError(f"rate per minute must be at least 1, not {rate}")
    path = keys_path(cfg)
    with _Locked(path):
        keys = _read_keys(path)
        taken = {k.id for k in keys}
        key_id = secrets.token_hex(4)
        while key_id in taken:
            key_id = secrets.token_hex(4)
        secret = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        key = ApiKey(id=key_id, name=name.strip(), scopes=scopes, sha256=_digest(secret),
                     created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), rate_per_minute=rate)
        _write_keys(path, [*keys, key])
    return key, secret


def list_keys(cfg: Settings) -> list[ApiKey]:
    return _read_keys(keys_path(cfg))


def revoke_key(cfg: Settings, key_id: str) -> ApiKey:
    """Mark a key revoked (kept in the file so the audit log's key ids stay explained)."""
    path = keys_path(cfg)
    with _Locked(path):
        keys = _read_keys(path)
        match = [k for k in keys if k.id == key_id]
        if not match:
            raise ValueError(f"no key with id {key_id!r} in {path} (see `lastmile api-key list`)")
        revoked = replace(match[0], revoked_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        _write_keys(path, [revoked if k.id == key_id else k for k in keys])
    return revoked


def active_keys(cfg: Settings) -> list[ApiKey]:
    return [k for k in list_keys(cfg) if not k.revoked_at]


class KeyRing:
    """The keys file as the API sees it: re-read when it changes (a stat per request)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._by_id: dict[str, ApiKey] = {}
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        if stamp == self._stamp:
            return
        with self._lock:
            keys = _read_keys(self.path) if stamp != (0, 0, 0) else []
            self._by_id = {k.id: k for k in keys if not k.revoked_at}
            self._stamp = stamp

    def authenticate(self, secret: str | None) -> ApiKey:
        if not secret:
            raise AuthError("missing API key: send it as `X-API-Key: <key>` or `Authorization: Bearer <key>`")
        self._refresh()
        parts = secret.split("_", 2)
        key = self._by_id.get(parts[1]) if len(parts) == 3 and parts[0] == KEY_PREFIX else None
        # Compare digests in constant time; an unknown id still costs one digest.
        ok = hmac.compare_digest(_digest(secret), key.sha256 if key else "0" * 64)
        if key is None or not ok:
            raise AuthError("invalid or revoked API key")
        return key

    def __len__(self) -> int:
        self._refresh()
        return len(self._by_id)


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per key: ``rate_per_minute`` a minute, bursts of a tenth of that (at least 1).

    In-process: each API process limits on its own, so N replicas allow N times the rate.
    """

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    @staticmethod
    def burst(key: ApiKey) -> float:
        return float(max(1, key.rate_per_minute // 10))

    def take(self, key: ApiKey) -> None:
        rate = key.rate_per_minute / 60.0
        capacity = self.burst(key)
        with self._lock:
            now = self._clock()
            b = self._buckets.get(key.id)
            if b is None:
                b = self._buckets[key.id] = _Bucket(capacity, now)
            b.tokens = min(capacity, b.tokens + (now - b.stamp) * rate)
            b.stamp = now
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return
            wait = (1.0 - b.tokens) / rate
        raise RateLimited(key.id, max(1, math.ceil(wait)))


def audit_subject(key: bytes, oneid: str) -> str:
    """The audit log's pseudonym of a OneID: a keyed hash, so the log never holds the OneID itself."""
    return "sub_" + hmac.new(key, b"api-audit\x00" + oneid.encode(), hashlib.sha256).hexdigest()[:32]


class AuditUnavailable(RuntimeError):
    """The audit log cannot be written: the read it would record is refused."""


@dataclass
class AuditLog:
    """Append-only JSON lines; one ``write`` per entry on an O_APPEND descriptor.

    Each entry is one ``os.write`` of a whole line, so concurrent writers (threads, worker
    processes) never interleave within a line, and an entry is in the operating system's
    hands before the answer it records is sent: a crash of the API loses no entry.
    """

    path: Path
    hash_key: bytes
    _fd: int | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return self._fd

    def record(self, key: ApiKey, action: str, oneid: str, fields: Iterable[str], status: int = 200) -> None:
        entry = {"at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "key_id": key.id,
                 "key_name": key.name, "action": action, "subject": audit_subject(self.hash_key, oneid),
                 "fields": sorted(set(fields)), "status": status}
        line = orjson.dumps(entry) + b"\n"
        try:
            with self._lock:
                fd = self._open()
                written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"short write ({written} of {len(line)} bytes)")
        except OSError as exc:
            raise AuditUnavailable(f"cannot append to the audit log {self.path}: {exc}") from exc

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_audit(cfg: Settings, oneid: str | None = None, key_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Audit entries, optionally only those about ``oneid`` or by ``key_id``."""
    path = audit_path(cfg)
    if not path.exists():
        return
    subject = audit_subject(cfg.hash_key_bytes(), oneid) if oneid else None
    with path.open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            entry = orjson.loads(line)
            if (subject is None or entry.get("subject") == subject) and (key_id is None or entry.get("key_id") == key_id):
                yield entry


def feature_categories(names: Iterable[str]) -> list[str]:
    """Categories of personal data among online feature names (what the audit log records)."""
    cats = set()
    for n in names:
        if n in HEALTH_FEATURES:
            cats.add("health")
        elif n.startswith("credit_"):
            cats.add("credit")
        elif n.startswith("sh_"):
            cats.add("spending_health")
        elif n in ("home_locker_id", "home_community_id"):
            cats.add("home_locker")
        elif n.startswith("aff_"):
            cats.add("affinity")
        else:
            cats.add("purchases")
    return sorted(cats)
