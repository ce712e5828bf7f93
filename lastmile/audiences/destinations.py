"""Delivering audience entries and exits to destinations: a Kafka topic and signed webhooks.

Every change in ``audience_membership_changes`` becomes one event with a deterministic id,
the sha256 of ``audience|version|oneid|change|at`` (``at`` as ``YYYY-MM-DD hh:mm:ss.fff``
UTC), so a consumer that sees an event twice can tell. What each destination has received is
recorded in the warehouse (``audience_deliveries``, the outbox): a delivery sends only the
changes its destination has not received, so running it again sends nothing twice, and a
crash between a send and its record re-sends that one batch at worst (consumers deduplicate
by id) - it never loses one.

A batch a destination refuses is retried with exponential backoff and jitter; after
``max_attempts`` failures its events go to ``audience_dead_letters`` with the last error, and
the destination's remaining events of that run follow them without further attempts (it is
down: hammering it helps nobody). ``lastmile audience replay --dead-letters`` sends them again
once it is back. Each destination is delivered by a thread of its own with its own timeout,
so a slow or dead destination never holds up the others; only this module's calling thread
touches the warehouse.

Destinations are configured in a YAML file (``LASTMILE_AUDIENCE_DESTINATIONS``)::

    destinations:
      - name: audience_changes        # the Kafka topic, keyed by OneID
        kind: kafka
        audiences: all
      - name: scrm
        kind: webhook
        url: https://scrm.example.com/lastmile
        secret_env: SCRM_WEBHOOK_SECRET   # the secret itself never sits in the file
        audiences: [top_credit_tier, lapsed_health_tea_buyers]
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import queue
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import yaml

from lastmile.audiences.definition import AudienceError
from lastmile.audiences.membership import ensure_tables as ensure_membership_tables
from lastmile.warehouse import Warehouse

#: The Kafka topic of audience entries and exits (key: the OneID).
CHANGES_TOPIC = "lastmile.audience_changes"
SIGNATURE_HEADER = "X-Lastmile-Signature"
TIMESTAMP_HEADER = "X-Lastmile-Timestamp"

TABLES_SQL = (
    """CREATE TABLE IF NOT EXISTS audience_deliveries (
    destination LowCardinality(String) COMMENT 'Destination name (the destinations file).',
    event_id String COMMENT 'sha256 of audience|version|oneid|change|at: the id consumers deduplicate by.',
    audience LowCardinality(String) COMMENT 'Audience of the change.',
    oneid String COMMENT 'The person.',
    change Enum8('enter' = 1, 'exit' = 2) COMMENT 'enter or exit.',
    delivered_at DateTime64(3, 'UTC') COMMENT 'When the destination acknowledged it (UTC).'
) ENGINE = ReplacingMergeTree(delivered_at) ORDER BY (destination, event_id)""",
    """CREATE TABLE IF NOT EXISTS audience_dead_letters (
    destination LowCardinality(String) COMMENT 'Destination that refused the event.',
    event_id String COMMENT 'The event id (see audience_deliveries).',
    audience LowCardinality(String) COMMENT 'Audience of the change.',
    oneid String COMMENT 'The person.',
    change Enum8('enter' = 1, 'exit' = 2) COMMENT 'enter or exit.',
    attempts UInt16 COMMENT 'Attempts made before giving up (0: the destination was already down in that run).',
    error String COMMENT 'The last error, in words.',
    failed_at DateTime64(3, 'UTC') COMMENT 'When it was given up (UTC). Open while the event is not in audience_deliveries.'
) ENGINE = MergeTree ORDER BY (destination, event_id, failed_at)""",
)

_EVENT_ID_SQL = "lower(hex(SHA256(concat(audience, '|', version, '|', oneid, '|', toString(change), '|', toString(at)))))"
_CHANGES = f"""SELECT {_EVENT_ID_SQL} AS event_id, audience, version, oneid, toString(change) AS change, at, reason
FROM audience_membership_changes WHERE (audience IN {{audiences:Array(String)}} OR {{all:UInt8}} = 1)"""


class DestinationError(AudienceError):
    """A destinations file or a destination's configuration is wrong (names the file and entry)."""


def event_id(audience: str, version: str, oneid: str, change: str, at: datetime) -> str:
    """The deterministic id of one membership change (what the warehouse computes too)."""
    moment = at.astimezone(timezone.utc) if at.tzinfo else at
    stamp = moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    return hashlib.sha256(f"{audience}|{version}|{oneid}|{change}|{stamp}".encode()).hexdigest()


