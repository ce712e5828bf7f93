"""When audiences are evaluated: warehouse audiences after each dbt build, event audiences on the stream.

An audience file's ``freshness`` decides it. ``warehouse`` (the default) audiences read the
marts (``audience_traits``), which change only when dbt builds them, so they are refreshed
right after a successful ``lastmile transform``. ``event`` audiences are decided by a
person's own events alone; the stream worker evaluates them for the people each batch
touched (:mod:`lastmile.streaming.audiences`), so a person enters within seconds of the event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lastmile.audiences.definition import Audience, load_audiences
from lastmile.audiences.membership import newest_event_time, refresh
from lastmile.warehouse import Warehouse


def split(audiences: list[Audience]) -> tuple[list[Audience], list[Audience]]:
    """``(warehouse audiences, event audiences)``."""
    return ([a for a in audiences if a.freshness != "event"], [a for a in audiences if a.freshness == "event"])


def refresh_after_build(warehouse: Warehouse, folder: Path) -> list[dict[str, Any]]:
    """Refresh the warehouse audiences of ``folder`` over the marts a build just published.

    Returns one summary per audience (``audience``, ``version``, ``size``, ``entries``,
    ``exits``) or, for one that could not be refreshed, ``audience`` and ``error``. The build
    already succeeded: a folder that does not load, or an audience the warehouse refuses, is
    reported (``audience`` ``*`` for the whole folder) and the others are still refreshed.
    """
    try:
        audiences, _ = split(load_audiences(folder))
    except Exception as exc:  # noqa: BLE001 - reported next to a successful build
        return [{"audience": "*", "error": " ".join(str(exc).split())}]
    if not audiences:
        return []
    results: list[dict[str, Any]] = []
    try:
        moment = newest_event_time(warehouse)
    except Exception as exc:  # noqa: BLE001
        return [{"audience": a.name, "version": a.version, "error": " ".join(str(exc).split())} for a in audiences]
    for audience in audiences:
        try:
            s = refresh(warehouse, audience, moment).summary()
        except Exception as exc:  # noqa: BLE001 - one audience failing leaves the others refreshed
            results.append({"audience": audience.name, "version": audience.version, "error": " ".join(str(exc).split())[:400]})
            continue
        results.append({k: s[k] for k in ("audience", "version", "size", "entries", "exits")})
    return results
