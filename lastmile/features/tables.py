"""Feature tables in the warehouse: the offline side of the Feast repository (``feature_store/``).

Every feature view reads one ``feat_*`` table. The derived ones are dbt models
(``dbt/models/marts/features``): daily histories over the customer intermediates the marts
use too (``int_customer_daily_activity``, ``int_customer_order_lines``), so a feature and the
mart column of the same name have one definition. Tables are *snapshots at business-day
close*: a row for day D holds what was known when day D ended in the business time zone
(``LASTMILE_BUSINESS_TZ``), and its ``event_timestamp`` is that moment (stored in UTC). That is
what makes Feast's point-in-time join correct: a training row at time T only ever sees rows
whose day had closed by T.

Two tables are not derived and stay here: ``feat_customer_realtime``, where the streaming
worker pushes today's counters (:mod:`lastmile.features.realtime`), and
``feat_customer_consent``, the declared dietary needs as loaded (``lastmile.models.consent``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

from lastmile.config import Settings
from lastmile.warehouse import connect


@lru_cache(maxsize=1)
def _project_categories() -> tuple[str, ...]:
    import yaml

    from lastmile.transform import DBT_DIR

    project = yaml.safe_load((DBT_DIR / "dbt_project.yml").read_text(encoding="utf-8"))
    return tuple(project["vars"]["feature_categories"])


#: Catalogue categories, in a fixed order: the category-affinity view has one column each.
#: Defined once, as the dbt var ``feature_categories`` (the models that build the columns read it).
#: An unknown category in an order counts in the totals but in no affinity column.
CATEGORIES: tuple[str, ...] = _project_categories()

#: The dbt models (marts/features) that feature views read, in the order they are reported.
FEATURE_MODELS: tuple[str, ...] = ("feat_customer_profile", "feat_spending_health", "feat_category_affinity",
                                   "feat_customer_sku", "feat_community_sku", "feat_locker_service", "feat_sku",
                                   "feat_customer_credit", "feat_sku_forecast")
#: dbt selection of the feature models (and the intermediates only they read): tagged
#: ``features``, left out of the default ``lastmile transform`` / ``dbt build`` (dbt/selectors.yml).
FEATURE_SELECTION = "tag:features"
#: The same with everything upstream, for a build that has not just run ``lastmile transform``.
FEATURE_SELECTION_WITH_UPSTREAM = "+tag:features"

#: The push source's offline table: the streaming worker's real-time counters.
REALTIME_DDL = """
CREATE TABLE IF NOT EXISTS feat_customer_realtime (
    oneid String, event_timestamp DateTime64(3, 'UTC'),
    rt_orders_today Int64, rt_spend_today_cny Float64, rt_impulse_spend_today_cny Float64, rt_last_order_ts Int64,
    _pushed_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'When the online store had the row (freshness).'
) ENGINE = ReplacingMergeTree ORDER BY (oneid, event_timestamp)
COMMENT 'Feast push source customer_realtime_push: counters the streaming worker updates as orders arrive.'
"""

#: Tables created before ``_pushed_at`` existed get it on the worker's start.
REALTIME_UPGRADE = ("ALTER TABLE feat_customer_realtime ADD COLUMN IF NOT EXISTS "
                    "_pushed_at DateTime64(3, 'UTC') DEFAULT now64(3)")

_CONSENT = """
CREATE OR REPLACE TABLE feat_customer_consent ENGINE = MergeTree ORDER BY (oneid, event_timestamp)
COMMENT 'Feast view customer_consent: declared dietary needs (ref_dietary_declarations), valid from the declaration.'
AS SELECT oneid, declared_at AS event_timestamp, dietary_need AS dietary_need_declared
FROM ref_dietary_declarations FINAL
"""

_CONSENT_EMPTY = """
CREATE OR REPLACE TABLE feat_customer_consent (
    oneid String, event_timestamp DateTime64(3, 'UTC'), dietary_need_declared Bool
) ENGINE = MergeTree ORDER BY (oneid, event_timestamp)
COMMENT 'Feast view customer_consent: empty until dietary declarations are loaded (lastmile.models.consent).'
"""

#: Tables Feast reads (a feature view each).
FEATURE_TABLES = (*FEATURE_MODELS, "feat_customer_realtime", "feat_customer_consent")


class FeatureBuildFailed(RuntimeError):
    """dbt could not build the feature models: the message names the failing nodes."""


@dataclass
class BuildReport:
    rows: dict[str, int]
    seconds: dict[str, float]
    credit_source: str = "neighbor_credit_score"

    def summary(self) -> str:
        return ", ".join(f"{t} {n:,}" for t, n in self.rows.items()) + f" (credit: {self.credit_source})"


def build_feature_tables(cfg: Settings, run_dbt: bool = True, upstream: bool = True) -> BuildReport:
    """Bring every ``feat_*`` table up to date; returns row counts and timings.

    ``run_dbt`` runs the feature models: with everything they read when ``upstream`` (``dbt
    run --select +tag:features``: the incremental models upstream only take what is new),
    or only them right after a ``lastmile transform`` (``upstream=False``). Then the consent
    and real-time tables are made to exist.
    """
    from lastmile import transform

    seconds: dict[str, float] = {}
    if run_dbt:
        result = transform.run(cfg, select=FEATURE_SELECTION_WITH_UPSTREAM if upstream else FEATURE_SELECTION, quiet=True)
        seconds["dbt"] = round(result.seconds, 3)
        if not result.success:
            raise FeatureBuildFailed(result.summary() + "; " + "; ".join(f"{f.unique_id}: {f.message}" for f in result.failures))
    warehouse = connect(cfg)
    tables = set(warehouse.tables())
    missing = [m for m in FEATURE_MODELS if m not in tables]
    if missing:
        raise FeatureBuildFailed(f"feature tables missing: {', '.join(missing)} (run `lastmile features apply`)")
    t0 = time.perf_counter()
    warehouse.command(_CONSENT if "ref_dietary_declarations" in tables else _CONSENT_EMPTY)
    warehouse.command(REALTIME_DDL)
    seconds["consent_realtime"] = round(time.perf_counter() - t0, 3)
    rows = {name: warehouse.count(name, final=False) for name in FEATURE_TABLES}
    return BuildReport(rows=rows, seconds=seconds)