def sign(secret: bytes, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of the request body under the destination's secret."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str, timestamp: str | None = None, tolerance_s: float = 300.0,
           now: float | None = None) -> bool:
    """What a receiver does with ``X-Lastmile-Signature`` (constant-time comparison) and, when
    given, ``X-Lastmile-Timestamp``: a request older than ``tolerance_s`` is refused, so a
    captured request cannot be replayed later (the timestamp is in the signed body as ``sent_at``)."""
    if not hmac.compare_digest(sign(secret, body), header or ""):
        return False
    if timestamp is None:
        return True
    try:
        sent_at = int(timestamp)
        signed_at = json.loads(body).get("sent_at")
    except (ValueError, AttributeError):
        return False
    return signed_at == sent_at and abs((time.time() if now is None else now) - sent_at) <= tolerance_s


# --- configuration -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Retry:
    """How often and how patiently a batch is retried: ``base * 2**n`` plus up to as much jitter."""

    max_attempts: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Pause after failed attempt number ``attempt`` (1-based): exponential, with full jitter
        on top so destinations that failed together do not retry together."""
        base = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        return base + (rng or random).uniform(0, base)


class Sender(Protocol):
    def __call__(self, events: Sequence[Mapping[str, Any]]) -> None: ...


@dataclass
class Destination:
    """One configured destination: where events go, which audiences, how patiently."""

    name: str
    kind: str
    audiences: tuple[str, ...] | None  # None: every audience
    retry: Retry = field(default_factory=Retry)
    batch_size: int = 100
    timeout_s: float = 10.0
    url: str = ""
    secret_env: str = ""
    topic: str = CHANGES_TOPIC
    bootstrap: str = ""

    def secret(self) -> bytes:
        value = os.environ.get(self.secret_env, "")
        if not value:
            raise DestinationError(f"destination {self.name}: the environment variable {self.secret_env} (its signing secret) is not set")
        return value.encode()

    def sender(self) -> Sender:
        """A function that delivers one batch or raises (the retry loop is around it)."""
        if self.kind == "webhook":
            return _webhook_sender(self)
        return _kafka_sender(self)


_KINDS = {"webhook", "kafka"}
_KEYS = {"name", "kind", "audiences", "url", "secret_env", "topic", "batch_size", "timeout_s", "max_attempts",
         "backoff_base_ms", "backoff_max_s"}


def load_destinations(path: Path, bootstrap: str = "") -> list[Destination]:
    """The destinations of a file (none when the file does not exist); errors name the entry."""
    if not path.is_file():
        return []
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise DestinationError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    entries = document.get("destinations") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise DestinationError(f"{path}: expected a mapping with a list 'destinations'")
    found: list[Destination] = []
    for n, entry in enumerate(entries, 1):
        where = f"{path}: destination {n}"
        if not isinstance(entry, dict):
            raise DestinationError(f"{where}: expected a mapping (name, kind, ...)")
        if "secret" in entry:
            raise DestinationError(f"{where}: a secret never sits in the file; name the environment variable holding it with secret_env")
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            raise DestinationError(f"{where}: unknown key {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})")
        name, kind = entry.get("name"), entry.get("kind")
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise DestinationError(f"{where}: 'name' must be letters, digits, '_' or '-'")
        where = f"{path}: destination {name}"
        if kind not in _KINDS:
            raise DestinationError(f"{where}: 'kind' must be one of {', '.join(sorted(_KINDS))}")
        if any(d.name == name for d in found):
            raise DestinationError(f"{where}: the name is used twice")
        audiences = entry.get("audiences", "all")
        if audiences != "all" and not (isinstance(audiences, list) and audiences and all(isinstance(a, str) for a in audiences)):
            raise DestinationError(f"{where}: 'audiences' must be 'all' or a list of audience names")
        try:
            retry = Retry(int(entry.get("max_attempts", 5)), float(entry.get("backoff_base_ms", 500)) / 1000,
                          float(entry.get("backoff_max_s", 30)))
            # a Kafka batch is one producer session: larger batches, fewer connections
            batch_size = int(entry.get("batch_size", 5000 if kind == "kafka" else 100))
            timeout_s = float(entry.get("timeout_s", 10))
        except (TypeError, ValueError):
            raise DestinationError(f"{where}: max_attempts, batch_size, backoff_base_ms, backoff_max_s and timeout_s are numbers") from None
        if retry.max_attempts < 1 or batch_size < 1 or timeout_s <= 0:
            raise DestinationError(f"{where}: max_attempts and batch_size are at least 1, timeout_s above 0")
        destination = Destination(name, kind, None if audiences == "all" else tuple(audiences), retry, batch_size, timeout_s,
                                  url=str(entry.get("url", "")), secret_env=str(entry.get("secret_env", "")),
                                  topic=str(entry.get("topic", CHANGES_TOPIC)), bootstrap=bootstrap)
        if kind == "webhook" and not destination.url.startswith(("http://", "https://")):
            raise DestinationError(f"{where}: a webhook needs an http(s) 'url'")
        if kind == "webhook" and not destination.secret_env:
            raise DestinationError(f"{where}: a webhook needs 'secret_env', the environment variable holding its signing secret")
        found.append(destination)
    return found


# --- senders -----------------------------------------------------------------------------------

def _webhook_sender(destination: Destination) -> Sender:
    secret = destination.secret()

    def send(events: Sequence[Mapping[str, Any]]) -> None:
        sent_at = int(time.time())
        body = json.dumps({"destination": destination.name, "sent_at": sent_at, "events": list(events)},
                          ensure_ascii=False, separators=(",", ":")).encode()
        request = urllib.request.Request(destination.url, data=body, method="POST", headers={
            "Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body), TIMESTAMP_HEADER: str(sent_at)})
        try:
            with urllib.request.urlopen(request, timeout=destination.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise ConnectionError(f"HTTP {exc.code} from {destination.url}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectionError(f"{destination.url}: {getattr(exc, 'reason', exc)}") from None

    return send


def _kafka_sender(destination: Destination) -> Sender:
    topic_checked: list[bool] = []

    async def produce(events: Sequence[Mapping[str, Any]]) -> None:
        from aiokafka import AIOKafkaProducer

        if not topic_checked:  # once per run: a missing topic is created, an existing one left as it is
            await ensure_topic(destination.bootstrap, destination.topic, timeout_s=destination.timeout_s)
            topic_checked.append(True)
        producer = AIOKafkaProducer(bootstrap_servers=destination.bootstrap, acks="all",
                                    request_timeout_ms=int(destination.timeout_s * 1000))
        await asyncio.wait_for(producer.start(), destination.timeout_s)
        try:
            sent = [await producer.send(destination.topic, key=e["oneid"].encode(),
                                        value=json.dumps(e, ensure_ascii=False).encode(),
                                        headers=[("event_id", e["event_id"].encode())]) for e in events]
            await asyncio.wait_for(asyncio.gather(*sent), destination.timeout_s)
        finally:
            await producer.stop()

    def send(events: Sequence[Mapping[str, Any]]) -> None:
        try:
            asyncio.run(produce(events))
        except Exception as exc:  # any broker failure is one failed attempt
            raise ConnectionError(f"kafka {destination.bootstrap} topic {destination.topic}: {type(exc).__name__}: {exc}") from None

    return send


async def ensure_topic(bootstrap: str, topic: str = CHANGES_TOPIC, partitions: int = 4, timeout_s: float = 15.0) -> bool:
    """Create the changes topic if it is missing (a managed cluster usually has it already)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        if topic in set(await admin.list_topics()):
            return False
        await admin.create_topics([NewTopic(topic, partitions, 1)], timeout_ms=int(timeout_s * 1000))
        return True
    finally:
        await admin.close()


