"""Cold chain: locker telemetry → windows, excursions, silences → incidents and claims.

``sql`` holds the Flink SQL (all per-reading work), ``flink`` runs it, ``load`` brings its
output into the warehouse, ``linkage`` and ``policy`` decide which orders were hurt and what
they are owed, ``incidents`` ties those together, ``tables`` registers migrations 20–26.
The job's entry point is ``pipelines.flink_telemetry.run``.
"""

from lastmile.coldchain.config import DEFAULT_RANGES, ColdChainConfig, CompensationPolicy

__all__ = ["DEFAULT_RANGES", "ColdChainConfig", "CompensationPolicy"]
