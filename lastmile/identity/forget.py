"""Right to be forgotten (PIPL art. 47, GDPR art. 17): remove a person, keep the business facts.

``forget`` takes any one identifier of a person, finds their whole profile, and:

1. removes every identifier of the profile from the identity state and evidence, and adds
   their tokens to ``identity_forgotten`` — the suppression list that ingest consults, so a
   replayed file or topic cannot bring the person back;
2. anonymises their events: identifier columns holding those tokens become NULL (the order
   still counts in sales, but belongs to nobody);
3. deletes quarantined payloads that name any identifier of the person, in any spelling: each
   payload's identifier fields are normalised and hashed as ingest does and compared by token;
4. removes their OneID from every table derived from it (:func:`erase_oneid`): rows about the
   person - the customer marts, the ``feat_*`` tables the feature store reads, pushed real-time
   features, recommendation logs - are deleted; facts that only name them (``fct_orders.oneid``,
   ``fct_pickups.collector_oneid``, ...) lose the OneID, as a full dbt refresh would leave them;
5. logs what it touched in ``forget_log`` (the OneID 360, ``dim_customer``, lost the person in step 4).

The feature store's online copy is cleared by the caller (:func:`lastmile.features.forget.forget_online`,
which ``lastmile forget`` runs): it lives outside the warehouse.

All of it is physical (:mod:`lastmile.identity.erasure`): the rows and values leave the parts on
disk, and no predicate written to disk holds a raw value, token or OneID. The caller also
cleans the data directory's files (:mod:`lastmile.identity.forget_files`) and ends with the
verification pass (:mod:`lastmile.identity.forget_verify`). ``identity_forgotten`` keeps the
person's tokens on purpose: it is what stops a replay from bringing them back.

Running it again finds nothing left to touch and says so: it is idempotent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone

from lastmile.config import Settings, settings
from lastmile.contracts import contracts
from lastmile.identity.erasure import Erasure
from lastmile.identity.identifiers import check
from lastmile.identity.key_fingerprint import verify_hash_key
from lastmile.privacy import Identifiers
from lastmile.warehouse import Warehouse, quote_ident
from lastmile.warehouse.migrations import Migration, register
from lastmile.warehouse.tables import columns_for

register(Migration(11, "forget_tables", lambda: [
    "CREATE TABLE IF NOT EXISTS identity_forgotten (token String, forgotten_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
    "ENGINE = ReplacingMergeTree ORDER BY token "
    "COMMENT 'Tokens of forgotten people: ingest drops them, so replays cannot bring a person back.'",
    "CREATE TABLE IF NOT EXISTS forget_log (at DateTime64(3, 'UTC') DEFAULT now64(3), request_token String, "
    "oneid String, identifiers UInt64, touched Map(String, UInt64)) ENGINE = MergeTree ORDER BY at "
    "COMMENT 'One row per forget request (the requesting identifier only as a token) and what it touched.'",
]))

#: State tables and the token columns that name an identifier in them.
_IDENTITY_COLUMNS = {
    "identity_links": ("a_token", "b_token"),
    "identity_nodes": ("token",),
    "identity_edges": ("token_a", "token_b"),
    "identity_refusals": ("token",),
}


@dataclass
class ForgetReport:
    oneid: str
    identifiers: int
    touched: dict[str, int] = field(default_factory=dict)
    #: What names the person, for the verification pass: OneIDs (current and merged-away),
    #: tokens, and raw spellings (the one given, normalised forms, those found in raw text).
    oneids: set[str] = field(default_factory=set)
    tokens: set[str] = field(default_factory=set)
    spellings: set[str] = field(default_factory=set)

    @property
    def anything(self) -> bool:
        return self.identifiers > 0 or any(self.touched.values())


def forgotten_tokens(warehouse: Warehouse, cfg: Settings | None = None) -> frozenset[str]:
    """The suppression list (empty before the first forget).

    Every ingest path loads it right before it makes tokens, so this is also where the hash
    key is checked against the warehouse's (:func:`verify_hash_key`): a run under another key
    stops here, before it writes a single token.
    """
    verify_hash_key(warehouse, cfg or settings())
    if "identity_forgotten" not in warehouse.tables():
        return frozenset()
    return frozenset(t for (t,) in warehouse.rows("SELECT token FROM identity_forgotten FINAL"))


def forget_log_digest(value: str) -> str:
    """What the forget log keeps of a token or OneID: enough to tell two requests for the same
    identifier apart from two for different ones, nothing that finds the person."""
    return hashlib.sha256(b"lastmile forget log\x00" + value.encode()).hexdigest()[:24]


def raw_spellings(id_type: str, value: str, normalized: str) -> set[str]:
    """The ways a raw value may be written in text: as given, normalised, and for a phone the
    national number with and without the country code."""
    out = {value, value.strip(), normalized}
    if id_type.endswith("phone") and normalized.startswith("+86"):
        out |= {normalized[3:], normalized[1:]}
    return {s for s in out if len(s.strip()) >= 4}


def _quarantined(warehouse: Warehouse, identifiers: Identifiers, tokens: set[str], spellings: set[str]) -> tuple[list[str], set[str]]:
    """Keys of quarantined payloads naming the person, and the raw spellings found in them.

    A payload names the person when an identifier field in it (valid JSON or not, the value
    quoted or a bare number) normalises to one of their tokens, or when it holds one of their
    known spellings verbatim (a line too broken for the field pattern).
    """
    keys: list[str] = []
    found: set[str] = set()
    needles = sorted(spellings)
    for source, position, payload_hash, payload in warehouse.rows(
            "SELECT source, position, payload_hash, payload FROM quarantine"):
        data = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else bytes(payload)
        named = identifiers.spellings_of(data, tokens)
        if named or any(n.encode() in data for n in needles):
            keys.append(f"{source}\x00{position}\x00{payload_hash}")
            found |= named
    return keys, found


def forget(warehouse: Warehouse, identifiers: Identifiers, id_type: str, value: str) -> ForgetReport:
    """Forget the person behind ``id_type=value`` everywhere lastmile keeps them in the warehouse.

    Files under the data directory (event files, reference files, model artefacts) are the
    business of :func:`lastmile.identity.forget_files.forget_in_files`, and the check that
    nothing is left of :func:`lastmile.identity.forget_verify.verify`.
    """
    verify_hash_key(warehouse, settings())  # under another key their tokens would not be found
    normalized = check(id_type, value, identifiers.rules.blocklist)
    if normalized.value is None:
        raise ValueError(f"{id_type} {value!r} is not a usable identifier ({normalized.reason}); nothing to forget")
    token = identifiers.hasher.token(id_type, normalized.value)
    found = warehouse.rows("SELECT oneid FROM identity_nodes FINAL WHERE token = {t:String} AND oneid != ''", {"t": token})
    oneid = found[0][0] if found else ""
    tokens = sorted({token} | {t for (t,) in warehouse.rows(
        "SELECT token FROM identity_nodes FINAL WHERE oneid = {o:String} AND oneid != ''", {"o": oneid})})
    # OneIDs merged into theirs name the same person
    oneids = {oneid} | {o for (o,) in warehouse.rows(
        "SELECT oneid FROM identity_oneids FINAL WHERE survivor = {o:String}", {"o": oneid})} if oneid else set()
    report = ForgetReport(oneid=oneid, identifiers=len(tokens) if oneid else 0, oneids=oneids - {""}, tokens=set(tokens),
                          spellings=raw_spellings(id_type, value, normalized.value))

    keys, spelled = _quarantined(warehouse, identifiers, report.tokens, report.spellings)
    report.spellings |= spelled
    warehouse.insert_rows("identity_forgotten", [(t,) for t in tokens], ["token"])
    with Erasure(warehouse, [*tokens, *report.oneids, *keys]) as erase:
        for table, cols in _IDENTITY_COLUMNS.items():
            where = " OR ".join(erase.among(c) for c in cols)
            report.touched[table] = n = erase.count(table, where, final=True)
            if n:
                erase.delete(table, where)
        if report.oneids:
            for table, cols in (("identity_oneids", ("oneid", "survivor")), ("identity_changes", ("from_oneid", "to_oneid"))):
                where = " OR ".join(erase.among(c) for c in cols)
                report.touched[table] = n = erase.count(table, where)
                if n:
                    erase.delete(table, where)

        for contract in contracts().values():
            pii = [c.name for c in columns_for(contract) if c.kind == "pii"]
            if not pii:
                continue
            where = " OR ".join(erase.among(quote_ident(c)) for c in pii)
            report.touched[contract.table] = n = erase.count(contract.table, where, final=True)
            if n:
                for c in pii:
                    erase.blank(contract.table, c, erase.among(quote_ident(c)), "NULL")

        report.touched["quarantine"] = len(keys)
        if keys:
            erase.delete("quarantine", erase.among("concat(source, '\\0', toString(position), '\\0', toString(payload_hash))"))

        for table, n in _erase_oneids(erase, report.oneids).items():
            report.touched[table] = report.touched.get(table, 0) + n
        erase.apply()
    warehouse.insert_rows(
        "forget_log",
        [(datetime.now(timezone.utc), forget_log_digest(token), forget_log_digest(oneid) if oneid else "", report.identifiers, report.touched)],
        ["at", "request_token", "oneid", "identifiers", "touched"],
    )
    return report


#: Tables whose OneIDs :func:`forget` handles itself: the identity state (rows by token and
#: OneID above), the forget log (digests only) and the scratch copies of an erasure.
_KEEPS_ONEID = ("identity_", "forget_log", "forget_scratch_")


def oneid_columns(warehouse: Warehouse) -> list[tuple[str, str, bool, bool]]:
    """``(table, column, in_sorting_key, nullable)`` for every OneID column of the warehouse's
    tables (``oneid`` or ``*_oneid``), but those of :data:`_KEEPS_ONEID`. Views are left out:
    they show what their tables hold."""
    rows = warehouse.rows("""
        SELECT c.table, c.name, c.is_in_sorting_key, startsWith(c.type, 'Nullable')
        FROM system.columns AS c
        INNER JOIN system.tables AS t ON t.database = c.database AND t.name = c.table
        WHERE c.database = currentDatabase() AND t.engine LIKE '%MergeTree'
          AND (c.name = 'oneid' OR endsWith(c.name, '_oneid')) AND c.type IN ('String', 'Nullable(String)')
        ORDER BY c.table, c.name""")
    return [(table, column, bool(key), bool(nullable)) for table, column, key, nullable in rows
            if not table.startswith(_KEEPS_ONEID)]


def _erase_oneids(erase: Erasure, oneids: set[str]) -> dict[str, int]:
    touched: dict[str, int] = {}
    if not oneids:
        return touched
    for table, column, in_key, nullable in oneid_columns(erase.warehouse):
        where = erase.among(quote_ident(column))
        n = erase.count(table, where)
        if n:
            if in_key or table.startswith("stg_identity__"):
                # a row about the person (or dbt's event -> OneID map, which the next build
                # would drop anyway: the events carry no identifier of theirs any more)
                erase.delete(table, where)
            else:
                erase.blank(table, column, where, "NULL" if nullable else "''")
        touched[table] = touched.get(table, 0) + n
    return touched


def erase_oneid(warehouse: Warehouse, oneid: str) -> dict[str, int]:
    """Remove ``oneid`` from every table derived from it; returns the rows touched per table.

    Where the OneID is part of a table's sorting key, the row is about the person (a customer
    mart, a feature row keyed by OneID, a pushed real-time counter): it is deleted. Where it is
    an attribute of a business fact (an order, a pickup, a claim), the fact stays and the OneID
    becomes NULL (or '' in a column that cannot be NULL) - what a full dbt refresh writes for
    an event that no longer resolves. Physically (:class:`Erasure`). Idempotent.
    """
    with Erasure(warehouse, [oneid]) as erase:
        touched = _erase_oneids(erase, {oneid} - {""})
        erase.apply()
    return touched