# --- delivery ----------------------------------------------------------------------------------

@dataclass
class DeliveryReport:
    """What one destination received in one run."""

    destination: str
    delivered: int = 0
    dead_lettered: int = 0
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"destination": self.destination, "delivered": self.delivered, "dead_lettered": self.dead_lettered,
                "attempts": self.attempts, "seconds": round(self.seconds, 3), "last_error": self.errors[-1] if self.errors else None}


def ensure_tables(warehouse: Warehouse) -> None:
    ensure_membership_tables(warehouse)
    for statement in TABLES_SQL:
        warehouse.command(statement)


def _event(row: Sequence[Any]) -> dict[str, Any]:
    eid, audience, version, oneid, change, at, reason = row
    moment = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    return {"event_id": eid, "audience": audience, "version": version, "oneid": oneid, "change": change,
            "at": moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"), "reason": reason,
            "_at": at}  # the warehouse's value, for paging (removed before sending)


def _parameters(destination: Destination) -> dict[str, Any]:
    return {"d": destination.name, "audiences": list(destination.audiences or ()), "all": int(destination.audiences is None)}


#: What each source selects beyond the destination's audiences.
_SOURCES = {
    # neither received nor dead-lettered: what a publish after a refresh sends
    "pending": """event_id NOT IN (SELECT event_id FROM audience_deliveries WHERE destination = {d:String})
  AND event_id NOT IN (SELECT event_id FROM audience_dead_letters WHERE destination = {d:String})""",
    # refused once and not received since
    "dead_letters": """event_id IN (SELECT event_id FROM audience_dead_letters WHERE destination = {d:String})
  AND event_id NOT IN (SELECT event_id FROM audience_deliveries WHERE destination = {d:String})""",
    # everything from a moment on, received or not
    "history": "at >= {since:DateTime64(3, 'UTC')}",
}
#: Changes read from the warehouse at a time per destination (bounded memory for big audiences).
PAGE_SIZE = 20_000


