"""Whether tables exist, asked without a catalogue read each time.

The worker's journey passes and the contact rules ask, several times per pass, whether a table
they read exists yet (``event_oneid`` appears with the first OneID run, ``raw_consent`` with the
first consent event, ``audience_traits`` with the first ``lastmile transform``). Each answer is a
read of ``system.tables``: a few milliseconds on the embedded warehouse, paid while the warehouse
is held. lastmile creates these tables and never drops them while a process runs, so a table
found once is remembered for that connection; a table not found is looked up again at the next
question, so one created meanwhile (by the worker or by another command over the served
warehouse) is seen as soon as it exists.
"""

from __future__ import annotations

import threading
import weakref

from lastmile.warehouse import Warehouse

_found: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # a warehouse's client -> the tables found on it
_lock = threading.Lock()


def present(warehouse: Warehouse, *names: str) -> bool:
    """Whether every table (or view) of ``names`` exists in ``warehouse``."""
    with _lock:
        known = _found.get(warehouse.client)
        if known is not None and known.issuperset(names):
            return True
    tables = set(warehouse.tables())
    with _lock:
        _found[warehouse.client] = tables | _found.get(warehouse.client, set())
    return tables.issuperset(names)


def forget(warehouse: Warehouse) -> None:
    """Drop what is remembered about ``warehouse`` (after a statement failed: a table may be gone)."""
    with _lock:
        _found.pop(warehouse.client, None)
