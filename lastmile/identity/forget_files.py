"""Forgetting a person in the data directory's files: event files, reference files, models.

The warehouse is not the only copy: ``$LASTMILE_HOME`` holds the raw event files ingest reads
(phones as typed), reference files such as the dietary declarations (health data keyed by
OneID), the simulator's ground truth, and saved models (the recommender keeps a factor row per
OneID). A forget request that left them would be undone by the next re-ingest or rotation.

Per JSON Lines file, line by line:

* a record *about* the person (its ``oneid`` is theirs; a ground-truth identifier record whose
  value is theirs) is dropped;
* an identifier field naming the person (by token, whatever the spelling) becomes ``null`` -
  the event stays a valid event that still counts in sales, exactly as the warehouse now keeps
  it (identifier columns NULL);
* a line that still holds one of their values (a broken line, free text) is dropped.

The warehouse directory and the feature store's files are left to their owners (the erasure
and :mod:`lastmile.features.forget`); the verification pass searches them all afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from lastmile.identity.identifiers import normalize
from lastmile.privacy import Identifiers

#: Keys whose value is an identifier of the given type.
_ID_KEYS = {"phone": "phone", "previous_phone": "phone", "unionid": "unionid", "openid": "openid",
            "member_card": "member_card", "device_id": "device_id"}
#: Directories under the data directory cleaned elsewhere (erasure, feature store, model hooks).
SKIP_DIRS = ("warehouse", "feast", "models")


def _names_person(identifiers: Identifiers, id_type: str, raw: Any, tokens: set[str]) -> bool:
    if not isinstance(raw, (str, int)) or isinstance(raw, bool):
        return False
    value = normalize(id_type, str(raw), identifiers.rules.blocklist)
    return value is not None and identifiers.hasher.token(id_type, value) in tokens


def _scrub(node: Any, identifiers: Identifiers, tokens: set[str], oneids: set[str]) -> tuple[Any, bool, bool]:
    """``(node with the person's identifiers nulled, changed, record is about the person)``."""
    if isinstance(node, dict):
        if node.get("oneid") in oneids:
            return node, False, True
        kind = node.get("id_type")
        if isinstance(kind, str) and kind in _ID_KEYS and any(
                _names_person(identifiers, _ID_KEYS[kind], node.get(k), tokens) for k in ("value", "normalised")):
            return node, False, True
        changed = False
        out = {}
        for key, value in node.items():
            if key in _ID_KEYS and _names_person(identifiers, _ID_KEYS[key], value, tokens):
                out[key], changed = None, True
                continue
            value, sub_changed, about = _scrub(value, identifiers, tokens, oneids)
            if about:
                return node, False, True
            out[key], changed = value, changed or sub_changed
        return out, changed, False
    if isinstance(node, list):
        items, changed = [], False
        for value in node:
            value, sub_changed, about = _scrub(value, identifiers, tokens, oneids)
            if about:
                return node, False, True
            items.append(value)
            changed = changed or sub_changed
        return items, changed, False
    return node, False, False


def spellings_in_files(home: Path, identifiers: Identifiers, tokens: set[str]) -> set[str]:
    """Raw spellings of the person's identifiers in the data directory's text files."""
    found: set[str] = set()
    for path in _text_files(home):
        found |= identifiers.spellings_of(path.read_bytes(), tokens)
    return found


def _text_files(home: Path) -> list[Path]:
    out = []
    for root, dirs, files in os.walk(home):
        if Path(root) == home:
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        for name in files:
            if name.endswith((".jsonl", ".json", ".ndjson")):
                out.append(Path(root) / name)
    return sorted(out)


def forget_in_files(home: Path, identifiers: Identifiers, tokens: set[str], oneids: set[str], needles: set[str]) -> dict[str, int]:
    """Clean every JSON (Lines) file under ``home`` of the person; returns lines changed or
    dropped per file (relative path). Files are replaced atomically."""
    touched: dict[str, int] = {}
    raw_needles = [n.encode() for n in needles if n]
    for path in _text_files(home):
        data = path.read_bytes()
        if not identifiers.spellings_of(data, tokens) and not any(n in data for n in raw_needles):
            continue
        lines = data.split(b"\n")
        whole = path.suffix == ".json"
        units = [data] if whole else lines
        out: list[bytes] = []
        changed = 0
        for line in units:
            if not line.strip() or (not identifiers.spellings_of(line, tokens) and not any(n in line for n in raw_needles)):
                out.append(line)
                continue
            changed += 1
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a broken line holding their data: dropped
            record, _, about = _scrub(record, identifiers, tokens, oneids)
            if about:
                continue
            text = orjson.dumps(record)
            if any(n in text for n in raw_needles):
                continue
            out.append(text)
        if changed:
            tmp = path.with_name(path.name + ".forgetting")
            tmp.write_bytes(b"\n".join(out) if not whole else (out[0] if out else b""))
            os.replace(tmp, path)
            touched[str(path.relative_to(home))] = changed
    return touched