def read_page(warehouse: Warehouse, destination: Destination, source: str = "pending", since: datetime | None = None,
              after: tuple[Any, ...] | None = None, limit: int = PAGE_SIZE) -> list[dict[str, Any]]:
    """Up to ``limit`` changes of ``source`` for the destination, oldest first, after the key
    ``after`` = ``(at, audience, oneid, change)`` of the last one already read."""
    if source not in _SOURCES:
        raise ValueError(f"unknown source {source!r} (one of {', '.join(_SOURCES)})")
    parameters = _parameters(destination)
    parameters["since"] = (since or datetime(1970, 1, 1, tzinfo=timezone.utc)).astimezone(timezone.utc).replace(tzinfo=None)
    keyset = ""
    if after is not None:
        parameters.update(k_at=after[0], k_audience=after[1], k_oneid=after[2], k_change=after[3])
        keyset = ("AND (at, audience, oneid, change) > ({k_at:DateTime64(3, 'UTC')}, {k_audience:String}, "
                  "{k_oneid:String}, {k_change:String})")
    sql = f"""SELECT * FROM ({_CHANGES})
WHERE {_SOURCES[source]} {keyset}
ORDER BY at, audience, oneid, change LIMIT {int(limit)}"""
    return [_event(r) for r in warehouse.rows(sql, parameters)]


def _key(event: Mapping[str, Any]) -> tuple[Any, ...]:
    return (event["_at"], event["audience"], event["oneid"], event["change"])


def pending(warehouse: Warehouse, destination: Destination) -> list[dict[str, Any]]:
    """Changes of the destination's audiences it has neither received nor dead-lettered, oldest first."""
    return list(_all(warehouse, destination, "pending", None, threading.Lock()))


def dead_letters(warehouse: Warehouse, destination: Destination) -> list[dict[str, Any]]:
    """Dead-lettered events of the destination not delivered since, oldest first."""
    return list(_all(warehouse, destination, "dead_letters", None, threading.Lock()))


def history(warehouse: Warehouse, destination: Destination, since: datetime | None = None) -> list[dict[str, Any]]:
    """Every change of the destination's audiences (from ``since``), delivered or not: a full replay."""
    return list(_all(warehouse, destination, "history", since, threading.Lock()))


def _all(warehouse: Warehouse, destination: Destination, source: str, since: datetime | None, lock: threading.Lock,
         page_size: int | None = None) -> Iterator[dict[str, Any]]:
    """Every change of ``source`` page by page (keyset paging; each read holds ``lock``, the
    warehouse being shared with the thread that records outcomes)."""
    page_size = page_size or PAGE_SIZE
    after = None
    while True:
        with lock:
            page = read_page(warehouse, destination, source, since, after, page_size)
        for event in page:
            after = _key(event)
            event.pop("_at")
            yield event
        if len(page) < page_size:
            return


@dataclass
class _Outcome:
    destination: str
    events: list[dict[str, Any]]
    ok: bool
    attempts: int
    error: str = ""
    done: bool = False  # the destination's thread has finished
    crash: BaseException | None = None  # reading the changes failed: the run stops with it


