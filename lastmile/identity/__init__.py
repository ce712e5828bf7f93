"""OneID: one profile per person behind phones, WeChat ids, member cards and devices.

Engine-agnostic (numpy/scipy/pandas/pyarrow only); the warehouse layer persists the state
rows (:mod:`lastmile.identity.state`) and feeds links from events.

Modules, one job each: :mod:`.identifiers` (types, normalisation, keyed hashing),
:mod:`.links` (events to links), :mod:`.rules` (+ ``rules.toml``), :mod:`.graph`
(vectorised clustering), :mod:`.resolver` (state, OneIDs, change log), :mod:`.state`
(row formats).
"""

from lastmile.identity.identifiers import (
    Blocklist,
    IdentifierHasher,
    IdType,
    Normalized,
    check,
    normalize,
)
from lastmile.identity.links import Link, epoch_ms, extract_links, links_from_events
from lastmile.identity.resolver import Change, Forgotten, IdentityResolver, ResolveReport
from lastmile.identity.rules import AUDIT_REASONS, Rules
from lastmile.identity.state import TABLES, audit

__all__ = [
    "AUDIT_REASONS", "TABLES", "Blocklist", "Change", "Forgotten", "IdType", "IdentifierHasher", "IdentityResolver",
    "Link", "Normalized", "ResolveReport", "Rules", "audit", "check", "epoch_ms", "extract_links",
    "links_from_events", "normalize",
]
