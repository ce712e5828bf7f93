"""The OneID 360 from Python: refresh dbt's ``dim_customer``, the one customer table.

Analysts, the report and every lastmile command read one row per person from the dbt model
``dim_customer`` (``dbt/models/marts/core``): each of its measures is defined once, upstream
in dbt, and the feature histories are built from the same intermediates. There is no second
copy of those definitions here. When a process needs the table fresher than the last
``lastmile transform`` (the stream worker behind its OneID resolutions, ``lastmile identity
rebuild``), it runs that same model and what it reads - ``dbt run --select +dim_customer``,
in this process (:mod:`lastmile.transform`); the incremental models upstream take only what
changed.

The refresh needs a warehouse dbt has built once (it creates the reference tables and the
incremental models' state): before that, :func:`refresh_customer_360` does nothing and says
so, and ``lastmile transform`` builds it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lastmile.config import Settings

log = logging.getLogger("lastmile.identity.profiles")

#: The OneID 360 table (a dbt model).
CUSTOMER_360 = "dim_customer"
#: dbt selection that refreshes it: the model and everything it reads.
REFRESH_SELECTION = "+dim_customer"


class CustomerRefreshFailed(RuntimeError):
    """dbt could not refresh the OneID 360: the message names the failing nodes."""


@dataclass
class Refresh:
    """What a refresh did: rows in the OneID 360 (0 when skipped), and why it was skipped."""

    people: int
    seconds: float = 0.0
    skipped: str = ""


def refresh_customer_360(cfg: Settings) -> Refresh:
    """Run ``dim_customer`` and what it reads (``dbt run --select +dim_customer``) in this process.

    Skipped (``people == 0``, ``skipped`` says why) in a warehouse dbt never built. Reference
    data is reloaded from ``$LASTMILE_HOME/reference`` when the files are there, else the
    tables loaded by the last ``lastmile transform`` are used. Raises
    :class:`CustomerRefreshFailed` when dbt fails.
    """
    from lastmile import transform
    from lastmile.warehouse import connect

    warehouse = connect(cfg)
    tables = set(warehouse.tables())
    if CUSTOMER_360 not in tables:
        return Refresh(0, skipped=f"{CUSTOMER_360} not built yet (run `lastmile transform`)")
    reference_files = all((cfg.home / "reference" / f"{name}.jsonl").exists() for name in transform.REFERENCE_TABLES)
    result = transform.run(cfg, select=REFRESH_SELECTION, quiet=True, load_reference_data=reference_files)
    if not result.success:
        raise CustomerRefreshFailed(result.summary() + "; " + "; ".join(f"{f.unique_id}: {f.message}" for f in result.failures))
    return Refresh(warehouse.count(CUSTOMER_360, final=False), result.seconds)


def build_profiles(cfg: Settings) -> int:
    """Refresh the OneID 360 (:func:`refresh_customer_360`); returns its rows (0 when skipped)."""
    outcome = refresh_customer_360(cfg)
    if outcome.skipped:
        log.info("OneID 360 not refreshed: %s", outcome.skipped)
    return outcome.people
