"""Whatever a contract accepts, the warehouse takes: events generated from the schemas themselves.

For each contract in ``schemas/``, Hypothesis draws batches of events that satisfy the JSON
Schema (hypothesis-jsonschema reads the schema files, so a new field or looser bound is
covered without touching this test) and sends them through the batch ingest (judge a
block, write it) and through the stream's sink (records → judge → write → handlers) into
one embedded warehouse. Every event must end up written or quarantined with a reason;
nothing may raise.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import types
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lastmile.config import Settings
from lastmile.contracts import REASONS, contracts
from lastmile.ingest import Ingestor, process_block, write
from lastmile.privacy import Identifiers
from lastmile.streaming.sink import Record, StreamSink, source_name
from lastmile.warehouse import Warehouse
from tests.warehouses import empty_embedded_warehouse


def _hypothesis_jsonschema() -> Any:
    """``from_schema``, adapted to the Hypothesis in the lock.

    hypothesis-jsonschema 0.23 draws object keys through ``many(...).more()``, which newer
    Hypothesis replaced by iterating a ``with many(...)`` block; this adapter gives it the
    old calls on top of the new ones (nothing else of the library is touched).
    """
    import hypothesis.internal.conjecture.utils as cu
    import hypothesis_jsonschema._from_schema as generated
    from hypothesis_jsonschema import from_schema

    if not hasattr(cu.many, "more"):
        class LegacyMany:
            def __init__(self, data: Any, **kwargs: Any) -> None:
                self._many = cu.many(data, **kwargs)
                self._many.__enter__()
                self._steps = iter(self._many)

            def more(self) -> bool:
                try:
                    next(self._steps)
                    return True
                except StopIteration:
                    self._many.__exit__(None, None, None)
                    return False

            def reject(self, why: str | None = None) -> None:
                self._many.reject(why)

        generated.cu = types.SimpleNamespace(**{**vars(cu), "many": LegacyMany})
    return from_schema


from_schema = _hypothesis_jsonschema()
EVENT_TYPES = sorted(contracts())
NOW = datetime.now(timezone.utc)
_examples = itertools.count(1)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Warehouse]]:
    """One embedded warehouse for the whole module (opening one per example would dominate)."""
    with empty_embedded_warehouse(tmp_path_factory.mktemp("properties") / "home") as opened:
        yield opened


def recent_times() -> st.SearchStrategy[str]:
    """Times the warehouse keeps (most generated ``date-time`` values are centuries away)."""
    zones = st.sampled_from([timezone.utc, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5, minutes=-30))])
    moments = st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2026, 1, 1), timezones=zones)
    return moments.map(lambda m: m.isoformat())


def batches(event_type: str) -> st.SearchStrategy[list[dict[str, Any]]]:
    """1-5 contract-valid events; most get recent times (``occurred_at`` and the other
    ``date-time`` fields) so they are written rather than refused as out of range."""
    contract = contracts()[event_type]
    times = ["occurred_at"] + sorted(name for name, spec in contract.properties.items()
                                     if spec.get("format") == "date-time" and name != "occurred_at")

    def recent(event: dict[str, Any], moments: list[str]) -> dict[str, Any]:
        return {**event, **{name: moment for name, moment in zip(times, moments) if name in event or name == "occurred_at"}}

    moments = st.one_of(st.none(), st.lists(recent_times(), min_size=len(times), max_size=len(times)),
                        st.lists(recent_times(), min_size=len(times), max_size=len(times)))
    one = st.tuples(from_schema(contract.schema), moments).map(lambda pair: recent(*pair) if pair[1] else pair[0])
    return st.lists(one, min_size=1, max_size=5)


#: Ways a producer may write the same event: JSON Schema calls ``2.0`` an integer, and JSON
#: allows blanks, and line breaks, between any two tokens (a file line cannot hold a line
#: break, a Kafka record can).
STYLES = ("compact", "integral_floats", "blanks")


def _floats(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_floats(v) for v in value]
    return value


def payloads(events: list[dict[str, Any]], tag: str, style: str, line_breaks: bool) -> tuple[list[bytes], list[str]]:
    """Each event with a unique id, as a producer would serialise it (the standard library:
    integers beyond 64 bits and lone surrogates are legal JSON text)."""
    ids = [f"prop-{tag}-{next(_examples):07d}" for _ in events]
    out = []
    for event, event_id in zip(events, ids):
        body = {**event, "event_id": event_id}
        if style == "integral_floats":
            out.append(json.dumps(_floats(body)).encode())
        elif style == "blanks":
            out.append(json.dumps(body, indent=1 if line_breaks else None, separators=(" ,  ", " : ")).encode())
        else:
            out.append(json.dumps(body, separators=(",", ":")).encode())
    return out, ids


def accounted(store: Warehouse, table: str, source: str, ids: list[str]) -> list[str]:
    """The ids of ``ids`` that are neither written nor quarantined (position i+1 is ids[i])."""
    written = {r[0] for r in store.rows(f"SELECT event_id FROM {table} FINAL WHERE event_id IN {{ids:Array(String)}}", {"ids": ids})}
    quarantine = store.rows("SELECT position, event_id, reason FROM quarantine FINAL WHERE source = {s:String}", {"s": source})
    assert all(reason in REASONS for _, _, reason in quarantine), quarantine
    positions = {p for p, _, _ in quarantine}
    refused = {e for p, e, _ in quarantine if p == 0}
    return [i for n, i in enumerate(ids, 1) if i not in written and n not in positions and i not in refused]


PROPERTY = settings(max_examples=10, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_contract_valid_events_are_written_or_quarantined_in_batch_and_stream(
        warehouse: tuple[Settings, Warehouse], event_type: str) -> None:
    """The same drawn events go through both paths (each with its own event ids)."""
    cfg, store = warehouse
    ingestor = Ingestor(Identifiers(cfg))
    sink = StreamSink(store, Ingestor(Identifiers(cfg)))
    table = contracts()[event_type].table
    topic = f"lastmile.{event_type}"

    @PROPERTY
    @given(batches(event_type), st.sampled_from(STYLES))
    def check(events: list[dict[str, Any]], style: str) -> None:
        lines, ids = payloads(events, "batch", style, line_breaks=False)
        source = f"properties/{ids[0]}.jsonl"
        batch = process_block(ingestor, source, 1, b"\n".join(lines) + b"\n")
        write(store, batch)
        assert batch.read == len(lines) == batch.valid + batch.quarantine_count
        assert accounted(store, table, source, ids) == []

        lines, ids = payloads(events, "stream", style, line_breaks=True)
        partition = next(_examples)
        records = [Record(topic, partition, offset, line) for offset, line in enumerate(lines, 1)]
        written = asyncio.run(sink.handle(records))
        assert written.batch.read == len(lines) == written.batch.valid + written.batch.quarantine_count
        assert accounted(store, table, source_name(topic, partition), ids) == []

    try:
        check()
    finally:
        sink.close()
