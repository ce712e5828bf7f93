"""Load the Flink job's NDJSON output into the warehouse, idempotently.

Flink writes epoch seconds and the names its SQL uses; the warehouse wants DateTimes, stable
ids and explanations. So each sink's files go first, as they are, into a staging table whose
columns are the sink's (``_stage_<sink>``, Memory engine, emptied before use); one
``INSERT ... SELECT`` then shapes them into the result table. ClickHouse parses the JSON,
not Python, which keeps loading millions of window rows cheap, and it works the same on
embedded chDB and on a ClickHouse server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from lastmile.coldchain import sql
from lastmile.coldchain.flink import output_files
from lastmile.warehouse import Warehouse

_FLINK_TO_CH = {"STRING": "String", "BIGINT": "Int64", "INT": "Int32", "DOUBLE": "Float64"}

#: Result table -> the SELECT over its staging table that shapes the rows.
TRANSFORMS: dict[str, tuple[str, str]] = {
    "windows": ("coldchain_windows", """
SELECT toUInt8(window_minutes), compartment_id, toDateTime(window_start_s, 'UTC'),
  toDateTime(window_start_s + 60 * window_minutes, 'UTC'), locker_id, community_id, product_class,
  toUInt32(readings), toUInt32(duplicates), temperature_min, temperature_max, temperature_avg,
  humidity_min, humidity_max, humidity_avg, toUInt32(door_open_s), toUInt32(out_of_range_readings),
  max_gap_s, toDateTime(last_reading_s, 'UTC')
FROM _stage_windows"""),
    "excursions": ("coldchain_excursions", """
SELECT concat('EXC-', compartment_id, '-', formatDateTime(toDateTime(start_s, 'UTC'), '%Y%m%dT%H%i%SZ', 'UTC')),
  compartment_id, toDateTime(start_s, 'UTC'), toDateTime(last_out_s, 'UTC'), toDateTime(end_s, 'UTC'),
  toDateTime(last_in_range_s, 'UTC'), toUInt32(last_out_s - start_s), locker_id, community_id, product_class,
  toUInt32(readings), temperature_min, temperature_max, temperature_avg, toUInt32(door_open_s)
FROM _stage_excursions"""),
    "silences": ("coldchain_silences", """
SELECT compartment_id, toDateTime(silent_from_s, 'UTC'), toDateTime(silent_until_s, 'UTC'), toUInt32(silence_s),
  locker_id, community_id, product_class
FROM _stage_silences"""),
    "late": ("coldchain_late_readings", """
SELECT reason, ifNull(event_id, ''), ifNull(compartment_id, ''), ifNull(occurred_at, ''),
  if(ts_s IS NULL, NULL, toDateTime(ts_s, 'UTC')), if(watermark_s IS NULL, NULL, toDateTime(watermark_s, 'UTC')),
  watermark_s - ts_s, ifNull(locker_id, ''), ifNull(community_id, ''), ifNull(product_class, ''), temperature_c,
  multiIf(reason = 'beyond_allowed_lateness',
          concat('Reading arrived ', toString(watermark_s - ts_s), ' s behind the event-time watermark; its windows and excursions were already final.'),
          reason = 'future_timestamp',
          'occurred_at lies beyond the allowed clock skew in the future; it would have dragged the watermark along.',
          'Reading lacks a field the job needs (occurred_at parseable, locker_id, compartment_id, product_class, temperature_c).')
FROM _stage_late"""),
}

_COLUMN = re.compile(r"(\w+)\s+(STRING|BIGINT|INT|DOUBLE)")


def stage_columns(sink: str) -> list[tuple[str, str]]:
    """The sink's columns with ClickHouse types (all Nullable: Flink writes null as null)."""
    return [(name, f"Nullable({_FLINK_TO_CH[kind]})") for name, kind in _COLUMN.findall(sql.SINK_COLUMNS[sink])]


def _chunks(path: Path, size: int = 32 << 20) -> Iterator[bytes]:
    """A file in blocks of whole lines."""
    with path.open("rb") as handle:
        rest = b""
        while block := handle.read(size):
            block = rest + block
            cut = block.rfind(b"\n") + 1
            if cut == 0:
                rest = block
                continue
            rest = block[cut:]
            yield block[:cut]
        if rest.strip():
            yield rest


def stage(warehouse: Warehouse, sink: str, out_dir: Path) -> int:
    """Empty ``_stage_<sink>`` and fill it with the sink's files; returns the rows staged."""
    table = f"_stage_{sink}"
    columns = stage_columns(sink)
    warehouse.command(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(f'{n} {t}' for n, t in columns)}) ENGINE = Memory")
    warehouse.command(f"TRUNCATE TABLE {table}")
    for path in output_files(out_dir, sink):
        for block in _chunks(path):
            warehouse.client.raw_insert(table, column_names=[n for n, _ in columns], insert_block=block,
                                        fmt="JSONEachRow", settings={"input_format_skip_unknown_fields": 1})
    return int(warehouse.scalar(f"SELECT count() FROM {table}"))


def publish(warehouse: Warehouse, sink: str) -> None:
    """Shape the staged rows into the result table (its ReplacingMergeTree keeps one per key)."""
    table, select = TRANSFORMS[sink]
    columns = [r[0] for r in warehouse.rows(
        "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {t:String} "
        "AND name != '_loaded_at' ORDER BY position", {"t": table})]
    warehouse.command(f"INSERT INTO {table} ({', '.join(columns)}) {select}")
