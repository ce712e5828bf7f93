"""Engine-agnostic ingest: raw payloads in, warehouse rows and quarantine records out.

Both the Beam backfill and the Faust stream call this, so an event is judged the same way
whichever path it takes. A payload becomes exactly one of two things: a row for its raw
table, or a quarantine record with the reason — nothing is dropped, which is why
``read == valid + quarantined`` holds for every batch.

Work is done a batch at a time: per-event Python overhead is what limits ingest speed, so
the loop below is kept short and rows are handed to ClickHouse as JSONEachRow for it to parse.
The backfill hands whole blocks of file bytes to validation processes and gets one insert
block per table back (:class:`PackedBatch`), so the process that owns the warehouse never
touches an event one by one.
"""

from __future__ import annotations

import base64
import multiprocessing
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import orjson

from lastmile.config import Settings
from lastmile.contracts import ContractError, EventParser
from lastmile.identity.links import IDENTIFIER_OBJECT, Link
from lastmile.privacy import Identifiers
from lastmile.warehouse import Warehouse
from lastmile.warehouse.tables import RowMapper, mappers

#: Quarantine keeps payloads up to this size; larger ones are cut (and the cut is said).
MAX_QUARANTINE_PAYLOAD = 1 << 20


@dataclass
class Batch:
    """The outcome of ingesting one batch of payloads."""

    rows: dict[str, list[bytes]] = field(default_factory=dict)  # raw table -> JSONEachRow lines
    quarantined: list[bytes] = field(default_factory=list)  # quarantine JSONEachRow lines
    links: list[bytes] = field(default_factory=list)  # identity_links JSONEachRow lines
    read: int = 0
    valid: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def quarantine_count(self) -> int:
        return len(self.quarantined)

    def packed(self) -> PackedBatch:
        """The same batch with each table's lines joined into one insert block."""
        blocks = {table: (b"\n".join(lines), len(lines)) for table, lines in self.rows.items() if lines}
        return PackedBatch(blocks, (b"\n".join(self.quarantined), len(self.quarantined)),
                           (b"\n".join(self.links), len(self.links)), self.read, self.valid, self.reasons)


@dataclass
class PackedBatch:
    """A :class:`Batch` ready to insert: per table one JSONEachRow block and its row count.

    This is what crosses from a validation process to the writer: one bytes object per table
    pickles at memory speed, where a list of a hundred thousand lines costs a Python object
    each way.
    """

    blocks: dict[str, tuple[bytes, int]]  # raw table -> (block, rows)
    quarantine: tuple[bytes, int]
    identity_links: tuple[bytes, int]
    read: int
    valid: int
    reasons: Counter[str]

    @property
    def quarantine_count(self) -> int:
        return self.quarantine[1]

    @property
    def link_count(self) -> int:
        return self.identity_links[1]


def numbered_lines(block: bytes, first_line: int) -> list[tuple[int, bytes]]:
    """``(line number, payload)`` for each non-blank line of a block of NDJSON.

    Blank lines separate nothing in NDJSON and are not events; they still count for the
    numbering, so a quarantined event points at its line in the file. A ``\r`` before the
    newline (files written on Windows) is not part of the payload.
    """
    lines = block.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the block's final newline ends a line; it does not start one
    if b"\r" in block:
        lines = [line.rstrip(b"\r") for line in lines]
    return [(number, line) for number, line in enumerate(lines, first_line) if line and not line.isspace()]


class Ingestor:
    """Validates payloads against the contracts, maps them to rows and extracts identity evidence.

    ``identifiers`` turns direct identifiers into keyed tokens before anything is stored,
    and yields the OneID links of each event with the same tokens.
    """

    def __init__(self, identifiers: Identifiers, parser: EventParser | None = None) -> None:
        self.parser = parser or EventParser()
        self.identifiers = identifiers
        self._mappers: dict[str, RowMapper] = mappers(identifiers.token)

    def process(self, source: str, records: Iterable[tuple[int, bytes]]) -> Batch:
        """Ingest ``(position, payload)`` records read from ``source`` (a file or a topic)."""
        batch = Batch()
        received_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        judge = self.parser.judge
        source_json = orjson.dumps(source)
        for position, payload in records:
            batch.read += 1
            try:
                event, verbatim = judge(payload)
            except ContractError as exc:
                if self.identifiers.mentions_forgotten(payload):
                    payload = b"(withheld: the payload names a person who asked to be forgotten)"
                batch.quarantined.append(_quarantine_line(source, position, payload, exc, received_at))
                batch.reasons[exc.reason] += 1
                continue
            event_type = event["event_type"]
            mapper = self._mappers[event_type]
            batch.rows.setdefault(mapper.table, []).append(mapper.line(event, verbatim, source, source_json))
            batch.valid += 1
            if event_type in IDENTIFIER_OBJECT:
                batch.links.extend(_link_line(link) for link in self.identifiers.links(event))
        return batch


