"""Audiences: people lastmile keeps a list of, defined in reviewed files and kept true.

:mod:`lastmile.audiences.definition` reads and checks audience files and compiles rules to
ClickHouse SQL; :mod:`lastmile.audiences.membership` evaluates them over ``audience_traits``
and publishes membership with its history.
"""

from lastmile.audiences.definition import Audience, AudienceError, Compiled, load_audience, load_audiences, trait_columns
from lastmile.audiences.membership import Evaluation, evaluate, newest_event_time, refresh, refresh_all, select_members

__all__ = ["Audience", "AudienceError", "Compiled", "Evaluation", "evaluate", "load_audience", "load_audiences",
           "newest_event_time", "refresh", "refresh_all", "select_members", "trait_columns"]
