"""Rotating the hash key: a fresh warehouse built from the raw events under the new key.

A token is a keyed hash of a normalised identifier (:mod:`lastmile.privacy`): it cannot be
turned back into the phone number, so tokens cannot be re-hashed under another key, and the
OneIDs named after them change with them. Changing keys therefore means ingesting the raw
event files again, under the new key, into a warehouse of its own (another ``LASTMILE_HOME``,
or another database on a ClickHouse server), and pointing lastmile at it once it is complete.
The old warehouse is only read: it stays usable until the switch, and is the fallback.

What :func:`prepare` checks before anything is written, and why:

* the old warehouse's key is the one configured now (:func:`verify_hash_key`): the
  suppression list and the OneIDs below are read as tokens of that key;
* the new key is another key, and the target holds no warehouse built under a third key;
* **forgotten people stay forgotten.** The suppression list (``identity_forgotten``) holds
  tokens of the old key; under the new key they mean nothing, and they cannot be recomputed
  without the raw values. ``lastmile forget`` nulls a person's identifiers in the files under
  ``$LASTMILE_HOME``, so normally no raw line names them any more. A line that still does (an
  event directory outside the data directory, a file restored from a backup) would bring the
  person back under the new key. Such lines are counted and the rotation is refused, unless
  the operator asks to drop them (``drop_forgotten``): then the staged copies of the event
  files have those identifiers nulled exactly as ``forget`` would have done, and their tokens
  *under the new key* (known now, from the raw values found) start the new suppression list,
  so a later replay of the old file cannot bring them back either. Forgotten people whose
  values are in no file any more cannot be carried over: that count is reported.

:func:`stage` copies the data directory's inputs into the target (event files hard-linked
when possible: ``forget`` replaces files rather than editing them, so the two homes never
change each other's copy), records the new key's fingerprint and seeds the suppression list.
The caller then runs the ordinary Beam ingest against the target (engine wiring stays in
``pipelines/``), and :func:`finish` compares the two warehouses, carries reference rows keyed
by OneID (dietary declarations) over to the new OneIDs, and says what is left to do.

Re-running is safe: the copies are replaced only when they differ, and ingest is idempotent.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson

from lastmile.config import Settings
from lastmile.contracts import contracts
from lastmile.identity.identifiers import TYPE_NAMES, normalize
from lastmile.identity.key_fingerprint import fingerprint, record_fingerprint, stored_fingerprint, verify_hash_key
from lastmile.privacy import Identifiers
from lastmile.warehouse import Warehouse, close_all, connect, migrate

#: Data directory entries a rotation copies: reference (master) data, the simulator's ground
#: truth and manifest when present, and the credentials kept there by default (API keys, users
#: of the warehouse's HTTP interface: they do not depend on the hash key, and clients should
#: not be locked out by a switch). Models, the feature store, reports and dbt's work directory
#: are rebuilt by the steps that follow a rotation; the warehouse is what is rebuilt. The API's
#: audit log stays with the old data directory, as a record of what was read there.
COPIED = ("reference", "truth", "manifest.json")
#: Reference rows keyed by OneID live in these files (under reference/) and warehouse tables.
ONEID_REFERENCE = {"dietary_declarations.jsonl": "ref_dietary_declarations"}


class RotationRefused(ValueError):
    """The rotation cannot be done as asked; nothing was ingested into the target."""

    whole_message = True  # the command line prints it uncut: counts, paths and what to do


@dataclass(frozen=True)
class WarehouseCounts:
    """What must survive a rotation: raw events per table and profiles (OneIDs)."""

    events: dict[str, int]
    profiles: int

    @property
    def total_events(self) -> int:
        return sum(self.events.values())


@dataclass
class EventScan:
    """Raw identifier values of interest found in the event files, under the old key."""

    #: lines naming a forgotten person, per file (relative to the events directory)
    forgotten_lines: dict[str, int] = field(default_factory=dict)
    #: (id_type, normalised value) of forgotten people still present in raw lines
    forgotten_values: set[tuple[str, str]] = field(default_factory=set)
    #: old token -> (id_type, normalised value), for the identifiers of OneIDs to carry over
    carried: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def lines(self) -> int:
        return sum(self.forgotten_lines.values())


@dataclass
class Rotation:
    """A rotation being carried out: where from, where to, and what was found on the way."""

    source: Settings
    target: Settings
    events_dir: Path
    old_fingerprint: str
    new_fingerprint: str
    old_counts: WarehouseCounts
    #: size of the old suppression list, and how many of its people could be carried over
    suppressed: int = 0
    suppression_carried: int = 0
    scan: EventScan = field(default_factory=EventScan)
    #: old OneID -> its tokens, for OneIDs named by reference rows
    declared: dict[str, set[str]] = field(default_factory=dict)
    #: rows of ONEID_REFERENCE tables in the old warehouse, as JSON objects
    reference_rows: dict[str, list[dict]] = field(default_factory=dict)
    staged: dict[str, int] = field(default_factory=dict)

    @property
    def target_place(self) -> str:
        return place(self.target)


@dataclass
class RotationResult:
    rotation: Rotation
    new_counts: WarehouseCounts
    #: reference rows moved to the new OneIDs, and those whose OneID has no single successor
    reference_carried: dict[str, int] = field(default_factory=dict)
    reference_dropped: dict[str, int] = field(default_factory=dict)
    #: forgotten people found in the raw files whose new tokens reached the identity graph (must be 0)
    forgotten_resurrected: int = 0

    @property
    def missing_events(self) -> dict[str, int]:
        """Tables with fewer events in the new warehouse than in the old (events that reached
        the old one through the stream and are in no raw file, for instance)."""
        old, new = self.rotation.old_counts.events, self.new_counts.events
        return {t: old[t] - new.get(t, 0) for t in old if new.get(t, 0) < old[t]}

    @property
    def complete(self) -> bool:
        return not self.missing_events and self.forgotten_resurrected == 0


def place(cfg: Settings) -> str:
    return str(cfg.warehouse_dir) if cfg.embedded else f"{cfg.clickhouse_url} database {cfg.clickhouse_database}"


def new_key_source(target: Settings) -> str:
    """Where the new key comes from, in words (the target's key is given as a file, or kept in its hash.key)."""
    return "--new-key-file" if target.hash_key else f"the file {target.hash_key_file}"


def counts(warehouse: Warehouse) -> WarehouseCounts:
    """Raw events per contract table (deduplicated) and profiles in ``warehouse``."""
    tables = set(warehouse.tables())
    events = {c.table: warehouse.count(c.table) for c in contracts().values() if c.table in tables}
    profiles = int(warehouse.scalar("SELECT uniqExact(oneid) FROM identity_nodes FINAL WHERE oneid != ''")
                   if "identity_nodes" in tables else 0)
    return WarehouseCounts(events, profiles)


def target_settings(source: Settings, to_home: Path, new_key: str | None, to_database: str | None) -> Settings:
    """The settings of the new warehouse: its own data directory (key file, copies of the inputs),
    and on a server its own database. ``new_key`` None: the key in ``to_home/hash.key``,
    generated there if absent."""
    home = to_home.expanduser().resolve()
    if home == source.home or home.is_relative_to(source.home) or source.home.is_relative_to(home):
        raise RotationRefused(f"--to-home {home} is, holds or lies in the current data directory ({source.home}): a rotation "
                              "builds a fresh one beside it")
    if source.embedded:
        if to_database:
            raise RotationRefused("--to-database is for a ClickHouse server; the embedded warehouse of the new key "
                                  f"lives in {home / 'warehouse'}")
        database = source.clickhouse_database
    else:
        if not to_database:
            raise RotationRefused(f"the warehouse is on a ClickHouse server ({source.clickhouse_url}): give --to-database "
                                  "NAME, the database the new key's warehouse is built in (the old one is only read)")
        if to_database == source.clickhouse_database:
            raise RotationRefused(f"--to-database {to_database} is the current database: choose a fresh one")
        database = to_database
    return replace(source, home=home, hash_key=new_key or "", clickhouse_database=database)


def _declared_oneids(source: Settings, warehouse: Warehouse) -> dict[str, list[dict]]:
    """Reference rows keyed by OneID in the old warehouse (what ``lastmile consent`` loaded)."""
    out: dict[str, list[dict]] = {}
    tables = set(warehouse.tables())
    for table in ONEID_REFERENCE.values():
        if table in tables:
            result = warehouse.query(f"SELECT * EXCEPT _loaded_at FROM {table} FINAL")
            out[table] = [dict(zip(result.column_names, row)) for row in result.result_rows]
    return out


def _file_oneids(source: Settings) -> set[str]:
    found: set[str] = set()
    for name in ONEID_REFERENCE:
        path = source.home / "reference" / name
        if path.is_file():
            for line in path.read_bytes().splitlines():
                if line.strip():
                    found.add(str(orjson.loads(line).get("oneid", "")))
    return found - {""}


def _tokens_of(warehouse: Warehouse, oneids: set[str]) -> dict[str, set[str]]:
    if not oneids:
        return {}
    out: dict[str, set[str]] = {}
    for token, oneid in warehouse.rows("SELECT token, oneid FROM identity_nodes FINAL WHERE oneid IN {o:Array(String)}",
                                       {"o": sorted(oneids)}):
        out.setdefault(oneid, set()).add(token)
    return out


def scan_events(events_dir: Path, identifiers: Identifiers, forgotten: frozenset[str], carried: set[str]) -> EventScan:
    """Find, in the raw event files and under the old key, the lines naming a forgotten person
    (with the values they name) and the raw values behind ``carried`` tokens.

    Files without any such value are passed over whole (one regex pass); only the others are
    read line by line.
    """
    scan = EventScan()
    wanted = forgotten | carried
    if not wanted:
        return scan
    for path in sorted(events_dir.glob("*.jsonl")):
        data = path.read_bytes()
        if not identifiers.spellings_of(data, wanted):
            continue
        for line in data.split(b"\n"):
            spellings = identifiers.spellings_of(line, wanted) if line.strip() else set()
            names_forgotten = False
            for raw in spellings:
                for id_type in TYPE_NAMES:
                    value = normalize(id_type, raw, identifiers.rules.blocklist)
                    if value is None:
                        continue
                    token = identifiers.hasher.token(id_type, value)
                    if token in forgotten:
                        names_forgotten = True
                        scan.forgotten_values.add((id_type, value))
                    if token in carried:
                        scan.carried[token] = (id_type, value)
            if names_forgotten:
                name = path.name
                scan.forgotten_lines[name] = scan.forgotten_lines.get(name, 0) + 1
    return scan


def prepare(source: Settings, target: Settings, events_dir: Path, drop_forgotten: bool) -> Rotation:
    """Read the old warehouse and the raw events, check the target; write nothing.

    Raises :class:`RotationRefused` when the rotation would be wrong (nothing is written then,
    but a server's empty target database).
    """
    events_dir = events_dir.expanduser().resolve()
    if not events_dir.is_dir() or not any(events_dir.glob("*.jsonl")):
        raise RotationRefused(f"no event files (*.jsonl) in {events_dir}: the new warehouse is built from the raw events "
                              "(give --events DIR)")
    old = connect(source)
    if stored_fingerprint(old) is None and not counts(old).total_events:
        raise RotationRefused(f"the warehouse at {place(source)} holds nothing yet: no rotation is needed, ingest under "
                              "the new key directly")
    old_fp = verify_hash_key(old, source)  # the old tokens below are read under the warehouse's own key
    if target.hash_key and target.hash_key_file.is_file() and target.hash_key_file.read_text().strip() != target.hash_key:
        raise RotationRefused(
            f"--new-key-file holds a key (fingerprint {fingerprint(target.hash_key.encode())}) other than the one in "
            f"{target.hash_key_file} (fingerprint {fingerprint(target.hash_key_file.read_text().strip().encode())}), "
            "which a previous rotation into this directory used: give that key, or choose an empty --to-home")
    given = target.hash_key_bytes() if target.hash_key or target.hash_key_file.is_file() else None
    new_fp = fingerprint(given) if given else ""  # "": a key is generated when the copies are staged
    if new_fp == old_fp:
        raise RotationRefused(f"the new key is the warehouse's own key (fingerprint {old_fp}): nothing would change. Give "
                              f"another key (--new-key-file, or remove {target.hash_key_file} to generate one)")
    old_identifiers = Identifiers(source)
    forgotten = frozenset(t for (t,) in old.rows("SELECT token FROM identity_forgotten FINAL")) \
        if "identity_forgotten" in old.tables() else frozenset()
    reference_rows = _declared_oneids(source, old)
    oneids = _file_oneids(source) | {str(r["oneid"]) for rows in reference_rows.values() for r in rows}
    declared = _tokens_of(old, oneids)
    rotation = Rotation(source=source, target=target, events_dir=events_dir, old_fingerprint=old_fp,
                        new_fingerprint=new_fp, old_counts=counts(old), suppressed=len(forgotten),
                        declared=declared, reference_rows=reference_rows)
    rotation.scan = scan_events(events_dir, old_identifiers, forgotten, set().union(*declared.values()) if declared else set())
    if rotation.scan.lines and not drop_forgotten:
        where = ", ".join(f"{name} {n:,}" for name, n in sorted(rotation.scan.forgotten_lines.items()))
        raise RotationRefused(
            f"{rotation.scan.lines:,} raw event line(s) in {events_dir} still carry identifiers of "
            f"{len(rotation.scan.forgotten_values):,} forgotten identifier value(s) ({where}). The new key's warehouse has "
            "no suppression list of its own: re-ingested, these lines would bring forgotten people back. Run again with "
            "--drop-forgotten to null those identifiers in the new data directory's copies (as `lastmile forget` does) "
            "and carry their suppression over to the new key, or clean the files first")
    close_all()  # chDB opens one directory per process; a server's client is per URL, not per database
    held = stored_fingerprint(connect(target)) if not target.embedded or target.warehouse_dir.is_dir() else None
    if held is not None and held[0] != new_fp:
        key = f"the new key (fingerprint {new_fp}, from {new_key_source(target)})" if new_fp else "a newly generated key"
        raise RotationRefused(
            f"{rotation.target_place} already holds a warehouse built under another key (fingerprint {held[0]}, loaded "
            f"from {held[1]}), not {key}. Choose an empty --to-home" + ("" if target.embedded else " / --to-database")
            + ", or give the key that warehouse was built with (--new-key-file)")
    return rotation


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = a.stat(), b.stat()
    except FileNotFoundError:
        return False
    return (sa.st_ino, sa.st_dev) == (sb.st_ino, sb.st_dev) or (sa.st_size == sb.st_size and a.read_bytes() == b.read_bytes())


def _place_copy(source: Path, target: Path, link: bool) -> bool:
    """Put ``source`` at ``target`` unless it is already there; the swap is atomic. Returns
    whether anything changed.

    ``link``: a hard link where the file system allows (event files: large, and every writer in
    lastmile replaces them rather than writing into them), else a copy (small files an operator
    may overwrite in place, which through a link would change both data directories).
    """
    if _same_file(source, target):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".rotating")
    tmp.unlink(missing_ok=True)
    try:
        if not link:
            raise OSError("copy wanted")
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)
    return True


