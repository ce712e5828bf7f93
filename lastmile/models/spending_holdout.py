"""Who is held out of the spending-health cap: one definition for the contact rules, the
simulator and the measurement of the cap's effect.

A cap that is always on cannot show what it does. So a share of the customers the
spending-health model flags at risk (``spending_health.holdout`` in ``contact_rules.yml``) is
never capped, chosen by a hash of their OneID: stable (a customer stays in their arm for as
long as their OneID lives), independent of when or how often they are scored, and the same
in every process. Their impulse spend is what the capped customers' is compared with
(:mod:`lastmile.models.spending_effect`).
"""

from __future__ import annotations

import hashlib

#: Share of at-risk customers held out of the cap (the contact rules' default).
DEFAULT_HOLDOUT_SHARE = 0.2


def in_holdout(key: str, share: float) -> bool:
    """Whether the customer ``key`` (a OneID) is in the holdout: a 64-bit hash below ``share``."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=b"sh-holdout").digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64 < share
