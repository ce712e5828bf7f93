"""Direct identifiers never reach storage in the clear (PIPL, GDPR).

Ingest passes every identifier through :func:`identifier_hasher`: it is normalised first
(so "138 0013 8000" and "+8613800138000" give the same token), blocked junk values ("0",
"null", test numbers) become ``None``, and the rest become keyed hashes under the secret in
``LASTMILE_HASH_KEY`` (or the generated ``$LASTMILE_HOME/hash.key``). Without the key a
token cannot be reversed or matched against a list of phone numbers.
"""

from __future__ import annotations

from collections.abc import Callable

from lastmile.config import Settings
from lastmile.identity.identifiers import IdentifierHasher, normalize


def identifier_hasher(cfg: Settings) -> Callable[[str, str], str | None]:
    """``(id_type, raw value) -> token`` (``None`` for a blocked or unusable value)."""
    hasher = IdentifierHasher(cfg.hash_key_bytes())
    cache: dict[tuple[str, str], str | None] = {}

    def token(id_type: str, raw: str) -> str | None:
        # Identifiers repeat a lot (a person orders many times); the cache saves the
        # normalise-and-hash work on the ingest hot path. Bounded to stay small.
        key = (id_type, raw)
        found = cache.get(key, cache)
        if found is not cache:
            return found  # type: ignore[return-value]
        value = normalize(id_type, raw)
        result = hasher.token(id_type, value) if value is not None else None
        if len(cache) > 500_000:
            cache.clear()
        cache[key] = result
        return result

    return token
