"""Fuzz: mutated events through the batch ingest and the stream; every one is written or quarantined.

A small community is simulated, and its events (valid lines and the simulator's own
malformed ones) are the seed of ``--events`` mutants, each with an event id of its own so
that nothing collapses by accident. A mutant is its seed event changed the ways producers
break things: truncated, a value of another type, a key twice, a huge or deeply nested
value, bytes that are not UTF-8, odd times (year 0001, leap seconds, no offset, far
future), integral floats, junk identifiers, a byte-order mark, blanks and line breaks,
missing and unknown fields; some get a second change on top.

1. **Batch.** The mutants are written as NDJSON files (a line break inside a mutant becomes
   a blank: one line, one event) and ingested by ``lastmile ingest --json`` in a subprocess,
   as a user runs it. The same number of unmutated seed events (fresh ids) is ingested into
   another data directory first: the reference for the timing.
2. **Stream.** The development broker (tansu) starts, the mutants are published (unkeyed,
   round robin over the partitions) and ``lastmile stream`` drains them as a subprocess.
   The worker must still be running when its status says it has read every record.

For each path: ``read`` (the pipeline's count) must equal ``published``; ``lost`` = events
sent - raw rows written - quarantine records (both counted in the warehouse, FINAL);
``crashes`` counts a non-zero exit, a worker that stopped by itself, and every
``Traceback`` in the output. The last line is one JSON object: ``events`` (sent through
both paths), ``written``, ``quarantined``, ``lost``, ``crashes``, then the figures per path.
Usage: ``python bench/fuzz.py [--events 100000] [--seed 3] [--no-stream]``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

Event = dict[str, Any]

ODD_TIMES = [
    "0001-01-01T00:00:00+00:00", "1900-01-01T00:00:00Z", "1969-12-31T23:59:59.999Z", "1999-12-31T23:59:59+08:00",
    "2016-12-31T23:59:60Z", "2026-06-30t12:00:00z", "2026-11-20T16:05:00", "2026-11-20T16:05:00+24:00",
    "2026-02-30T10:00:00+08:00", "2026-11-20 16:05:00+08:00", "9999-12-31T23:59:59-12:00", "2299-12-31T23:59:59Z",
    "2026-11-20T16:05:00.123456789+08:00", "2026-11-20T16:05:00-23:59", "", "now", "1700000000",
]
JUNK_IDENTIFIERS: list[Any] = ["null", "undefined", 13800000000, "", None, "0", "(null)", "13800000000", "x" * 300, -1]
OTHER_VALUES: list[Any] = [None, True, 0, -1, 2.5, 1e300, "", "文字", [], {}, [1, "a"], {"a": {"b": []}}, 10**30]
BAD_BYTES = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\x1f", b"\xe2\x82", b"\x80\x80\x80"]


def _other(rng: random.Random) -> Any:
    """A value of some type, never shared between events (a shared list could end up inside itself)."""
    return copy.deepcopy(rng.choice(OTHER_VALUES))


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside an event (keys and list indexes)."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, prefix + (key,))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _paths(inner, prefix + (index,))
    return found


def _set(event: Event, path: tuple, value: Any) -> None:
    holder: Any = event
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = value


def _delete(event: Event, path: tuple) -> None:
    holder: Any = event
    for step in path[:-1]:
        holder = holder[step]
    del holder[path[-1]]


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


def _dumps(event: Any, rng: random.Random) -> bytes:
    style = rng.random()
    if style < 0.8:
        return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    if style < 0.9:
        return json.dumps(event, ensure_ascii=True, indent=rng.choice([None, 1]), separators=(" , ", " :  ")).encode()
    return b"\xef\xbb\xbf" + json.dumps(event, ensure_ascii=False).encode("utf-8", "surrogatepass")


# -- mutations: each takes a decoded event (changed in place) and returns its payload bytes ---

def truncated(rng: random.Random, event: Event) -> bytes:
    raw = _dumps(event, rng)
    return raw[: rng.randint(1, max(1, len(raw) - 1))]


def type_changed(rng: random.Random, event: Event) -> bytes:
    paths = _paths(event)
    for path in rng.sample(paths, min(len(paths), rng.randint(1, 2))):
        try:
            _set(event, path, _other(rng))
        except (KeyError, IndexError, TypeError):
            pass
    return _dumps(event, rng)


def duplicate_key(rng: random.Random, event: Event) -> bytes:
    key = rng.choice(list(event) or ["event_id"])
    raw = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    twin = json.dumps({key: rng.choice([event.get(key), _other(rng)])})[1:-1].encode()
    return raw[:-1] + b"," + twin + b"}" if rng.random() < 0.5 else b"{" + twin + b"," + raw[1:]


def huge_value(rng: random.Random, event: Event) -> bytes:
    strings = [p for p in _paths(event) if isinstance(_get(event, p), str)]
    size = rng.choice([300, 5_000, 60_000, 70_000, 200_000])
    _set(event, rng.choice(strings) if strings else ("note",), rng.choice("x好🥬" if size < 100_000 else "x好") * size)
    return _dumps(event, rng)


def deep_value(rng: random.Random, event: Event) -> bytes:
    depth = rng.choice([10, 200, 1_000, 1_100, 5_000])
    opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
    key = rng.choice(list(event) or ["event_id"])
    event[key] = "__DEEP__"
    raw = _dumps(event, rng)
    return raw.replace(b'"__DEEP__"', opener * depth + b"1" + closer * depth, 1)


def bad_bytes(rng: random.Random, event: Event) -> bytes:
    raw = bytearray(_dumps(event, rng))
    for _ in range(rng.randint(1, 3)):
        at = rng.randint(0, len(raw))
        raw[at:at] = rng.choice(BAD_BYTES)
    return bytes(raw)


def odd_time(rng: random.Random, event: Event) -> bytes:
    field = rng.choice(["occurred_at"] + [k for k in ("delivery_slot_start", "delivery_slot_end") if k in event])
    event[field] = rng.choice(ODD_TIMES)
    return _dumps(event, rng)


def spread_months(rng: random.Random, event: Event) -> bytes:
    """Valid, but every event in another month: one block spans far more than 100 partitions."""
    event["occurred_at"] = f"{rng.randint(2000, 2025)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00+08:00"
    return _dumps(event, rng)


def integral_floats(rng: random.Random, event: Event) -> bytes:
    return _dumps(_floats(event), rng)


def junk_identifier(rng: random.Random, event: Event) -> bytes:
    for name in ("buyer", "collector", "claimant", "reviewer", "identifiers"):
        if isinstance(event.get(name), dict) and event[name]:
            key = rng.choice(list(event[name]) + ["phone"])
            event[name][key] = rng.choice(JUNK_IDENTIFIERS)
    return _dumps(event, rng)


def fields_changed(rng: random.Random, event: Event) -> bytes:
    choice = rng.random()
    if choice < 0.4 and event:
        _delete(event, rng.choice(_paths(event)))
    elif choice < 0.7:
        event[rng.choice(["coupon", "_source", "extra", "Event_Type"])] = _other(rng)
    elif choice < 0.85:
        event["event_type"] = rng.choice(["coupon", "ORDER", "", 7, None])
    else:
        return _dumps(rng.choice([[event], "order", 42, None, []]), rng)
    return _dumps(event, rng)


def odd_numbers(rng: random.Random, event: Event) -> bytes:
    numbers = [p for p in _paths(event) if isinstance(_get(event, p), (int, float)) and not isinstance(_get(event, p), bool)]
    literal = rng.choice([b"1e400", b"-0.0", b"1e-7", b"NaN", b"Infinity", b"123456789012345678901234567890", b"1E2", b"0.1234567"])
    if numbers:
        _set(event, rng.choice(numbers), "__NUMBER__")
    raw = _dumps(event, rng)
    return raw.replace(b'"__NUMBER__"', literal, 1)


def odd_text(rng: random.Random, event: Event) -> bytes:
    strings = [p for p in _paths(event) if isinstance(_get(event, p), str)]
    if strings:
        _set(event, rng.choice(strings), rng.choice(["\u0000", "🥬" * 20, "\ud800", "'; DROP TABLE raw_order; --", "\\", "\n\t"]))
    raw = json.dumps(event, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    return raw


def _get(event: Event, path: tuple) -> Any:
    value: Any = event
    for step in path:
        value = value[step]
    return value


MUTATIONS: dict[str, tuple[float, Callable[[random.Random, Event], bytes]]] = {
    "truncated": (1.0, truncated), "type_changed": (1.5, type_changed), "duplicate_key": (1.0, duplicate_key),
    "huge_value": (0.4, huge_value), "deep_value": (0.4, deep_value), "bad_bytes": (1.0, bad_bytes),
    "odd_time": (1.2, odd_time), "spread_months": (1.0, spread_months), "integral_floats": (1.0, integral_floats),
    "junk_identifier": (1.0, junk_identifier), "fields_changed": (1.2, fields_changed), "odd_numbers": (0.8, odd_numbers),
    "odd_text": (0.8, odd_text),
}
#: Mutations that change the decoded event (and so can come before another one).
_STRUCTURAL = ("type_changed", "odd_time", "junk_identifier", "spread_months")


def seed_events(events_dir: Path) -> list[tuple[str, bytes]]:
    """(event type, line) of every non-blank line the simulator wrote."""
    seeds = []
    for path in sorted(events_dir.glob("*.jsonl")):
        seeds += [(path.stem, line) for line in path.read_bytes().split(b"\n") if line.strip()]
    return seeds


def mutants(seeds: list[tuple[str, bytes]], count: int, seed: int) -> tuple[list[tuple[str, bytes]], Counter]:
    """``count`` mutated events (event type of the seed, payload) and how many of each mutation."""
    rng = random.Random(seed)
    names = list(MUTATIONS)
    weights = [MUTATIONS[n][0] for n in names]
    used: Counter = Counter()
    out = []
    for number in range(count):
        event_type, line = seeds[rng.randrange(len(seeds))]
        try:
            event = json.loads(line)
        except ValueError:
            out.append((event_type, line + rng.choice([b"", b"}", b"\xff"])))
            used["seed_malformed"] += 1
            continue
        if not isinstance(event, dict):
            event = {"event_type": event_type, "value": event}
        event["event_id"] = f"fz-{seed}-{number:08d}"
        name = rng.choices(names, weights)[0]
        if name not in _STRUCTURAL and rng.random() < 0.2:  # a second change first
            second = rng.choice(_STRUCTURAL)
            MUTATIONS[second][1](rng, event)
            used[second] += 1
        payload = MUTATIONS[name][1](rng, event)
        used[name] += 1
        if not payload.strip():
            payload = b"{"  # a blank line is no event in NDJSON; keep every mutant one
        out.append((event_type, payload))
    return out, used


def clean_copies(seeds: list[tuple[str, bytes]], count: int) -> list[tuple[str, bytes]]:
    """``count`` valid seed events with fresh ids: the reference workload for the timing."""
    valid = []
    for event_type, line in seeds:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "event_id" in event:
            valid.append((event_type, event))
    out = []
    for number in range(count):
        event_type, event = valid[number % len(valid)]
        out.append((event_type, json.dumps({**event, "event_id": f"ref-{number:08d}"}, ensure_ascii=False).encode()))
    return out


def write_files(events_dir: Path, events: list[tuple[str, bytes]]) -> int:
    """One NDJSON file per seed event type; returns the lines written (line breaks become blanks)."""
    events_dir.mkdir(parents=True, exist_ok=True)
    by_type: dict[str, list[bytes]] = {}
    for event_type, payload in events:
        by_type.setdefault(event_type, []).append(payload.replace(b"\r", b" ").replace(b"\n", b" "))
    for event_type, lines in by_type.items():
        (events_dir / f"{event_type}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return sum(len(lines) for lines in by_type.values())


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LASTMILE_")}
    return {**env, "LASTMILE_HOME": str(home), "LASTMILE_HASH_KEY": "bench-key", "DO_NOT_TRACK": "1", **extra}


def _tracebacks(text: str) -> int:
    return text.count("Traceback (most recent call last)")


def warehouse_counts(home: Path) -> tuple[int, int, Counter]:
    """Raw rows and quarantine records in ``home``'s warehouse (FINAL), and quarantine reasons (own process)."""
    code = ("import json; from lastmile.config import settings; from lastmile.warehouse import connect; w = connect(settings()); "
            "raw = sum(w.count(t) for t in w.tables() if t.startswith('raw_')); "
            "reasons = dict(w.rows('SELECT reason, count() FROM quarantine FINAL GROUP BY reason')); "
            "print(json.dumps([raw, w.count('quarantine'), reasons]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(home), capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"counting the warehouse of {home} failed: {out.stderr[-2000:]}")
    raw, quarantined, reasons = json.loads(out.stdout.strip().splitlines()[-1])
    return raw, quarantined, Counter(reasons)


def batch_ingest(home: Path, events: list[tuple[str, bytes]]) -> dict[str, Any]:
    """``lastmile ingest --json`` over the events as files; the counters, the warehouse's counts and crashes."""
    lines = write_files(home / "events", events)
    size = sum(p.stat().st_size for p in (home / "events").glob("*.jsonl"))
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "lastmile.cli", "ingest", "--json"], cwd=ROOT, env=_env(home),
                         capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - started
    crashes = (out.returncode != 0) + _tracebacks(out.stdout + out.stderr)
    try:
        report = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        report = {"read": 0, "valid": 0, "quarantined": 0, "written": 0}
        crashes = max(crashes, 1)
    if out.returncode != 0:
        print(f"ingest exited with {out.returncode}: {out.stderr[-1500:]}")
    raw, quarantined, reasons = warehouse_counts(home)
    return {"events": lines, "read": report["read"], "written": raw, "quarantined": quarantined,
            "lost": lines - raw - quarantined, "crashes": crashes, "seconds": seconds, "reasons": reasons,
            "report": report, "megabytes": size / 1e6}


