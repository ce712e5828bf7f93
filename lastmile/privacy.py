"""Direct identifiers never reach storage in the clear (PIPL, GDPR).

Ingest passes every identifier through :class:`Identifiers`: it is normalised first (so
"138 0013 8000" and "+8613800138000" give the same token), blocked junk values ("0",
"null", test numbers — the OneID rules' blocklist) become ``None``, and the rest become
keyed hashes under the secret in ``LASTMILE_HASH_KEY`` (or the generated
``$LASTMILE_HOME/hash.key``). Without the key a token cannot be reversed or matched against
a list of phone numbers. The same object extracts the identity evidence of an event, so the
warehouse columns and the OneID graph always agree on tokens.
"""

from __future__ import annotations

from typing import Any

from lastmile.config import Settings
from lastmile.identity.identifiers import IdentifierHasher, normalize
from lastmile.identity.links import Link, extract_links
from lastmile.identity.rules import Rules

_CACHE_LIMIT = 500_000


class Identifiers:
    """Tokens for identifier values, and identity links for events, under one key and one rule set."""

    def __init__(self, cfg: Settings, rules: Rules | None = None) -> None:
        self.rules = rules or Rules.load()
        self.hasher = IdentifierHasher(cfg.hash_key_bytes())
        self._cache: dict[tuple[str, str], str | None] = {}

    def token(self, id_type: str, raw: str) -> str | None:
        """``(id_type, raw value) -> token``; ``None`` for a blocked or unusable value."""
        # Identifiers repeat a lot (a person orders many times): the cache saves the
        # normalise-and-hash work on the ingest hot path. Bounded to stay small.
        key = (id_type, raw)
        found = self._cache.get(key, self._cache)
        if found is not self._cache:
            return found  # type: ignore[return-value]
        value = normalize(id_type, raw, self.rules.blocklist)
        result = self.hasher.token(id_type, value) if value is not None else None
        if len(self._cache) > _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = result
        return result

    __call__ = token

    def links(self, event: dict[str, Any]) -> list[Link]:
        """The identity evidence of a valid event (hashed; refusals carry their reason)."""
        return extract_links(event, self.hasher, self.rules.blocklist)


def identifier_hasher(cfg: Settings) -> Identifiers:
    """The :class:`Identifiers` for ``cfg`` (callable as ``(id_type, raw) -> token``)."""
    return Identifiers(cfg)
