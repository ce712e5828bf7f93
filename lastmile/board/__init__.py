"""The live operations board: figures of today for the people who run the communities.

* :mod:`lastmile.board.clock`: which business day "today" is (the newest event's, or ``as_of``)
  and the bounds every panel's SQL is evaluated with.
* :mod:`lastmile.board.panels`: each panel's SQL and how its rows become the JSON the page shows.
* :mod:`lastmile.board.source`: how the board reaches the warehouse (embedded chDB opened by
  the board's own process, or a ClickHouse server, including the worker's ``--serve-port``).
* :mod:`lastmile.board.web`: the routes of ``lastmile serve`` under ``/board`` (page, JSON, static).

Live figures (pickups, cold chain, sales, alerts, pipeline) come from the raw tables, which the
stream worker fills within seconds; weekly ones (service-temperature index) from the dbt marts.
"""

from lastmile.board.clock import BoardWindow, window_for
from lastmile.board.panels import PANELS, compute_board, compute_panel

__all__ = ["BoardWindow", "PANELS", "compute_board", "compute_panel", "window_for"]
