"""Users and roles of the warehouse's HTTP interface, authenticated the way ClickHouse does it.

BI tools (DBeaver, Superset, clickhouse-connect, dbt) send a user and password in one of
ClickHouse's three ways: HTTP basic auth, the ``X-ClickHouse-User`` / ``X-ClickHouse-Key``
headers, or the ``user`` / ``password`` URL parameters. The users live in a TOML file, with
passwords stored as SHA-256 hex like ClickHouse's ``password_sha256_hex``::

    [users.analyst]
    password_sha256_hex = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
    role = "reader"          # the default

    [users.dbt]
    password_sha256_hex = "..."
    role = "writer"

    [roles.reader]           # optional: tighten or loosen the reader's limits
    max_execution_time = 60

Two roles are built in: ``reader`` (read-only: ClickHouse's ``readonly = 1`` plus limits on
time, memory and result size, so one analyst cannot starve the worker that serves) and
``writer`` (DDL and DML on the warehouse's tables, for dbt and Feast). Other roles may be
declared with ``readonly = true|false`` and their own limits.

With no users file at the default place, a first ``reader`` user ``analyst`` is created with
a random password written to a file readable only by its owner; the command prints where.
Nothing is ever served without a password.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

#: Limits of the reader role (ClickHouse setting -> value; 0 would mean unlimited).
READER_LIMITS: dict[str, int] = {"max_execution_time": 120, "max_result_rows": 1_000_000,
                                 "max_result_bytes": 1 << 30, "max_memory_usage": 4 << 30}
#: Settings a role may carry besides ``readonly``: the limits above, and a few more of their kind.
LIMIT_SETTINGS = frozenset(READER_LIMITS) | {"max_rows_to_read", "max_bytes_to_read", "max_threads", "max_query_size"}
GENERATED_USER = "analyst"
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a bare TOML key: [users.NAME] needs no quoting


class UsersConfigError(ValueError):
    """The users file is missing, unreadable or says something that cannot be right."""


class AuthenticationFailed(Exception):
    """Wrong or missing credentials (HTTP 401, ClickHouse code 516)."""


class BadCredentials(ValueError):
    """Credentials sent in a malformed way, or in more than one way at once (HTTP 400)."""


@dataclass(frozen=True)
class Role:
    """What a user may do: read only or also write, and the limits every statement runs under."""

    name: str
    readonly: bool
    limits: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class User:
    name: str
    password_sha256_hex: str
    role: Role


BUILTIN_ROLES = {"reader": Role("reader", True, dict(READER_LIMITS)), "writer": Role("writer", False, {})}


@dataclass(frozen=True)
class UserDirectory:
    """The configured users; :meth:`authenticate` checks a name and password in constant time."""

    users: Mapping[str, User]
    path: Path | None = None

    def authenticate(self, name: str, password: str) -> User:
        user = self.users.get(name)
        offered = hashlib.sha256(password.encode("utf-8", "surrogateescape")).hexdigest()
        expected = user.password_sha256_hex if user else _EMPTY_SHA256  # same work for unknown users
        if not hmac.compare_digest(offered.encode(), expected.lower().encode()) or user is None or not password:
            raise AuthenticationFailed(name)
        return user


def password_sha256_hex(password: str) -> str:
    """The form passwords are stored in (ClickHouse's ``password_sha256_hex``)."""
    return hashlib.sha256(password.encode()).hexdigest()


def load_users(path: Path) -> UserDirectory:
    """Read and check the users file; every mistake is reported with the user or role it is in."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsersConfigError(f"users file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsersConfigError(f"users file {path} cannot be read: {exc}") from exc
    unknown = set(data) - {"users", "roles"}
    if unknown:
        raise UsersConfigError(f"{path}: unknown section(s) {sorted(unknown)} (users and roles are)")
    roles = dict(BUILTIN_ROLES)
    for name, spec in (data.get("roles") or {}).items():
        roles[name] = _role(path, name, spec, roles.get(name))
    users: dict[str, User] = {}
    for name, spec in (data.get("users") or {}).items():
        if not _NAME.match(name):
            raise UsersConfigError(f"{path}: user name {name!r} must be 1-64 letters, digits, _ or -")
        if not isinstance(spec, dict):
            raise UsersConfigError(f"{path}: users.{name} must be a table")
        extra = set(spec) - {"password_sha256_hex", "role"}
        if extra:
            raise UsersConfigError(f"{path}: users.{name} has unknown key(s) {sorted(extra)} "
                                   "(password_sha256_hex and role are; plain-text passwords are not accepted)")
        digest = str(spec.get("password_sha256_hex", ""))
        if not _HEX64.match(digest):
            raise UsersConfigError(f"{path}: users.{name}.password_sha256_hex must be 64 hex digits "
                                   "(echo -n 'password' | sha256sum)")
        if digest.lower() == _EMPTY_SHA256:
            raise UsersConfigError(f"{path}: users.{name} has an empty password")
        role_name = str(spec.get("role", "reader"))
        if role_name not in roles:
            raise UsersConfigError(f"{path}: users.{name}.role {role_name!r} is not a role ({', '.join(sorted(roles))})")
        users[name] = User(name, digest.lower(), roles[role_name])
    if not users:
        raise UsersConfigError(f"{path} declares no users: add a [users.NAME] table")
    return UserDirectory(users, path)


def _role(path: Path, name: str, spec: object, base: Role | None) -> Role:
    if not isinstance(spec, dict):
        raise UsersConfigError(f"{path}: roles.{name} must be a table")
    readonly = spec.get("readonly", base.readonly if base else None)
    if not isinstance(readonly, bool):
        raise UsersConfigError(f"{path}: roles.{name}.readonly must be true or false")
    limits = dict(base.limits) if base else {}
    for key, value in spec.items():
        if key == "readonly":
            continue
        if key not in LIMIT_SETTINGS:
            raise UsersConfigError(f"{path}: roles.{name}.{key} is not a limit ({', '.join(sorted(LIMIT_SETTINGS))})")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise UsersConfigError(f"{path}: roles.{name}.{key} must be a whole number >= 0 (0: unlimited)")
        limits[key] = value
    return Role(name, readonly, limits)


@dataclass(frozen=True)
class GeneratedUser:
    """A first user made because none was configured: where its password was written."""

    name: str
    users_file: Path
    password_file: Path


def ensure_users(users_file: Path, default_file: Path, home: Path) -> GeneratedUser | None:
    """Make a first reader user when the default users file does not exist yet.

    An explicitly configured file that is missing is an error, never replaced by a generated
    one. The password goes to a file of its own, mode 0600; the users file keeps its hash.
    Created with O_EXCL, so two processes starting together do not overwrite each other.
    """
    if users_file.exists():
        return None
    if users_file != default_file:
        raise UsersConfigError(f"users file {users_file} (LASTMILE_WAREHOUSE_USERS) does not exist")
    home.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    password_file = home / f"warehouse_{GENERATED_USER}.password"
    try:
        _write_private(users_file, _users_text({GENERATED_USER: (password_sha256_hex(password), "reader")}))
    except FileExistsError:
        return None
    _write_private(password_file, password + "\n", replace=True)
    return GeneratedUser(GENERATED_USER, users_file, password_file)


def add_user(users_file: Path, name: str, password: str, role: str) -> None:
    """Add (or replace) a user in the users file, keeping everything else in it."""
    if not _NAME.match(name):
        raise UsersConfigError(f"user name {name!r} must be 1-64 letters, digits, _ or -")
    if not password:
        raise UsersConfigError("the password is empty")
    text = users_file.read_text(encoding="utf-8") if users_file.exists() else ""
    known = tomllib.loads(text) if text else {}
    roles = set(BUILTIN_ROLES) | set((known.get("roles") or {}))
    if role not in roles:
        raise UsersConfigError(f"role {role!r} is not a role ({', '.join(sorted(roles))})")
    # Drop the user's old table, then append the new one (the rest of the file stays as written).
    text = re.sub(rf"(?ms)^\[users\.{re.escape(name)}\]\n.*?(?=^\[|\Z)", "", text)
    block = _users_text({name: (password_sha256_hex(password), role)})
    _write_private(users_file, (text.rstrip("\n") + "\n\n" if text.strip() else "") + block, replace=True)
    load_users(users_file)  # refuse to leave a file the server would not start with


def _users_text(users: Mapping[str, tuple[str, str]]) -> str:
    header = ("# Users of lastmile's warehouse HTTP interface (warehouse serve, stream --serve-port).\n"
              "# Passwords are stored as SHA-256 hex: echo -n 'password' | sha256sum\n")
    blocks = [f'[users.{name}]\npassword_sha256_hex = "{digest}"\nrole = "{role}"\n' for name, (digest, role) in users.items()]
    return header + "\n" + "\n".join(blocks)


def _write_private(path: Path, text: str, replace: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if replace:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def credentials(headers: Mapping[str, str], args: Mapping[str, str]) -> tuple[str, str]:
    """The user and password a request carries, read as ClickHouse's HTTP interface reads them.

    One way per request: basic auth, or the ``X-ClickHouse-User``/``-Key`` headers, or the
    ``user``/``password`` URL parameters. None at all means ClickHouse's ``default`` user
    with no password, which is never configured here, so it is refused.
    """
    authorization = headers.get("Authorization")
    header_user, header_key = headers.get("X-ClickHouse-User"), headers.get("X-ClickHouse-Key")
    url_user, url_password = args.get("user"), args.get("password")
    ways = [authorization is not None, header_user is not None or header_key is not None,
            url_user is not None or url_password is not None]
    if sum(ways) > 1:
        raise BadCredentials("credentials were sent in more than one way (basic auth, X-ClickHouse headers, "
                             "URL parameters): use one")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            raise AuthenticationFailed("")
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise BadCredentials("the Authorization header is not valid basic auth") from exc
        name, sep, password = decoded.partition(":")
        if not sep:
            raise BadCredentials("the Authorization header is not valid basic auth (user:password)")
        return name, password
    if ways[1]:
        return header_user or "default", header_key or ""
    return url_user or "default", url_password or ""
