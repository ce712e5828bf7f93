"""Raw warehouse tables derived from the event contracts, and the event → row mapping.

A contract's properties become columns by these rules, so the schemas stay the one source
of truth for event shapes:

============================  ===============================================
contract property             ClickHouse column(s)
============================  ===============================================
string, format date-time      ``DateTime64(3, 'UTC')`` (converted from any offset)
enum / const                  ``LowCardinality(String)``
string                        ``String``
string marked ``x-pii``       ``String`` holding a keyed hash, never the value
integer / number / boolean    ``Int64`` / ``Float64`` (or ``x-clickhouse-type``) / ``Bool``
object (identifiers)          one column per key: ``buyer_phone``, ``buyer_openid`` ...
array of strings              ``Array(String)``
array of objects              ``Array(Tuple(name Type, ...))`` (named tuples)
============================  ===============================================

Optional scalars are ``Nullable``. Every raw table is a ``ReplacingMergeTree`` versioned by
``_ingested_at`` whose sorting key ends with ``event_id``: an event is immutable, so the
same event ingested twice collapses to one row, whatever the source (file, topic, replay).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from lastmile.contracts import Contract, contracts
from lastmile.warehouse.client import quote_ident

#: Columns every raw table has besides the contract's fields.
INGEST_COLUMNS = (
    ("_source", "LowCardinality(String)", "Where the event was read from (file or topic)."),
    ("_ingested_at", "DateTime64(3, 'UTC') DEFAULT now64(3)", "When lastmile wrote the row; the ReplacingMergeTree version."),
)

#: Hashes an identifier: (id_type, raw value) -> token, or None when the value is blocked.
TokenFor = Callable[[str, str], "str | None"]


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    comment: str
    path: tuple[str, ...]  # where the value sits in the event
    kind: str  # scalar | timestamp | pii | tuple_array


def _scalar_type(spec: dict[str, Any]) -> tuple[str, str]:
    if spec.get("x-pii"):
        # An identifier is stored as its keyed hash whatever the producer typed (text or a number).
        return "String", "pii"
    if "x-clickhouse-type" in spec:
        return spec["x-clickhouse-type"], "scalar"
    if "enum" in spec or "const" in spec:
        return ("UInt16" if spec.get("type") == "integer" else "LowCardinality(String)"), "scalar"
    kind = spec.get("type")
    if kind == "string" and spec.get("format") == "date-time":
        return "DateTime64(3, 'UTC')", "timestamp"
    if kind == "string":
        return "String", ("pii" if spec.get("x-pii") else "scalar")
    if kind == "integer":
        return "Int64", "scalar"
    if kind == "number":
        return "Float64", "scalar"
    if kind == "boolean":
        return "Bool", "scalar"
    raise ValueError(f"no ClickHouse mapping for contract property {spec}")


def _nullable(ch_type: str) -> str:
    """ClickHouse wants ``LowCardinality(Nullable(T))``, not ``Nullable(LowCardinality(T))``."""
    if ch_type.startswith("LowCardinality("):
        return f"LowCardinality(Nullable({ch_type[len('LowCardinality('):-1]}))"
    return f"Nullable({ch_type})"


def _tuple_array_type(items: dict[str, Any]) -> str:
    parts = []
    for name, spec in items["properties"].items():
        ch_type, _ = _scalar_type(spec)
        if name not in items.get("required", []):
            ch_type = _nullable(ch_type)
        parts.append(f"{name} {ch_type}")
    return f"Array(Tuple({', '.join(parts)}))"


def columns_for(contract: Contract) -> list[Column]:
    """The raw table's columns for a contract, in contract order."""
    required = set(contract.schema.get("required", []))
    out: list[Column] = []
    for name, spec in contract.properties.items():
        comment = spec.get("description", "")
        if spec.get("type") == "object":
            for sub, sub_spec in spec["properties"].items():
                ch_type, kind = _scalar_type(sub_spec)
                out.append(Column(f"{name}_{sub}", _nullable(ch_type), f"{comment} {sub}: {sub_spec.get('description', '')}".strip(), (name, sub), kind))
        elif spec.get("type") == "array":
            items = spec["items"]
            if items.get("type") == "object":
                out.append(Column(name, _tuple_array_type(items), comment, (name,), "tuple_array"))
            else:
                out.append(Column(name, "Array(String)", comment, (name,), "scalar"))
        else:
            ch_type, kind = _scalar_type(spec)
            if name not in required:
                ch_type = _nullable(ch_type)
            out.append(Column(name, ch_type, comment, (name,), kind))
    return out


