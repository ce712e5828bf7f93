"""Who the spending-health model flags at risk: the flag the contact rules' daily cap reads.

The recommender caps at-risk customers with :meth:`~lastmile.models.service.ModelService.spending_health`:
the trained model (:class:`~lastmile.models.spending.SpendingModel`) over the customer's
``spending_health_v1`` features in the online store. A journey send or an audience export
must be capped by the same flag, or the cap would hold for recommendations only; so this reads
the same model over the same features, for many people at once.

No trained model yet (``lastmile train`` has not run in ``$LASTMILE_HOME``) or no online
features: nobody can be flagged, and :attr:`SpendingRisk.unavailable` says why (the desk
reports it instead of pretending the people were scored).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from lastmile.config import Settings
from lastmile.models.spending import FEATURE_SERVICE, MODEL_NAME, SpendingModel

log = logging.getLogger("lastmile.models.spending_risk")


class SpendingRisk:
    """The at-risk flag of OneIDs (model and online reader loaded at the first question)."""

    def __init__(self, cfg: Settings) -> None:
        self.cfg = cfg
        self.unavailable: str | None = None
        self._model: SpendingModel | None = None
        self._reader: Any = None
        self._loaded = False

    def _load(self) -> None:
        self._loaded = True
        directory = self.cfg.home / "models" / MODEL_NAME
        if not (directory / "model.json").exists():
            self.unavailable = f"no trained spending-health model in {directory} (lastmile train)"
            return
        try:
            from lastmile.features.online import OnlineReader
            from lastmile.features.store import get_store

            store = get_store(self.cfg)
            self._reader = OnlineReader(store, store.get_feature_service(FEATURE_SERVICE))
            self._model = SpendingModel.load(directory)
        except Exception as exc:  # noqa: BLE001 - a feature store that does not load leaves nobody flagged, said once
            self.unavailable = f"spending-health features not readable: {' '.join(str(exc).split())[:200]}"
            log.warning("contact rules: %s; nobody is capped as at risk", self.unavailable)

    def at_risk(self, oneids: Sequence[str]) -> set[str]:
        """The ones of ``oneids`` the model flags (their features as the online store has them now)."""
        if not self._loaded:
            self._load()
        people = sorted({o for o in oneids if o and not o.startswith("token:")})
        if self._model is None or not people:
            return set()
        got = self._reader.read([{"oneid": o} for o in people])
        names = [k for k in got if k != "oneid"]
        flagged: set[str] = set()
        for i, oneid in enumerate(people):
            row = {k: got[k][i] for k in names}
            if any(v is not None for v in row.values()) and self._model.assess(row)["at_risk"]:
                flagged.add(oneid)
        return flagged


__all__ = ["SpendingRisk"]