def _default_credentials(source: Settings) -> list[Path]:
    """Credential files kept in the data directory (their settings unset), that exist."""
    paths = []
    if not source.api_keys_file:
        paths.append(source.home / "api" / "keys.json")
    if not source.warehouse_users:
        paths.append(source.warehouse_users_file)
    return [p for p in paths if p.is_file()]


def stage(rotation: Rotation) -> None:
    """Copy the inputs into the target's data directory, drop forgotten identifiers from the
    copies when asked to, record the new key and seed the new suppression list."""
    source, target = rotation.source, rotation.target
    files: list[tuple[Path, Path, bool]] = []
    for name in COPIED:
        path = source.home / name
        if path.is_file():
            files.append((path, target.home / name, False))
        elif path.is_dir():
            files += [(p, target.home / name / p.relative_to(path), False) for p in sorted(path.rglob("*")) if p.is_file()]
    for credentials in _default_credentials(source):
        files.append((credentials, target.home / credentials.relative_to(source.home), False))
    if rotation.events_dir != target.events_dir:
        files += [(p, target.events_dir / p.name, True) for p in sorted(rotation.events_dir.glob("*.jsonl"))]
    rotation.staged = dict(Counter(dst.relative_to(target.home).parts[0] for src, dst, link in files
                                   if _place_copy(src, dst, link)))

    scan = rotation.scan
    if scan.lines:
        from lastmile.identity.forget_files import forget_in_files

        old_identifiers = Identifiers(source)
        tokens = {old_identifiers.hasher.token(t, v) for t, v in scan.forgotten_values}
        forget_in_files(target.events_dir, old_identifiers, tokens, set(), set())
        left = scan_events(target.events_dir, old_identifiers, frozenset(tokens), set())
        if left.lines:  # forget_in_files nulls every field it recognises; this would be a defect
            raise RotationRefused(f"{left.lines} line(s) in {target.events_dir} still name forgotten people after cleaning")

    rotation.new_fingerprint = fingerprint(target.hash_key_bytes())  # generates to_home/hash.key when no key is given
    new = connect(target)
    migrate(new)
    if stored_fingerprint(new) is None:
        record_fingerprint(new, target)
    new_hasher = Identifiers(target).hasher
    carried = sorted({new_hasher.token(t, v) for t, v in scan.forgotten_values})
    if carried:
        new.insert_rows("identity_forgotten", [(t,) for t in carried], ["token"])
    rotation.suppression_carried = len(carried)
    close_all()  # the ingest that follows opens the target with its own settings