def create_table_sql(contract: Contract) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for a contract's raw table."""
    cols = [f"    {quote_ident(c.name)} {c.type} COMMENT {_sql_string(c.comment)}" for c in columns_for(contract)]
    cols += [f"    {quote_ident(n)} {t} COMMENT {_sql_string(d)}" for n, t, d in INGEST_COLUMNS]
    order_by = ", ".join(quote_ident(c) for c in contract.order_by)
    partition = f"\nPARTITION BY {contract.partition_by}" if contract.partition_by else ""
    return (
        f"CREATE TABLE IF NOT EXISTS {quote_ident(contract.table)} (\n"
        + ",\n".join(cols)
        + f"\n)\nENGINE = ReplacingMergeTree(_ingested_at){partition}\nORDER BY ({order_by})"
        + f"\nCOMMENT {_sql_string(contract.description)}"
    )


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class RowMapper:
    """Turns valid events into raw-table rows (JSONEachRow lines).

    A contract's top-level keys already are its column names, and ClickHouse parses the
    JSON itself, so most of an event passes through untouched. Only identifier objects are
    flattened (``buyer.phone`` -> ``buyer_phone``) and their values replaced by keyed
    hashes. Contracts with no identifiers (telemetry, the bulk of the volume) skip even
    that: the validated payload gets the ``_source`` column appended and goes as it came.
    """

    def __init__(self, contract: Contract, hasher: TokenFor) -> None:
        self.contract = contract
        self.table = contract.table
        self.columns = columns_for(contract)
        self._hasher = hasher
        self._objects = [c.path[0] for c in self.columns if len(c.path) == 2]
        self._objects = list(dict.fromkeys(self._objects))
        self._pii = [c.name for c in self.columns if len(c.path) == 1 and c.kind == "pii"]
        self.passthrough = not self._objects and not self._pii

    def row(self, event: dict[str, Any], source: str) -> dict[str, Any]:
        """The row as a dict (identifiers flattened and hashed)."""
        row = dict(event)
        row["_source"] = source
        hasher = self._hasher
        for name in self._objects:
            found = row.pop(name, None)
            if found:
                for id_type, value in found.items():
                    row[f"{name}_{id_type}"] = hasher(id_type, value)
        for name in self._pii:
            value = row.get(name)
            if value is not None:
                row[name] = hasher(_pii_type(name), value)
        return row

    def line(self, event: dict[str, Any], payload: bytes | None, source: str, source_json: bytes) -> bytes:
        """The row as one JSONEachRow line; ``source_json`` is ``orjson.dumps(source)``.

        ``payload`` is the event as received when it can be stored verbatim, None when
        the parser rewrote a value to match its column (then the event is serialised again).
        """
        if self.passthrough and payload is not None and b"\n" not in payload:
            # The payload is a validated JSON object, so it ends with "}" (after blanks)
            # and cannot already hold "_source" (contracts forbid unknown fields). A line
            # break inside it (JSON allows one between tokens) would split the insert block
            # into lines that are not rows, so such a payload is serialised again.
            return payload.rstrip()[:-1] + b',"_source":' + source_json + b"}"
        return orjson.dumps(self.row(event, source))


def _pii_type(column: str) -> str:
    # previous_phone is a phone; every other pii column is named after its identifier type.
    return "phone" if column.endswith("phone") else column


def mappers(hasher: TokenFor) -> dict[str, RowMapper]:
    """A :class:`RowMapper` per event type."""
    return {event_type: RowMapper(c, hasher) for event_type, c in contracts().items()}
