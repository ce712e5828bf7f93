"""lastmile: a streaming data pipeline and CDP for community group-buying retail.

Engine-agnostic domain logic lives here (contracts, identity, warehouse access, simulator,
CLI); the engines' jobs in ``pipelines/`` are thin wiring over it.
"""

__version__ = "0.1.0"
