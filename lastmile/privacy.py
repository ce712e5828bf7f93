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

import re
from typing import Any

from lastmile.config import Settings
from lastmile.identity.identifiers import IdentifierHasher, normalize
from lastmile.identity.links import Link, Observations, extract_links
from lastmile.identity.rules import Rules

_CACHE_LIMIT = 500_000

#: An identifier field in raw (possibly broken) JSON: "phone": "138 0013 8000".
_FIELD = re.compile(rb'"(phone|previous_phone|unionid|openid|member_card|device_id)"\s*:\s*"([^"]{1,64})"')
#: The same, also matching a value typed as a bare number ("phone": 13800138000).
_ANY_FIELD = re.compile(rb'"(phone|previous_phone|unionid|openid|member_card|device_id)"\s*:\s*(?:"([^"]{1,64})"|(-?[0-9][0-9.eE+]{0,40}))')


class Identifiers:
    """Tokens for identifier values, and identity links for events, under one key and one rule set."""

    def __init__(self, cfg: Settings, rules: Rules | None = None, forgotten: frozenset[str] = frozenset()) -> None:
        self.rules = rules or Rules.load()
        self.hasher = IdentifierHasher(cfg.hash_key_bytes())
        #: Tokens of people who asked to be forgotten: they never reach storage again.
        self.forgotten = forgotten
        self._cache: dict[tuple[str, str], str | None] = {}
        self._observations: Observations = {}

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
        if result in self.forgotten:
            result = None
        if len(self._cache) > _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = result
        return result

    __call__ = token

    def set_forgotten(self, forgotten: frozenset[str]) -> None:
        """Adopt a new suppression list (a long-running worker learns of forget requests)."""
        if forgotten != self.forgotten:
            self.forgotten = forgotten
            self._cache.clear()  # cached tokens of newly forgotten people must not be handed out again

    def mentions_forgotten(self, payload: bytes) -> bool:
        """Does a raw payload (valid JSON or not) carry an identifier of a forgotten person?

        Quarantine keeps payloads as received, so a replayed file could otherwise bring a
        forgotten phone number back through a malformed line.
        """
        if not self.forgotten:
            return False
        for name, value in _FIELD.findall(payload):
            id_type = "phone" if name.endswith(b"phone") else name.decode()
            normalized = normalize(id_type, value.decode("utf-8", "replace"), self.rules.blocklist)
            if normalized is not None and self.hasher.token(id_type, normalized) in self.forgotten:
                return True
        return False

    def spellings_of(self, payload: bytes, tokens: frozenset[str] | set[str]) -> set[str]:
        """The raw identifier values in ``payload`` (valid JSON or not) whose token is in ``tokens``,
        as they were typed ("+86 198-...", a number without quotes): a forget request knows a
        person by tokens, and needs these spellings to find the person in raw text."""
        found: set[str] = set()
        for name, quoted, bare in _ANY_FIELD.findall(payload):
            raw = (quoted or bare).decode("utf-8", "replace")
            id_type = "phone" if name.endswith(b"phone") else name.decode()
            normalized = normalize(id_type, raw, self.rules.blocklist)
            if normalized is not None and self.hasher.token(id_type, normalized) in tokens:
                found.add(raw)
        return found

    def links(self, event: dict[str, Any]) -> list[Link]:
        """The identity evidence of a valid event (hashed; refusals carry their reason)."""
        links = extract_links(event, self.hasher, self.rules.blocklist, self._observations)
        if self.forgotten:
            links = [l for l in links if l.a_token not in self.forgotten and l.b_token not in self.forgotten]
        return links

