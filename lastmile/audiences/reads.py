"""Reading published audience membership: sizes, pages of members, a person's audiences.

What the API, ``lastmile audience export`` and ``lastmile run`` show comes from here, so all
of them read the same tables the same way: ``audience_members`` (exactly the people in each
audience now), ``audience_membership_changes`` and ``audience_versions`` for when a refresh
last wrote something. Before the first refresh the tables do not exist; every read then
answers "nobody" rather than failing.

Pages of one audience read ``audience_members`` with ``FINAL``: the table is sorted by
audience and OneID, so ``FINAL`` merges the parts in that order and a page (``LIMIT``) stops
after its rows, where grouping every row of the audience by person would read them all. A
person's audiences are read by grouping that person's rows (newest row by ``updated_at``):
their rows are few, and ``FINAL`` would merge every audience's rows to find them.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TextIO

from lastmile.warehouse import Warehouse

#: Largest page of members one call returns (API ``limit`` and export batches).
MAX_PAGE = 1000


class BadCursor(ValueError):
    """A paging cursor this module did not write."""


@dataclass(frozen=True)
class Member:
    """One current member: who, since when, under which definition version."""

    oneid: str
    entered_at: datetime
    version: str

    def as_dict(self) -> dict[str, Any]:
        return {"oneid": self.oneid, "entered_at": _utc(self.entered_at).isoformat(), "version": self.version}


@dataclass(frozen=True)
class Published:
    """What is published for one audience: size, version and the last refresh that wrote something."""

    size: int
    version: str | None
    last_refresh_at: datetime | None


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _has_tables(warehouse: Warehouse) -> bool:
    present = set(warehouse.tables())
    return {"audience_members", "audience_membership_changes", "audience_versions"} <= present


def encode_cursor(oneid: str) -> str:
    """The opaque cursor after ``oneid`` (clients pass it back; they need not read it)."""
    return base64.urlsafe_b64encode(oneid.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        oneid = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode("utf-8")
        if not oneid or encode_cursor(oneid) != cursor:
            raise ValueError(cursor)
        return oneid
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor(f"cursor {cursor[:40]!r} was not returned by this API: start without one") from None


def published(warehouse: Warehouse, audience: str) -> Published:
    """Size, version of the members (the newest one published) and last refresh time of ``audience``."""
    if not _has_tables(warehouse):
        return Published(0, None, None)
    row = warehouse.rows(
        """SELECT
    (SELECT count() FROM audience_members FINAL WHERE audience = {a:String}),
    (SELECT argMax(version, published_at) FROM audience_versions WHERE audience = {a:String}),
    (SELECT max(published_at) FROM audience_versions WHERE audience = {a:String}),
    (SELECT max(at) FROM audience_membership_changes WHERE audience = {a:String}),
    (SELECT count() FROM audience_versions WHERE audience = {a:String})""", {"a": audience})[0]
    size, version, first_published, last_change, versions = row
    if not versions:
        return Published(int(size), None, None)
    moments = [_utc(m) for m in (first_published, last_change) if m is not None and m.year > 1970]
    return Published(int(size), version or None, max(moments) if moments else None)


def member_page(warehouse: Warehouse, audience: str, after: str | None = None, limit: int = MAX_PAGE) -> tuple[list[Member], str | None]:
    """Up to ``limit`` members ordered by OneID, after the OneID ``after``; and the next cursor
    (``None`` on the last page). Paging by OneID rather than by offset means a refresh between
    two pages neither repeats nor skips the people who stayed."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, not {limit}")
    if not _has_tables(warehouse):
        return [], None
    rows = warehouse.rows(
        "SELECT oneid, entered_at, version FROM audience_members FINAL WHERE audience = {a:String} AND oneid > {after:String} "
        "ORDER BY oneid LIMIT {n:UInt32}", {"a": audience, "after": after or "", "n": limit + 1})
    members = [Member(o, _utc(e), v) for o, e, v in rows[:limit]]
    return members, (encode_cursor(members[-1].oneid) if len(rows) > limit else None)


def all_members(warehouse: Warehouse, audience: str, batch: int = MAX_PAGE) -> Iterator[Member]:
    """Every current member of ``audience`` by OneID, read a page at a time (exports of any size)."""
    after: str | None = None
    while True:
        page, cursor = member_page(warehouse, audience, after, batch)
        yield from page
        if cursor is None:
            return
        after = page[-1].oneid


def audiences_of(warehouse: Warehouse, oneid: str) -> list[tuple[str, Member]]:
    """The audiences ``oneid`` is in now, by name, with the membership row of each."""
    if not _has_tables(warehouse):
        return []
    rows = warehouse.rows(
        "SELECT audience, oneid, argMax(entered_at, (updated_at, is_deleted)), argMax(version, (updated_at, is_deleted)) "
        "FROM audience_members WHERE oneid = {o:String} GROUP BY audience, oneid "
        "HAVING argMax(is_deleted, (updated_at, is_deleted)) = 0 ORDER BY audience", {"o": oneid})
    return [(a, Member(o, _utc(e), v)) for a, o, e, v in rows]


#: Columns of an export, in order.
EXPORT_COLUMNS = ("oneid", "entered_at", "version")


def write_members(warehouse: Warehouse, audience: str, fmt: str, stream: TextIO) -> int:
    """Write the current members of ``audience`` to ``stream`` as ``csv`` (with a header) or
    ``jsonl``, ordered by OneID, a page at a time; returns how many were written."""
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"format must be csv or jsonl, not {fmt!r}")
    writer = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writerow(EXPORT_COLUMNS)
    written = 0
    for member in all_members(warehouse, audience):
        row = member.as_dict()
        if writer is not None:
            writer.writerow([row[c] for c in EXPORT_COLUMNS])
        else:
            stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        written += 1
    return written