def _link_line(link: Link) -> bytes:
    return orjson.dumps({
        "event_id": link.event_id, "event_type": link.event_type, "role": link.role,
        "a_type": link.a_type, "a_token": link.a_token, "b_type": link.b_type or "", "b_token": link.b_token or "",
        "occurred_at_ms": link.occurred_at_ms, "reason": link.reason or "", "detail": link.detail or "",
    })


def _quarantine_line(source: str, position: int, payload: bytes, exc: ContractError, received_at: str) -> bytes:
    raw = payload if isinstance(payload, bytes) else str(payload).encode("utf-8", "surrogatepass")
    error = exc.message
    if len(raw) > MAX_QUARANTINE_PAYLOAD:
        raw = raw[:MAX_QUARANTINE_PAYLOAD]
        error += f" (payload cut to {MAX_QUARANTINE_PAYLOAD} bytes in quarantine)"
    original = ""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # ``payload`` is a String read as text, so it shows the bytes with replacement
        # characters; the exact bytes are kept beside it (``payload_bytes`` reads them back).
        text = raw.decode("utf-8", errors="replace")
        original = base64.b64encode(raw).decode("ascii")
    event_type, event_id = exc.event_type or "", ""
    if exc.reason not in ("not_json", "oversized"):
        try:
            head = orjson.loads(payload)
            if isinstance(head, dict):  # only text is kept: any other value may be huge or deep
                declared_type, declared_id = head.get("event_type"), head.get("event_id")
                event_type = event_type or (declared_type[:64] if isinstance(declared_type, str) else "")
                event_id = declared_id[:64] if isinstance(declared_id, str) else ""
        except orjson.JSONDecodeError:
            pass
    return orjson.dumps(
        {
            "received_at": received_at,
            "source": source,
            "position": position,
            "event_type": event_type,
            "event_id": event_id,
            "reason": exc.reason,
            "error": error,
            "payload": text,
            **({"payload_base64": original} if original else {}),
        }
    )


def write(warehouse: Warehouse, batch: Batch | PackedBatch) -> int:
    """Write a batch's rows, quarantine records and identity evidence; returns the valid rows written.

    A row the warehouse refuses (whatever the contract allowed) must not take its block
    with it: a refused block is split in halves and each half inserted again, down to the
    single rows that are refused, which go to quarantine with the warehouse's reason while
    the rest lands. Re-inserting is harmless (raw tables collapse on ``event_id``). Errors
    that are not about the data (the warehouse unreachable, out of memory or disk) still
    fail the whole write, so the batch is retried rather than quarantined.
    """
    packed = batch.packed() if isinstance(batch, Batch) else batch
    written = 0
    refused: list[tuple[bytes, str]] = []  # (quarantine line, event_id)
    received_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    for table, (block, rows) in packed.blocks.items():
        written += _insert_or_split(warehouse, table, block, rows, refused, received_at)
    quarantine, quarantined = packed.quarantine
    links = packed.identity_links
    if refused:
        lines = [line for line, _ in refused]
        quarantine = b"\n".join(([quarantine] if quarantined else []) + lines)
        quarantined += len(lines)
        gone = {row_id for _, row_id in refused}
        kept_links = [line for line in links[0].split(b"\n") if links[1] and orjson.loads(line).get("event_id") not in gone]
        links = (b"\n".join(kept_links), len(kept_links))
        _account_refusals(batch, refused, quarantine, quarantined, links)
    warehouse.insert_json_block("quarantine", quarantine, quarantined)
    warehouse.insert_json_block("identity_links", *links)
    return written


def _account_refusals(batch: Batch | PackedBatch, refused: list[tuple[bytes, str]], quarantine: bytes,
                      quarantined: int, links: tuple[bytes, int]) -> None:
    """Make the batch say what was written: refused rows count as quarantined, not valid, and
    leave its rows and evidence (handlers of the stream only see rows that are stored)."""
    batch.valid -= len(refused)
    batch.reasons["warehouse_refused"] += len(refused)
    if isinstance(batch, PackedBatch):
        batch.quarantine = (quarantine, quarantined)
        batch.identity_links = links
        return
    gone = {row_id for _, row_id in refused}
    for table, rows in batch.rows.items():
        batch.rows[table] = [row for row in rows if _row_id(row) not in gone] if gone else rows
    batch.quarantined.extend(line for line, _ in refused)
    batch.links = links[0].split(b"\n") if links[1] else []


def _row_id(row: bytes) -> str:
    try:
        found = orjson.loads(row)
    except orjson.JSONDecodeError:
        return ""
    return str(found.get("event_id") or "") if isinstance(found, dict) else ""


#: ClickHouse error codes that say nothing about the rows sent: the write is retried whole.
_NOT_ABOUT_THE_DATA = frozenset({
    3, 16, 47, 60, 74, 75, 76, 81, 159, 164, 173, 202, 209, 210, 236, 241, 242, 243, 279, 394, 425, 497, 516, 999,
})
_CODE = re.compile(r"Code: (\d+)")


def refusal_of_the_data(exc: BaseException) -> bool:
    """Did the warehouse refuse what was sent (a value it cannot parse or store), rather than fail?"""
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    if not isinstance(exc, DatabaseError) or isinstance(exc, OperationalError):
        return False
    found = _CODE.search(str(exc))
    return found is not None and int(found.group(1)) not in _NOT_ABOUT_THE_DATA


