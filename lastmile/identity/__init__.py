"""OneID: one profile per person behind phones, WeChat ids, member cards and devices.

Engine-agnostic (numpy/scipy/pandas/pyarrow only); the warehouse layer persists the state
rows (:mod:`lastmile.identity.state`) and feeds links from events.

Modules, one job each: :mod:`.identifiers` (types, normalisation, keyed hashing),
:mod:`.links` (events to links), :mod:`.rules` (+ ``rules.toml``), :mod:`.graph`
(vectorised clustering), :mod:`.resolver` (state, OneIDs, change log), :mod:`.state`
(row formats).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module defining it. Loaded on first use, so code that only hashes
#: identifiers or extracts links (every ingest worker process) does not pay for the
#: resolver's numpy/scipy/pandas imports.
_EXPORTS = {
    "Blocklist": "identifiers", "IdentifierHasher": "identifiers", "IdType": "identifiers", "Normalized": "identifiers",
    "check": "identifiers", "normalize": "identifiers",
    "Link": "links", "epoch_ms": "links", "extract_links": "links", "links_from_events": "links",
    "Change": "resolver", "Forgotten": "resolver", "IdentityResolver": "resolver", "ResolveReport": "resolver",
    "AUDIT_REASONS": "rules", "Rules": "rules",
    "TABLES": "state", "audit": "state",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from lastmile.identity.identifiers import Blocklist, IdentifierHasher, IdType, Normalized, check, normalize
    from lastmile.identity.links import Link, epoch_ms, extract_links, links_from_events
    from lastmile.identity.resolver import Change, Forgotten, IdentityResolver, ResolveReport
    from lastmile.identity.rules import AUDIT_REASONS, Rules
    from lastmile.identity.state import TABLES, audit

__all__ = [
    "AUDIT_REASONS", "TABLES", "Blocklist", "Change", "Forgotten", "IdType", "IdentifierHasher", "IdentityResolver",
    "Link", "Normalized", "ResolveReport", "Rules", "audit", "check", "epoch_ms", "extract_links",
    "links_from_events", "normalize",
]