def _carry_reference(rotation: Rotation, new: Warehouse) -> tuple[dict[str, int], dict[str, int]]:
    """Move reference rows keyed by an old OneID to the OneID its identifiers have now.

    An old OneID maps to a new one through its identifiers' raw values (old token -> value ->
    new token -> new OneID). A row whose OneID has no single successor (its identifiers are in
    no raw file, or ended in several profiles) is not carried: it is counted, to be declared again.
    """
    new_hasher = Identifiers(rotation.target).hasher
    new_token = {old: new_hasher.token(t, v) for old, (t, v) in rotation.scan.carried.items()}
    wanted = sorted(set(new_token.values()))
    new_oneid = dict(new.rows("SELECT token, oneid FROM identity_nodes FINAL WHERE token IN {t:Array(String)} AND oneid != ''",
                              {"t": wanted})) if wanted else {}
    successor: dict[str, str | None] = {}
    for old_oneid, tokens in rotation.declared.items():
        found = {new_oneid[new_token[t]] for t in tokens if t in new_token and new_token[t] in new_oneid}
        successor[old_oneid] = found.pop() if len(found) == 1 else None

    carried: dict[str, int] = {}
    dropped: dict[str, int] = {}
    for name in ONEID_REFERENCE:
        path = rotation.target.home / "reference" / name
        if not path.is_file():
            continue
        out, moved, lost = [], 0, 0
        for line in path.read_bytes().splitlines():
            if not line.strip():
                continue
            row = orjson.loads(line)
            to = successor.get(str(row.get("oneid", "")))
            if to is None:
                lost += 1
                continue
            row["oneid"] = to
            out.append(orjson.dumps(row))
            moved += 1
        tmp = path.with_name(path.name + ".rotating")
        tmp.write_bytes(b"".join(line + b"\n" for line in out))
        os.replace(tmp, path)  # a new file: a hard link to the old home's copy is left as it was
        carried[f"reference/{name}"], dropped[f"reference/{name}"] = moved, lost
    for table, rows in rotation.reference_rows.items():
        kept = [{**r, "oneid": successor[str(r["oneid"])]} for r in rows if successor.get(str(r["oneid"]))]
        if table not in new.tables():
            from lastmile.models.consent import DDL

            new.command(DDL)
        if kept:
            new.insert_rows(table, [tuple(r.values()) for r in kept], list(kept[0]))
        carried[table], dropped[table] = len(kept), len(rows) - len(kept)
    return carried, dropped


