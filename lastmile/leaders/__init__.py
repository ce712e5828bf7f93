"""The group leader's daily brief: :mod:`lastmile.leaders.brief` assembles it from the warehouse,
:mod:`lastmile.leaders.export` writes it as CSV or Markdown for WeCom."""

from lastmile.leaders.brief import BriefUnavailable, BriefWindows, UnknownLeader, assemble

__all__ = ["BriefUnavailable", "BriefWindows", "UnknownLeader", "assemble"]
