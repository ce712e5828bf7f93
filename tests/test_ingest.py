"""Beam ingest into the embedded warehouse: counts add up, nothing is lost, re-runs never double-count."""

from __future__ import annotations

import random
from pathlib import Path

import apache_beam as beam
import orjson
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from lastmile.config import Settings
from lastmile.identity.identifiers import IdentifierHasher, normalize
from lastmile.ingest import numbered_lines
from lastmile.summary import summarize
from lastmile.warehouse import connect
from pipelines import beam_ingest
from tests.factories import BASE, event, packaging_return


def write_lines(directory: Path, name: str, lines: list[bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_validate_and_map_counts_each_payload_once(home: Settings) -> None:
    good = orjson.dumps(event("order"))
    payloads = [good, b"{", orjson.dumps(event("order", stars=3)), orjson.dumps(event("pickup"))]
    chunk = beam_ingest.EventChunk("orders/2026-11-20.jsonl", 1, b"\n".join(payloads) + b"\n")
    with TestPipeline() as pipeline:
        batches = (
            pipeline
            | beam.Create([chunk])
            | beam.ParDo(beam_ingest.ValidateAndMap())
            | beam.Map(lambda b: (b.read, b.valid, b.quarantine_count, sorted(b.reasons.items()), sorted(b.blocks)))
        )
        assert_that(batches, equal_to([(4, 2, 2, [("not_json", 1), ("unexpected_field", 1)], ["raw_order", "raw_pickup"])]))


def test_read_event_chunks_cuts_at_line_ends_and_keeps_line_numbers(tmp_path: Path) -> None:
    """Chunks end on a newline whatever the chunk size (a line longer than a chunk is read on
    to its end), blank lines are skipped but counted, a CR before the newline is dropped and a
    last line without a newline is kept."""
    long = b"x" * 25
    (tmp_path / "review.jsonl").write_bytes(b"a\n\nb\r\n  \n" + long + b"\nc")
    with TestPipeline() as pipeline:
        chunks = (
            pipeline
            | beam.io.fileio.MatchFiles(str(tmp_path / "*.jsonl"))
            | beam.io.fileio.ReadMatches()
            | beam.ParDo(beam_ingest.ReadEventChunks(str(tmp_path), chunk_bytes=4))
        )
        assert_that(chunks | beam.Map(lambda c: (c.source, c.block.endswith(b"\n") or c.block == b"c")),
                    equal_to([("review.jsonl", True)] * 5), label="whole lines")
        lines = chunks | beam.FlatMap(lambda c: numbered_lines(c.block, c.first_line))
        assert_that(lines, equal_to([(1, b"a"), (3, b"b"), (5, long), (6, b"c")]), label="numbered")


def one_of_each() -> dict[str, list[bytes]]:
    files = {t: [orjson.dumps(event(t))] for t in BASE}
    files["return"].append(orjson.dumps(packaging_return()))
    return files


def test_ingest_end_to_end_lands_every_event_type(home: Settings) -> None:
    events = home.home / "events"
    for event_type, lines in one_of_each().items():
        write_lines(events, f"{event_type}.jsonl", lines)
    report = beam_ingest.run(events)
    # One event of each of the eight contracts, plus a packaging return beside the claim.
    assert (report.read, report.valid, report.quarantined, report.written) == (9, 9, 0, 9)
    summary = summarize(connect())
    assert summary.rows == {"raw_consent": 1, "raw_identify": 1, "raw_inventory": 1, "raw_locker_telemetry": 1,
                            "raw_order": 1, "raw_pickup": 1, "raw_return": 2, "raw_review": 1}
    runs = connect().rows("SELECT read, valid, quarantined, written FROM ingest_runs")
    assert runs == [(9, 9, 0, 9)]


def test_identifiers_are_stored_as_keyed_hashes_of_normalised_values(home: Settings) -> None:
    events = home.home / "events"
    for event_type, lines in one_of_each().items():
        write_lines(events, f"{event_type}.jsonl", lines)
    beam_ingest.run(events)
    warehouse = connect()
    token = IdentifierHasher(b"test-key-not-secret").token("phone", normalize("phone", "13800138000"))
    # "138 0013 8000" (order), "+86 13800138000" (pickup) and "13800138000" (identify) are one phone.
    assert warehouse.rows("SELECT buyer_phone FROM raw_order") == [(token,)]
    assert warehouse.rows("SELECT collector_phone FROM raw_pickup") == [(token,)]
    assert warehouse.rows("SELECT identifiers_phone FROM raw_identify") == [(token,)]
    dump = str(warehouse.rows("SELECT * FROM raw_order")) + str(warehouse.rows("SELECT * FROM raw_identify"))
    for clear in ("13800138000", "oQ7x-9fa2", "uW-1a2b3c"):
        assert clear not in dump


def test_event_time_is_stored_in_utc(home: Settings) -> None:
    events = home.home / "events"
    write_lines(events, "order.jsonl", [orjson.dumps(event("order", occurred_at="2026-11-20T16:05:00.250+08:00"))])
    beam_ingest.run(events)
    assert str(connect().scalar("SELECT toString(occurred_at) FROM raw_order")) == "2026-11-20 08:05:00.250"


def test_reingesting_the_same_files_leaves_counts_unchanged(home: Settings) -> None:
    events = home.home / "events"
    for event_type, lines in one_of_each().items():
        write_lines(events, f"{event_type}.jsonl", lines + [b"{oops", orjson.dumps(event(event_type, source=""))])
    first = beam_ingest.run(events)
    before = summarize(connect())
    second = beam_ingest.run(events)
    after = summarize(connect())
    assert first.read == second.read == 25  # 9 valid events and 2 bad lines for each of the 8 files
    assert before.rows == after.rows and before.quarantined == after.quarantined
    assert after.total_rows == 9 and after.total_quarantined == 16


def spoil(rng: random.Random, good: dict) -> bytes:
    """One malformed line, of a kind chosen at random."""
    kind = rng.choice(["truncated", "missing", "wrong_type", "unknown", "future", "oversized", "array"])
    bad = dict(good)
    if kind == "truncated":
        return orjson.dumps(bad)[: rng.randint(1, 40)]
    if kind == "missing":
        bad.pop("order_id")
    elif kind == "wrong_type":
        bad["total_amount"] = "fifty"
    elif kind == "unknown":
        bad["event_type"] = "coupon"
    elif kind == "future":
        bad["occurred_at"] = "2099-01-01T00:00:00+08:00"
    elif kind == "oversized":
        return orjson.dumps(bad) + b" " * 70_000
    else:
        return orjson.dumps([bad])
    return orjson.dumps(bad)


def test_a_file_heavy_with_malformed_lines_loses_nothing(home: Settings) -> None:
    rng = random.Random(7)
    lines, expected_valid = [], set()
    for i in range(600):
        good = event("order", order_id=f"ord-{i:09d}")
        if rng.random() < 0.4:
            lines.append(spoil(rng, good))
        else:
            lines.append(orjson.dumps(good))
            expected_valid.add(good["event_id"])
            if rng.random() < 0.1:  # an exact re-send: valid, but one event
                lines.append(orjson.dumps(good))
    events = home.home / "events"
    write_lines(events, "order.jsonl", lines)
    report = beam_ingest.run(events)
    warehouse = connect()
    assert report.read == len(lines)
    assert report.valid + report.quarantined == report.read
    assert warehouse.count("raw_order") == len(expected_valid)
    assert warehouse.count("quarantine") == report.quarantined
    assert sum(report.reasons.values()) == report.quarantined
    assert set(report.reasons) <= {"not_json", "missing_field", "wrong_type", "unknown_event_type", "future_timestamp", "oversized", "not_an_object"}
    reasons = dict(warehouse.rows("SELECT reason, count() FROM quarantine FINAL GROUP BY reason"))
    assert reasons == report.reasons
    positions = [p for (p,) in warehouse.rows("SELECT position FROM quarantine FINAL WHERE reason = 'missing_field' ORDER BY position")]
    assert all(b"order_id" not in lines[p - 1] for p in positions), "quarantine points at the offending line"


def test_ingest_of_an_empty_directory_is_refused_by_the_cli(home: Settings) -> None:
    from typer.testing import CliRunner

    from lastmile.cli import app

    result = CliRunner().invoke(app, ["ingest", "--events", str(home.home / "nothing")])
    assert result.exit_code == 2
    assert "no event files" in result.output
