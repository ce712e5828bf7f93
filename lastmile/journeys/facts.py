"""History, trait and place conditions of journey branches, answered by the warehouse.

A branch condition that is not about the events since entry is written in the audience rule
language (``{trait: credit_tier, op: "=", value: gold}``, ``{event: order, at_least: 2,
days: 30}``, ``{community: C01}``) and compiled by the same compiler, so it means exactly
what it means in an audience file. It is evaluated for one person at the step's time.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lastmile.audiences.definition import TRAITS_VIEW, _plain_to_node, _RuleCompiler
from lastmile.warehouse import Warehouse

_TRAIT_KEYS = {"trait", "community", "building", "leader"}


def _reads_traits(rule: Any) -> bool:
    if isinstance(rule, dict):
        return bool(_TRAIT_KEYS & set(rule)) or any(_reads_traits(v) for v in rule.values())
    if isinstance(rule, list):
        return any(_reads_traits(v) for v in rule)
    return False


class WarehouseFacts:
    """:class:`~lastmile.journeys.engine.Facts` over the warehouse (``audience_traits`` and the raw events).

    A trait condition for a person the marts do not know yet (a neighbour newer than the
    last ``lastmile transform``) is false: nothing is known about them.
    """

    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse

    def matches(self, oneid: str, rule: Any, as_of: datetime) -> bool:
        compiler = _RuleCompiler(Path("journey condition"))
        predicate = compiler.compile(_plain_to_node(rule))
        parameters = dict(compiler.parameters, oneid=oneid, as_of=as_of.astimezone(timezone.utc).replace(tzinfo=None))
        if _reads_traits(rule):
            if TRAITS_VIEW not in self.warehouse.tables():
                return False
            source = f"{TRAITS_VIEW} WHERE oneid = {{oneid:String}} AND"
        else:
            source = "(SELECT {oneid:String} AS oneid) WHERE"
        return bool(self.warehouse.scalar(f"SELECT count() FROM {source} {predicate}", parameters))