def _insert_or_split(warehouse: Warehouse, table: str, block: bytes, rows: int, refused: list[tuple[bytes, str]],
                     received_at: str) -> int:
    """Insert ``block``; on a refusal of its data, bisect it. Refused rows are appended to ``refused``
    as (quarantine line, event_id); returns the rows that landed."""
    try:
        return warehouse.insert_json_block(table, block, rows)
    except Exception as exc:
        if not refusal_of_the_data(exc):
            raise
        lines = block.split(b"\n")
        if len(lines) == 1:
            refused.append((_refused_line(table, block, exc, received_at), _row_id(block)))
            return 0
        half = len(lines) // 2
        return (_insert_or_split(warehouse, table, b"\n".join(lines[:half]), half, refused, received_at)
                + _insert_or_split(warehouse, table, b"\n".join(lines[half:]), len(lines) - half, refused, received_at))


def _refused_line(table: str, row: bytes, exc: BaseException, received_at: str) -> bytes:
    """A quarantine record for a row the warehouse refused: the row as it was sent (identifiers
    already hashed), the warehouse's own words as the error."""
    try:
        head = orjson.loads(row)
    except orjson.JSONDecodeError:
        head = {}
    head = head if isinstance(head, dict) else {}
    message = " ".join(str(exc).split())
    message = re.sub(r"^(Code: \d+\. DB::Exception: )+", "", message)
    message = message.split(" Stack trace")[0][:500]
    return orjson.dumps({
        "received_at": received_at,
        "source": str(head.get("_source") or table)[:256],
        "position": 0,
        "event_type": str(head.get("event_type") or "")[:64],
        "event_id": str(head.get("event_id") or "")[:64],
        "reason": "warehouse_refused",
        "error": f"the warehouse refused the row for {table}: {message}",
        "payload": row.decode("utf-8", errors="replace")[:MAX_QUARANTINE_PAYLOAD],
    })


# -- validating on several cores -------------------------------------------------------------

#: Inputs smaller than this are validated in-process: starting worker processes costs more.
POOL_THRESHOLD_BYTES = 32 << 20

_worker_ingestor: Ingestor | None = None


def _start_worker(cfg: Settings, forgotten: frozenset[str], parent: int) -> None:
    global _worker_ingestor
    die_with_parent(parent)
    _worker_ingestor = Ingestor(Identifiers(cfg, forgotten=forgotten))


#: How often an orphan check runs in a validation process (seconds).
ORPHAN_CHECK_S = 0.5


def die_with_parent(parent: int) -> None:
    """End this process within :data:`ORPHAN_CHECK_S` of ``parent`` dying, even by SIGKILL.

    A killed ``lastmile ingest`` cannot stop its validation processes, and they would go on
    judging (and keep the multiprocessing resource tracker alive) with nobody to write. A
    daemon thread watches for the re-parenting. (``PR_SET_PDEATHSIG`` is not used: it fires
    when the parent *thread* that started the process ends, and the pool may be started
    from a runner's thread that ends before the pipeline does.)
    """
    if os.getppid() != parent:
        os._exit(0)
    threading.Thread(target=_watch_parent, args=(parent,), name="lastmile-orphan-check", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_S)
    os._exit(0)


def process_block(ingestor: Ingestor, source: str, first_line: int, block: bytes) -> PackedBatch:
    """Judge a block of NDJSON whose first line is ``first_line`` of ``source``."""
    return ingestor.process(source, numbered_lines(block, first_line)).packed()


def _process_in_worker(source: str, first_line: int, block: bytes) -> PackedBatch:
    assert _worker_ingestor is not None, "worker not initialised"
    return process_block(_worker_ingestor, source, first_line, block)


def worker_count(configured: int, input_bytes: int) -> int:
    """How many validation processes to use: ``configured``, or (0 = auto) one per core for big inputs."""
    if configured > 0:
        return configured
    if input_bytes < POOL_THRESHOLD_BYTES:
        return 1
    return max(1, min(os.cpu_count() or 1, 4))


class IngestPool:
    """Validates chunks on worker processes, for a pipeline confined to one process.

    Validation is pure Python and holds the GIL, so one process uses one core. When the
    warehouse is embedded (chDB: one process per data directory) the pipeline itself must
    stay in one process, so this pool spreads just the CPU-bound judging over local cores
    while the owning process writes. Workers are spawned, not forked: the parent holds
    ClickHouse's threads, which must not be copied into a child.
    """

    def __init__(self, cfg: Settings, forgotten: frozenset[str], workers: int) -> None:
        self.workers = workers
        self._pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker, initargs=(cfg, forgotten, os.getpid()),
        )

    def submit(self, source: str, first_line: int, block: bytes) -> Future[PackedBatch]:
        """Judge a block of lines on a worker; the parent only moves bytes."""
        return self._pool.submit(_process_in_worker, source, first_line, block)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