def _batches(events: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for event in events:
        batch.append(event)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _deliver_one(destination: Destination, events: Iterator[dict[str, Any]], out: "queue.Queue[_Outcome]",
                 sleep: Callable[[float], None], rng: random.Random) -> None:
    """Send a destination's events batch by batch with retries; report each batch's fate."""
    try:
        try:
            send: Sender | None = destination.sender()
            unusable = ""
        except Exception as exc:  # a missing secret: every event waits in the dead letters, with the reason
            send, unusable = None, str(exc)
        down = unusable
        for batch in _batches(events, destination.batch_size):
            if send is None or down:
                out.put(_Outcome(destination.name, batch, False, 0, unusable or f"not attempted: destination down ({down})"))
                continue
            attempt, error = 0, ""
            while attempt < destination.retry.max_attempts:
                attempt += 1
                try:
                    send(batch)
                    error = ""
                    break
                except Exception as exc:
                    error = str(exc) or type(exc).__name__
                    if attempt < destination.retry.max_attempts:
                        sleep(destination.retry.delay(attempt, rng))
            out.put(_Outcome(destination.name, batch, not error, attempt, error))
            down = error
    except BaseException as exc:  # the warehouse failed under the reads: hand it to the caller
        out.put(_Outcome(destination.name, [], False, 0, crash=exc))
    out.put(_Outcome(destination.name, [], True, 0, done=True))


def deliver(warehouse: Warehouse, destinations: Sequence[Destination], source: str = "pending",
            since: datetime | None = None, now: Callable[[], datetime] | None = None,
            sleep: Callable[[float], None] = time.sleep, seed: int | None = None) -> list[DeliveryReport]:
    """Deliver to each destination independently (a thread each) and record every batch's fate.

    ``source``: ``pending`` (what the destination has not received: after a refresh),
    ``dead_letters`` (a replay of what it refused) or ``history`` (every change from ``since``,
    delivered or not: consumers deduplicate by id). Deliveries and dead letters are written by
    this thread as each batch finishes, so a destination that is slow to answer delays only
    its own records.
    """
    ensure_tables(warehouse)
    if source not in _SOURCES:
        raise ValueError(f"unknown source {source!r} (one of {', '.join(_SOURCES)})")
    clock = now or (lambda: datetime.now(timezone.utc))
    lock = threading.Lock()
    reports = {d.name: DeliveryReport(d.name) for d in destinations}
    started = time.monotonic()
    out: queue.Queue[_Outcome] = queue.Queue()
    rng = random.Random(seed)
    threads = [threading.Thread(target=_deliver_one, args=(d, _all(warehouse, d, source, since, lock), out, sleep,
                                                           random.Random(rng.random())),
                                name=f"audience-destination-{d.name}", daemon=True) for d in destinations]
    for thread in threads:
        thread.start()
    running = len(threads)
    while running:
        outcome = out.get()
        report = reports[outcome.destination]
        if outcome.done:
            running -= 1
            report.seconds = time.monotonic() - started
            continue
        if outcome.crash is not None:
            raise outcome.crash
        report.attempts += outcome.attempts
        at = clock().astimezone(timezone.utc).replace(tzinfo=None)
        with lock:
            _record(warehouse, outcome, report, at)
    for thread in threads:
        thread.join()
    return [reports[d.name] for d in destinations]


def _record(warehouse: Warehouse, outcome: _Outcome, report: DeliveryReport, at: datetime) -> None:
    """Write one batch's fate: into the outbox when delivered, else into the dead letters."""
    if outcome.ok:
        warehouse.insert_rows("audience_deliveries",
                              [(outcome.destination, e["event_id"], e["audience"], e["oneid"], e["change"], at) for e in outcome.events],
                              ["destination", "event_id", "audience", "oneid", "change", "delivered_at"])
        report.delivered += len(outcome.events)
    else:
        warehouse.insert_rows("audience_dead_letters",
                              [(outcome.destination, e["event_id"], e["audience"], e["oneid"], e["change"], outcome.attempts,
                                outcome.error[:1000], at) for e in outcome.events],
                              ["destination", "event_id", "audience", "oneid", "change", "attempts", "error", "failed_at"])
        report.dead_lettered += len(outcome.events)
        report.errors.append(outcome.error)


def select(destinations: Sequence[Destination], names: Sequence[str] | None) -> list[Destination]:
    """The named destinations (all when ``names`` is empty); an unknown name is an error."""
    if not names:
        return list(destinations)
    known = {d.name: d for d in destinations}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DestinationError(f"no destination named {', '.join(unknown)} (have: {', '.join(known) or 'none'})")
    return [known[n] for n in names]