def _status(home: Path) -> dict[str, Any]:
    try:
        return json.loads((home / "stream" / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def stream_ingest(work: Path, events: list[tuple[str, bytes]], timeout_s: float) -> dict[str, Any]:
    """Publish the events to the development broker and let ``lastmile stream`` drain them."""
    from lastmile.streaming.broker import dev_broker
    from lastmile.streaming.produce import Outgoing, ensure_topics, publish
    from lastmile.streaming.topics import topic_for

    home = work / "stream-home"
    home.mkdir(parents=True)
    outgoing = [Outgoing(topic_for(event_type), None, payload, None, "") for event_type, payload in events]
    crashes, stopped_by_itself = 0, False
    with dev_broker(log_path=work / "broker.log") as broker:
        asyncio.run(ensure_topics(broker.bootstrap))
        produced = asyncio.run(publish(broker.bootstrap, outgoing))
        print(f"stream:   published {produced.published:,} mutants in {produced.seconds:.1f} s")
        log = home / "worker.log"
        worker = subprocess.Popen([sys.executable, "-m", "lastmile.cli", "stream", "--group", "fuzz"], cwd=ROOT,
                                  env=_env(home, LASTMILE_KAFKA_BOOTSTRAP=broker.bootstrap),
                                  stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        started = time.monotonic()
        try:
            while time.monotonic() - started < timeout_s:
                if _status(home).get("read", 0) >= produced.published:
                    break
                if worker.poll() is not None:
                    stopped_by_itself = True
                    break
                time.sleep(0.5)
            time.sleep(2.0)  # still alive a moment after the last batch (handlers, OneID refresh)
            if worker.poll() is not None:
                stopped_by_itself = True
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(60)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
    status = _status(home)
    text = log.read_text(errors="replace")
    crashes = int(stopped_by_itself) + _tracebacks(text)
    if stopped_by_itself:
        print(f"stream:   the worker stopped by itself (exit {worker.returncode}): {text[-1500:]}")
    raw, quarantined, reasons = warehouse_counts(home)
    return {"events": produced.published, "read": status.get("read", 0), "written": raw, "quarantined": quarantined,
            "lost": produced.published - raw - quarantined, "crashes": crashes, "seconds": time.monotonic() - started,
            "reasons": reasons, "status": {k: status.get(k) for k in ("read", "valid", "quarantined", "batches")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="mutated events per path")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--no-stream", action="store_true", help="batch ingest only")
    parser.add_argument("--stream-timeout", type=float, default=1200.0, help="seconds the worker may take to drain")
    args = parser.parse_args()

    from lastmile.simulator import SimulationConfig, simulate

    work = Path(tempfile.mkdtemp(prefix="lastmile-bench-fuzz-"))
    simulate(SimulationConfig(seed=args.seed, orders=2_000, weeks=2, telemetry_every_s=3600), work / "sim")
    seeds = seed_events(work / "sim" / "events")
    events, used = mutants(seeds, args.events, args.seed)
    print(f"seeds:    {len(seeds):,} simulated lines; {len(events):,} mutants: "
          + ", ".join(f"{name} {n:,}" for name, n in used.most_common()))

    reference = batch_ingest(work / "reference-home", clean_copies(seeds, args.events))
    batch = batch_ingest(work / "batch-home", events)
    print(f"batch:    reference (unmutated) {reference['events']:,} events ({reference['megabytes']:,.0f} MB) in "
          f"{reference['seconds']:.1f} s = {reference['events'] / reference['seconds']:,.0f}/s")
    print(f"batch:    {batch['events']:,} mutants ({batch['megabytes']:,.0f} MB: huge values) in {batch['seconds']:.1f} s "
          f"= {batch['events'] / batch['seconds']:,.0f}/s "
          f"({batch['seconds'] / reference['seconds']:.2f} x the reference's time); read {batch['read']:,} = "
          f"written {batch['written']:,} + quarantined {batch['quarantined']:,}; lost {batch['lost']}, crashes {batch['crashes']}")
    print("batch:    quarantined by reason: " + ", ".join(f"{r} {n:,}" for r, n in batch["reasons"].most_common()))
    paths = {"batch": batch}
    if not args.no_stream:
        stream = stream_ingest(work, events, args.stream_timeout)
        print(f"stream:   read {stream['read']:,} of {stream['events']:,} = written {stream['written']:,} + quarantined "
              f"{stream['quarantined']:,}; lost {stream['lost']}, crashes {stream['crashes']} (worker status {stream['status']})")
        print("stream:   quarantined by reason: " + ", ".join(f"{r} {n:,}" for r, n in stream["reasons"].most_common()))
        paths["stream"] = stream
    failed = False
    for name, figures in paths.items():
        if figures["read"] != figures["written"] + figures["quarantined"] or figures["read"] != figures["events"]:
            failed = True
            print(f"{name}:    NOT EXACT: sent {figures['events']:,}, read {figures['read']:,}, "
                  f"written {figures['written']:,} + quarantined {figures['quarantined']:,}")
        failed |= bool(figures["lost"] or figures["crashes"])
    total = {key: sum(p[key] for p in paths.values()) for key in ("events", "written", "quarantined", "lost", "crashes")}
    print(json.dumps({**total, **{name: {k: p[k] for k in ("events", "read", "written", "quarantined", "lost", "crashes")}
                                  for name, p in paths.items()},
                      "reference_events_per_s": round(reference["events"] / reference["seconds"]),
                      "batch_time_ratio_to_reference": round(batch["seconds"] / reference["seconds"], 2)}))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
