"""Writing files: event files with bad data injected on the fly, plain JSONL for truth/reference.

:class:`EventFileWriter` streams: it takes blocks of valid lines in time order and writes
them, interleaving the injected lines its plan asks for, so the telemetry file (millions of
lines) never has to sit in memory. It records every injected line in ground truth.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .clock import iso_ms
from .config import SimulationConfig
from .inject import EXPECTED_REASON, ID_PREFIX, Plan, make_plan, malform


class EventFileWriter:
    """Writes one ``events/<type>.jsonl`` from valid lines fed in order, injecting bad data."""

    def __init__(self, path: Path, event_type: str, n_source: int, cfg: SimulationConfig) -> None:
        self.path = path
        self.event_type = event_type
        self.rel = f"events/{path.name}"
        self.plan: Plan = make_plan(n_source, cfg, cfg.rng(f"inject:{event_type}"))
        self.rnd = random.Random(cfg.seed * 1_000_003 + len(event_type) * 7919 + sum(map(ord, event_type)))
        self.fh = path.open("wb")
        self.src = 0  # index of the next source line
        self.lines = 0  # lines written so far
        self.captured: dict[int, tuple[bytes, int | None]] = {}
        self.truth: list[dict[str, Any]] = []
        self.counts = {"malformed": 0, "duplicate": 0, "late": 0}
        self._bad = 0

    def feed(self, block: list[bytes]) -> None:
        plan = self.plan
        a, b = self.src, self.src + len(block)
        out: list[bytes] = []
        cursor = a
        lo, hi = np.searchsorted(plan.special, [a, b])
        for i in plan.special[lo:hi].tolist():
            if i > cursor:
                out.extend(block[cursor - a:i - a])
                self.lines += i - cursor
            line = block[i - a]
            if i in plan.late:
                self.captured[i] = (line, None)
            else:
                out.append(line)
                self.lines += 1
                if i in plan.capture:
                    self.captured[i] = (line, self.lines)
            for kind, src, detail in plan.actions.get(i, ()):
                self._act(out, kind, src, detail, i)
            cursor = i + 1
        if cursor < b:
            out.extend(block[cursor - a:])
            self.lines += b - cursor
        self.src = b
        if out:
            self.fh.write(b"\n".join(out) + b"\n")

    def _act(self, out: list[bytes], kind: str, src: int, detail: str, position: int) -> None:
        line, original_line = self.captured[src]
        row: dict[str, Any] = {"file": self.rel, "kind": kind}
        if kind == "malformed":
            self._bad += 1
            new_id = f"ev-{ID_PREFIX[self.event_type]}-bad-{self._bad:06d}"
            bad = malform(line, self.event_type, detail, new_id, self.rnd)
            out.append(bad)
            self.lines += 1
            row.update(line=self.lines, event_id=new_id, detail=detail, expected_reason=EXPECTED_REASON[detail],
                       source_line=original_line)
        else:
            out.append(line)
            self.lines += 1
            event_id = orjson.loads(line)["event_id"]
            row.update(line=self.lines, event_id=event_id)
            if kind == "duplicate":
                row["original_line"] = original_line
            else:
                row["moved_by_lines"] = position - src
        del self.captured[src]
        self.counts[kind] += 1
        self.truth.append(row)

    def close(self) -> None:
        if self.src != self.plan.n_source:
            raise AssertionError(f"{self.rel}: fed {self.src} lines, planned for {self.plan.n_source}")
        self.fh.close()


def write_events(path: Path, event_type: str, events: list[tuple[int, dict[str, Any]]], cfg: SimulationConfig,
                 block: int = 50_000) -> EventFileWriter:
    """Sort events by time, give them ids and timestamps, and write them with injection."""
    order = sorted(range(len(events)), key=lambda k: events[k][0])  # stable: ties keep build order
    stamps = iso_ms(cfg.start, [events[k][0] for k in order])
    prefix = ID_PREFIX[event_type]
    writer = EventFileWriter(path, event_type, len(events), cfg)
    dumps = orjson.dumps
    for a in range(0, len(order), block):
        lines = []
        for j in range(a, min(len(order), a + block)):
            event = events[order[j]][1]
            event["event_id"] = f"ev-{prefix}-{j + 1:09d}"
            event["occurred_at"] = stamps[j]
            lines.append(dumps(event))
        writer.feed(lines)
    writer.close()
    return writer


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Plain JSONL (truth and reference files); returns the number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("wb") as fh:
        for row in rows:
            fh.write(orjson.dumps(row) + b"\n")
            n += 1
    return n
