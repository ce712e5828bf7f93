"""Journeys: personalised communication sequences started by a behaviour or an audience entry.

Files in ``journeys/`` (:mod:`~lastmile.journeys.definition`), a pure state machine
(:mod:`~lastmile.journeys.engine`), state in the warehouse (:mod:`~lastmile.journeys.store`),
the pass that advances them (:mod:`~lastmile.journeys.scheduler`) and what marketing reads
(:mod:`~lastmile.journeys.stats`).
"""

from lastmile.journeys.definition import Journey, JourneyError, load_journey, load_journeys

__all__ = ["Journey", "JourneyError", "load_journey", "load_journeys"]