def finish(rotation: Rotation) -> RotationResult:
    """After the ingest into the target: compare, carry OneID-keyed reference rows, check that
    no forgotten person found in the raw files has a profile under the new key."""
    new = connect(rotation.target)
    result = RotationResult(rotation=rotation, new_counts=counts(new))
    result.reference_carried, result.reference_dropped = _carry_reference(rotation, new)
    new_hasher = Identifiers(rotation.target).hasher
    tokens = sorted({new_hasher.token(t, v) for t, v in rotation.scan.forgotten_values})
    if tokens:
        result.forgotten_resurrected = int(new.scalar(
            "SELECT count() FROM identity_nodes FINAL WHERE token IN {t:Array(String)}", {"t": tokens}))
    return result


def ingest_environment(target: Settings) -> dict[str, str]:
    """The LASTMILE_* variables that make a lastmile process work on the target warehouse."""
    env = {"LASTMILE_HOME": str(target.home), "LASTMILE_CLICKHOUSE_DATABASE": target.clickhouse_database}
    env["LASTMILE_HASH_KEY"] = target.hash_key  # empty: the target's hash.key
    return env


def next_steps(result: RotationResult) -> list[str]:
    """What the operator does to switch over, in order."""
    target = result.rotation.target
    key = ("export LASTMILE_HASH_KEY=<the new key from your secret store>" if target.hash_key else
           f"unset LASTMILE_HASH_KEY (the new key is in {target.hash_key_file}; keep a copy in your secret store)")
    steps = [f"export LASTMILE_HOME={target.home}"]
    if not target.embedded:
        steps.append(f"export LASTMILE_CLICKHOUSE_DATABASE={target.clickhouse_database}")
    steps.append(key)
    if target.feast_online_store:
        steps.append("point LASTMILE_FEAST_ONLINE_STORE at an empty store (another Redis database): the one set now "
                     "holds the old OneIDs' features")
    steps += ["lastmile transform --full-refresh", "lastmile features apply", "lastmile features materialize --full",
              "lastmile train", "restart `lastmile stream` and `lastmile serve` with these settings",
              "repeat in the new data directory any `lastmile forget` made in the old one since the rotation",
              f"once satisfied, delete the old warehouse ({place(result.rotation.source)}) and data directory "
              f"({result.rotation.source.home}), and retire the old key"]
    return steps
