"""A group leader's export of an audience: their building's neighbours, consented, pseudonymised.

Leaders work their neighbours from WeCom and SCRM tools, which take a file. What a leader's
file may hold is narrower than the audience:

* **their building only**: the members whose home building (``audience_traits.home_building_id``,
  where most of their orders go) is the leader's building (``ref_leaders``), as in the
  leader's brief; a neighbour of another building never appears;
* **consented only**: the members whose current consent grants every purpose of the export
  on its channel (default ``marketing`` on ``wecom_leader``), decided in the warehouse by
  :func:`~lastmile.audiences.contact_rules.consented_oneids_sql` when the file is written, so
  a withdrawal ingested a moment ago (batch or stream) drops the person from the next file,
  and a forgotten person is never in it;
* **pseudonymised by default**: each person is a keyed hash (HMAC-SHA256) of their OneID
  under a key derived from the identifier hash key (``LASTMILE_HASH_KEY``) and the leader:
  the same person keeps the same id in every file of that leader (the tool can follow them
  from one export to the next), two leaders' files cannot be joined, and nobody without
  the key can turn an id back into a OneID. The OneID itself (``--identifiers oneid``) is
  written only when the contact rules allow it (``exports.clear_identifiers`` in
  ``contact_rules.yml``, off by default) and only for people who also granted
  ``personalised_recommendation`` on the channel (a OneID joins the file to their whole
  profile); the others keep the keyed hash, and ``id_kind`` says which one a row has.

Direct identifiers (phones, openids) are never in the warehouse in the clear, so never in a
file either.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TextIO

from lastmile.audiences.contact_rules import CHANNELS, CONSENT_PURPOSES, ContactRules, consented_oneids_sql
from lastmile.audiences.definition import TRAITS_VIEW, AudienceError
from lastmile.leaders.brief import BriefUnavailable, UnknownLeader, find_leader
from lastmile.warehouse import Warehouse

#: Columns of a leader's export, in order.
LEADER_EXPORT_COLUMNS = ("id", "id_kind", "building_id", "entered_at", "version")
#: How a person is identified in a leader's export.
IDENTIFIERS = ("hash", "oneid")
#: The purpose a person must also grant for their OneID to be written in the clear.
CLEAR_PURPOSE = "personalised_recommendation"


class ExportRefused(AudienceError):
    """The export asked for something the configuration or the data does not allow."""


@dataclass(frozen=True)
class LeaderExport:
    """What one leader's file is: which audience, for which purposes on which channel, how identified."""

    audience: str
    leader_id: str
    purposes: tuple[str, ...] = ("marketing",)
    channel: str = "wecom_leader"
    identifiers: str = "hash"

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ExportRefused(f"unknown channel {self.channel!r}; expected one of {', '.join(CHANNELS)}")
        unknown = [p for p in self.purposes if p not in CONSENT_PURPOSES]
        if not self.purposes or unknown:
            raise ExportRefused(f"purposes must be some of {', '.join(CONSENT_PURPOSES)}, got {', '.join(self.purposes) or 'none'}")
        if self.identifiers not in IDENTIFIERS:
            raise ExportRefused(f"identifiers must be one of {', '.join(IDENTIFIERS)}, not {self.identifiers!r}")


def leader_key(hash_key: bytes, leader_id: str) -> bytes:
    """The key of one leader's pseudonyms: derived, so the identifier hash key itself never leaves."""
    return hmac.new(hash_key, b"lastmile audience export|" + leader_id.encode("utf-8"), hashlib.sha256).digest()


def pseudonym(key: bytes, oneid: str) -> str:
    """A person's id in one leader's files (hex HMAC-SHA256 of the OneID)."""
    return hmac.new(key, oneid.encode("utf-8"), hashlib.sha256).hexdigest()


def leader_rows(warehouse: Warehouse, export: LeaderExport, hash_key: bytes, rules: ContactRules) -> Iterator[dict[str, Any]]:
    """The rows of ``export``, ordered by id: the leader's building's consented members."""
    if export.identifiers == "oneid" and not rules.clear_identifiers:
        raise ExportRefused("OneIDs in the clear are not allowed by the contact rules (exports.clear_identifiers in "
                            "contact_rules.yml); the default keyed hash needs no permission")
    try:
        leader = find_leader(warehouse, export.leader_id)
    except (UnknownLeader, BriefUnavailable) as exc:
        raise ExportRefused(str(exc).strip("'\"")) from None
    present = set(warehouse.tables())
    needed = {"audience_members", TRAITS_VIEW, "raw_consent", "event_oneid"}
    if not needed <= present:
        # no published members, no traits or no consent ever recorded: nobody may be listed
        return
    clear_purposes = tuple(dict.fromkeys((*export.purposes, CLEAR_PURPOSE)))
    rows = warehouse.rows(f"""
SELECT m.oneid, m.entered_at, m.version,
       {{clear:UInt8}} = 1 AND m.oneid IN ({consented_oneids_sql(export.channel, clear_purposes)}) AS clear
FROM audience_members AS m FINAL
WHERE m.audience = {{audience:String}}
  AND m.oneid IN (SELECT oneid FROM {TRAITS_VIEW} WHERE home_building_id = {{building:String}})
  AND m.oneid IN ({consented_oneids_sql(export.channel, export.purposes)})""",
                          {"audience": export.audience, "building": leader.building_id,
                           "clear": int(export.identifiers == "oneid")})
    key = leader_key(hash_key, export.leader_id)
    out = []
    for oneid, entered_at, version, in_clear in rows:
        moment = entered_at.replace(tzinfo=timezone.utc) if entered_at.tzinfo is None else entered_at.astimezone(timezone.utc)
        out.append({"id": oneid if in_clear else pseudonym(key, oneid), "id_kind": "oneid" if in_clear else "keyed_hash",
                    "building_id": leader.building_id, "entered_at": moment.isoformat(), "version": version})
    yield from sorted(out, key=lambda r: r["id"])


def write_leader_export(warehouse: Warehouse, export: LeaderExport, hash_key: bytes, rules: ContactRules, fmt: str,
                        stream: TextIO) -> int:
    """Write ``export`` as ``csv`` (with a header) or ``jsonl``; returns how many people were written."""
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"format must be csv or jsonl, not {fmt!r}")
    writer = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
    rows = list(leader_rows(warehouse, export, hash_key, rules))  # errors before anything is written
    if writer is not None:
        writer.writerow(LEADER_EXPORT_COLUMNS)
    for row in rows:
        if writer is not None:
            writer.writerow([row[c] for c in LEADER_EXPORT_COLUMNS])
        else:
            stream.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)
