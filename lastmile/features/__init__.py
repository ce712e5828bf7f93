"""The Feast feature store: warehouse feature tables, apply, materialize, push, online reads.

Functions for the CLI (lastmile/cli.py registers them): :func:`apply_command`,
:func:`materialize_command`, :func:`env_command`.
"""

from __future__ import annotations

from datetime import datetime

from lastmile.config import Settings, settings as current_settings


def apply_command(cfg: Settings | None = None) -> str:
    """`lastmile features apply`: build the feat_* tables and register feature_store/."""
    from lastmile.features.store import apply

    return apply(cfg or current_settings()).summary()


def materialize_command(cfg: Settings | None = None, end: datetime | None = None, full: bool = False,
                        feast_path: bool = False) -> str:
    """`lastmile features materialize [--full] [--feast-path]`: incremental unless --full."""
    from lastmile.features.store import materialize

    return materialize(cfg or current_settings(), end=end, incremental=not full, fast=not feast_path).summary()


def env_command(cfg: Settings | None = None) -> str:
    """`lastmile features env`: export lines for the Feast CLI."""
    from lastmile.features.store import shell_env

    return shell_env(cfg or current_settings())
