"""Right to be forgotten (PIPL art. 47, GDPR art. 17): remove a person, keep the business facts.

``forget`` takes any one identifier of a person, finds their whole profile, and:

1. removes every identifier of the profile from the identity state and evidence, and adds
   their tokens to ``identity_forgotten`` — the suppression list that ingest consults, so a
   replayed file or topic cannot bring the person back;
2. anonymises their events: identifier columns holding those tokens become NULL (the order
   still counts in sales, but belongs to nobody);
3. deletes quarantined payloads that contain the raw identifier (they are raw JSON);
4. removes their OneID from every table derived from it (:func:`erase_oneid`): rows about the
   person - the customer marts, the ``feat_*`` tables the feature store reads, pushed real-time
   features, recommendation logs - are deleted; facts that only name them (``fct_orders.oneid``,
   ``fct_pickups.collector_oneid``, ...) lose the OneID, as a full dbt refresh would leave them;
5. logs what it touched in ``forget_log`` (the OneID 360, ``dim_customer``, lost the person in step 4).

The feature store's online copy is cleared by the caller (:func:`lastmile.features.forget.forget_online`,
which ``lastmile forget`` runs): it lives outside the warehouse.

Running it again finds nothing left to touch and says so: it is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from lastmile.config import Settings, settings
from lastmile.contracts import contracts
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


def _count(warehouse: Warehouse, table: str, where: str, tokens: list[str]) -> int:
    return int(warehouse.scalar(f"SELECT count() FROM {quote_ident(table)} FINAL WHERE {where}", {"t": tokens}))


def forget(warehouse: Warehouse, identifiers: Identifiers, id_type: str, value: str) -> ForgetReport:
    """Forget the person behind ``id_type=value`` everywhere lastmile keeps them."""
    verify_hash_key(warehouse, settings())  # under another key their tokens would not be found
    normalized = check(id_type, value, identifiers.rules.blocklist)
    if normalized.value is None:
        raise ValueError(f"{id_type} {value!r} is not a usable identifier ({normalized.reason}); nothing to forget")
    token = identifiers.hasher.token(id_type, normalized.value)
    found = warehouse.rows("SELECT oneid FROM identity_nodes FINAL WHERE token = {t:String} AND oneid != ''", {"t": token})
    oneid = found[0][0] if found else ""
    tokens = sorted({token} | {t for (t,) in warehouse.rows(
        "SELECT token FROM identity_nodes FINAL WHERE oneid = {o:String} AND oneid != ''", {"o": oneid})})
    report = ForgetReport(oneid=oneid, identifiers=len(tokens) if oneid else 0)

    warehouse.insert_rows("identity_forgotten", [(t,) for t in tokens], ["token"])
    for table, cols in _IDENTITY_COLUMNS.items():
        where = " OR ".join(f"{c} IN {{t:Array(String)}}" for c in cols)
        n = _count(warehouse, table, where, tokens)
        if n:
            warehouse.command(f"DELETE FROM {table} WHERE {where}", {"t": tokens})
        report.touched[table] = n
    if oneid:
        warehouse.command("ALTER TABLE identity_oneids UPDATE origin_token = '', survivor = '' WHERE oneid = {o:String} "
                          "SETTINGS mutations_sync = 1", {"o": oneid})

    for contract in contracts().values():
        pii = [c.name for c in columns_for(contract) if c.kind == "pii"]
        if not pii:
            continue
        where = " OR ".join(f"{quote_ident(c)} IN {{t:Array(String)}}" for c in pii)
        n = _count(warehouse, contract.table, where, tokens)
        if n:
            sets = ", ".join(f"{quote_ident(c)} = if({quote_ident(c)} IN {{t:Array(String)}}, NULL, {quote_ident(c)})" for c in pii)
            warehouse.command(f"ALTER TABLE {quote_ident(contract.table)} UPDATE {sets} WHERE {where} SETTINGS mutations_sync = 1",
                              {"t": tokens})
        report.touched[contract.table] = n

    needles = sorted({value, normalized.value, normalized.value.lstrip("+").removeprefix("86")} - {""})
    where = " OR ".join(f"position(payload, {{n{i}:String}}) > 0" for i in range(len(needles)))
    params = {f"n{i}": n for i, n in enumerate(needles)}
    n = int(warehouse.scalar(f"SELECT count() FROM quarantine WHERE {where}", params))
    if n:
        warehouse.command(f"DELETE FROM quarantine WHERE {where}", params)
    report.touched["quarantine"] = n

    if oneid:
        report.touched.update(erase_oneid(warehouse, oneid))
    warehouse.insert_rows(
        "forget_log",
        [(datetime.now(timezone.utc), token, oneid, report.identifiers, report.touched)],
        ["at", "request_token", "oneid", "identifiers", "touched"],
    )
    return report


#: Tables that keep a OneID on purpose, or whose OneIDs their owner re-derives itself: the
#: identity state and its logs (``identity_changes`` maps old OneIDs for downstream remapping),
#: the forget log, and dbt's OneID staging with its bookkeeping,
#: which the next build re-resolves from the identity state (tests/test_dbt_marts.py).
_KEEPS_ONEID = ("identity_", "forget_log", "stg_identity__")


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


def erase_oneid(warehouse: Warehouse, oneid: str) -> dict[str, int]:
    """Remove ``oneid`` from every table derived from it; returns the rows touched per table.

    Where the OneID is part of a table's sorting key, the row is about the person (a customer
    mart, a feature row keyed by OneID, a pushed real-time counter): it is deleted. Where it is
    an attribute of a business fact (an order, a pickup, a claim), the fact stays and the OneID
    becomes NULL (or '' in a column that cannot be NULL) - what a full dbt refresh writes for
    an event that no longer resolves. Idempotent: a second call finds nothing.
    """
    touched: dict[str, int] = {}
    for table, column, in_key, nullable in oneid_columns(warehouse):
        name, col = quote_ident(table), quote_ident(column)
        n = int(warehouse.scalar(f"SELECT count() FROM {name} WHERE {col} = {{o:String}}", {"o": oneid}))
        if n:
            if in_key:
                warehouse.command(f"DELETE FROM {name} WHERE {col} = {{o:String}}", {"o": oneid})
            else:
                blank = "NULL" if nullable else "''"
                warehouse.command(f"ALTER TABLE {name} UPDATE {col} = {blank} WHERE {col} = {{o:String}} "
                                  "SETTINGS mutations_sync = 1", {"o": oneid})
        touched[table] = touched.get(table, 0) + n
    return touched
