"""Audience files: reading, checking and compiling them to ClickHouse SQL.

An audience is a YAML file reviewed like code::

    name: top_credit_tier
    description: The scarce top tier of neighbour credit.
    owner: growth@lastmile
    rule: {trait: credit_tier, op: "=", value: gold}

with either ``sql:`` (a predicate over the per-person view ``audience_traits``) or ``rule:``
(``all`` / ``any`` / ``not``; ``{trait, op, value}``; ``{event, at_least, days | hours, where}``;
``community`` / ``building`` / ``leader``). A rule compiles to a predicate whose values are all
query parameters, so nothing written in a rule file's values can change the SQL, and trait
names are checked against the documented columns of the view. Every error names the file and
the line (from YAML's marks) and says what was expected.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from lastmile.yaml_documents import compose_document

#: The dbt model audiences select from, and its documentation (the trait names a rule may use).
TRAITS_VIEW = "audience_traits"
TRAITS_DOC = Path(__file__).resolve().parents[2] / "dbt" / "models" / "marts" / "audiences" / "_audiences__models.yml"

#: event name -> raw table holding it (the events event_oneid resolves to a person).
EVENT_TABLES = {"order": "raw_order", "pickup": "raw_pickup", "return": "raw_return", "review": "raw_review"}

#: rule comparison -> SQL operator; ``in`` / ``not in`` take a list.
OPERATORS = {"=": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "in": "IN", "not in": "NOT IN"}

#: the place filters: rule key -> trait column.
PLACE_FILTERS = {"community": "home_community_id", "building": "home_building_id", "leader": "last_leader_id"}

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TOP_KEYS = {"name", "description", "owner", "sql", "rule", "freshness"}

#: When an audience is evaluated: after each dbt build (``warehouse``, the default), or by the
#: stream worker for the people each batch touched (``event``: a rule of event conditions only).
FRESHNESS = ("warehouse", "event")


class AudienceError(ValueError):
    """An audience file that cannot be used: where (file and line) and what was expected."""

    whole_message = True  # the command line prints it uncut


@lru_cache(maxsize=1)
def trait_columns() -> tuple[str, ...]:
    """The columns of ``audience_traits`` as its dbt YAML documents them (no warehouse needed)."""
    if not TRAITS_DOC.is_file():
        raise AudienceError(f"{TRAITS_DOC}: the documentation of {TRAITS_VIEW} is missing; rules check trait names against it "
                            "(install lastmile from its repository, with its dbt/ folder)")
    doc = yaml.safe_load(TRAITS_DOC.read_text(encoding="utf-8"))
    model = next(m for m in doc["models"] if m["name"] == TRAITS_VIEW)
    return tuple(c["name"] for c in model["columns"])


@dataclass(frozen=True)
class Compiled:
    """A predicate over ``audience_traits`` and the query parameters it names."""

    predicate: str
    parameters: dict[str, Any] = field(default_factory=dict)
    #: True when the predicate counts events: it then needs the ``as_of`` parameter.
    uses_events: bool = False
    #: Each event condition's raw table and window in seconds: which events can change the
    #: person's membership when new ones arrive or "now" moves (an incremental refresh).
    windows: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Audience:
    """One audience file, checked."""

    name: str
    description: str
    owner: str
    path: Path
    sql: str | None = None
    rule: Any = None  # the rule as plain data (dicts, lists, scalars)
    freshness: str = "warehouse"

    @property
    def version(self) -> str:
        """A hash of what decides membership: editing the definition makes a new version.

        The description and owner are left out, so rewording a description keeps everyone's
        membership history under the same version.
        """
        body = json.dumps({"sql": " ".join(self.sql.split()) if self.sql else None, "rule": self.rule},
                          sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(body.encode()).hexdigest()[:12]

    @property
    def kind(self) -> str:
        return "sql" if self.sql is not None else "rule"

    def compile(self, among: str | None = None) -> Compiled:
        """The predicate over ``audience_traits`` (rules compiled again: they were checked on load).

        ``among``: a subquery of the OneID links (``event_type``, ``event_id``, ``oneid``) of
        some people; event conditions then count only their events, so evaluating a rule for
        a few people does not join every person's links (the caller narrows
        ``audience_traits`` to the same people).
        """
        if self.sql is not None:
            return Compiled(f"({self.sql})")
        compiler = _RuleCompiler(self.path, among)
        predicate = compiler.compile(_plain_to_node(self.rule))
        return Compiled(predicate, compiler.parameters, compiler.uses_events, tuple(compiler.windows))


# --- reading -------------------------------------------------------------------------------

def _where(path: Path, node: yaml.Node | None) -> str:
    if node is None:
        return str(path)
    return f"{path}:{node.start_mark.line + 1}"


def _fail(path: Path, node: yaml.Node | None, message: str) -> AudienceError:
    return AudienceError(f"{_where(path, node)}: {message}")


def _scalar(path: Path, node: yaml.Node, what: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise _fail(path, node, f"{what} must be a single value, not a {'list' if isinstance(node, yaml.SequenceNode) else 'mapping'}")
    return yaml.safe_load(yaml.serialize(node))


def _text(path: Path, node: yaml.Node, what: str) -> str:
    value = _scalar(path, node, what)
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, node, f"{what} must be non-empty text, got {value!r}")
    return value.strip()


def _mapping(path: Path, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """A mapping node as {key: (key node, value node)}; duplicate keys are an error."""
    if not isinstance(node, yaml.MappingNode):
        raise _fail(path, node, f"{what} must be a mapping (key: value)")
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        key = _scalar(path, key_node, "a key")
        if not isinstance(key, str):
            raise _fail(path, key_node, f"keys must be text, got {key!r}")
        if key in out:
            raise _fail(path, key_node, f"{key!r} appears twice in {what}")
        out[key] = (key_node, value_node)
    return out


def load_audience(path: Path) -> Audience:
    """Read and check one audience file (the rule is compiled once to find its errors)."""
    path = Path(path)
    root = compose_document(path, AudienceError, "audience", "name, description, owner and sql or rule")
    top = _mapping(path, root, "an audience file")
    for key, (key_node, _) in top.items():
        if key not in _TOP_KEYS:
            raise _fail(path, key_node, f"unknown key {key!r}; expected one of {', '.join(sorted(_TOP_KEYS))}")
    for required in ("name", "description", "owner"):
        if required not in top:
            raise _fail(path, root, f"missing {required!r} (every audience has a name, a description and an owner)")
    name = _text(path, top["name"][1], "name")
    if not _NAME.match(name):
        raise _fail(path, top["name"][1], f"name {name!r} must be lower-case letters, digits and _ (starting with a letter)")
    description = _text(path, top["description"][1], "description")
    owner = _text(path, top["owner"][1], "owner")
    if ("sql" in top) == ("rule" in top):
        raise _fail(path, root, "expected exactly one of 'sql' (a predicate over audience_traits) or 'rule'")
    freshness = "warehouse"
    if "freshness" in top:
        freshness = _text(path, top["freshness"][1], "freshness")
        if freshness not in FRESHNESS:
            raise _fail(path, top["freshness"][1], f"unknown freshness {freshness!r}; expected one of {', '.join(FRESHNESS)}")
    if "sql" in top:
        if freshness == "event":
            raise _fail(path, top["freshness"][1], "freshness: event needs a rule of event conditions, not sql")
        sql = _text(path, top["sql"][1], "sql")
        _check_predicate(path, top["sql"][1], sql)
        return Audience(name, description, owner, path, sql=sql)
    rule_node = top["rule"][1]
    _RuleCompiler(path).compile(rule_node)  # every error, with its line, now
    if freshness == "event":
        _check_event_only(path, rule_node)
    return Audience(name, description, owner, path, rule=yaml.safe_load(yaml.serialize(rule_node)), freshness=freshness)


def _check_event_only(path: Path, node: yaml.Node) -> None:
    """An event audience is decided by a person's own events alone (``all`` / ``any`` of event
    conditions): the stream evaluates it for people the marts may not know yet, so it cannot
    read traits or places, and ``not`` would let an event make someone leave, which the
    stream's entries-on-events evaluation does not publish."""
    rule = _mapping(path, node, "a rule")
    keys = set(rule)
    if keys & {"all", "any"}:
        for item in rule[next(iter(keys))][1].value:
            _check_event_only(path, item)
        return
    if "event" not in keys:
        raise _fail(path, node, f"freshness: event allows only event conditions combined with all/any, found {', '.join(sorted(keys))}")


def _check_predicate(path: Path, node: yaml.Node, sql: str) -> None:
    """A ``sql:`` predicate must stay one expression: no ``;``, no comments, balanced parentheses.

    The predicate is reviewed code, not user input; this catches the mistakes that would
    turn it into something else than a WHERE condition (closing the parenthesis it is
    wrapped in, a second statement).
    """
    depth = 0
    quote: str | None = None
    escaped = False
    for index, char in enumerate(sql):
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
            continue
        if char in "'\"`":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise _fail(path, node, "sql closes a parenthesis it did not open; expected one boolean expression")
        elif char == ";":
            raise _fail(path, node, "sql must be one boolean expression, without ';'")
        elif char == "#" or sql.startswith(("--", "/*"), index):
            # a comment would hide the rest of the statement the predicate is placed in
            raise _fail(path, node, "sql must not contain comments (--, /* */, #); put explanations in the description")
    if quote:
        raise _fail(path, node, f"sql has an unclosed {quote} quote")
    if depth:
        raise _fail(path, node, "sql leaves a parenthesis open; expected one boolean expression")


def load_audiences(folder: Path) -> list[Audience]:
    """Every ``*.yml`` / ``*.yaml`` audience of a folder, sorted by name; names must be unique."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AudienceError(f"{folder}: no audiences folder (set LASTMILE_AUDIENCES_DIR)")
    audiences = [load_audience(p) for p in sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")])]
    seen: dict[str, Path] = {}
    for audience in audiences:
        if audience.name in seen:
            raise AudienceError(f"{audience.path}: audience name {audience.name!r} is also used by {seen[audience.name]}")
        seen[audience.name] = audience.path
    return sorted(audiences, key=lambda a: a.name)


# --- the rule language ---------------------------------------------------------------------

def _plain_to_node(value: Any) -> yaml.Node:
    """A rule kept as plain data, back as YAML nodes (for :meth:`Audience.compile`)."""
    return yaml.compose(yaml.safe_dump(value), Loader=yaml.SafeLoader)


_RULE_FORMS = "one of all, any, not, trait, event, community, building, leader"


class _RuleCompiler:
    """Compiles a rule (YAML nodes, for line numbers) to a predicate with named parameters."""

    def __init__(self, path: Path, among: str | None = None) -> None:
        self.path = path
        self.among = among
        self.parameters: dict[str, Any] = {}
        self.uses_events = False
        self.windows: list[tuple[str, int]] = []

    def _param(self, value: Any, ch_type: str) -> str:
        name = f"p{len(self.parameters)}"
        self.parameters[name] = value
        return f"{{{name}:{ch_type}}}"

    def _value(self, node: yaml.Node, what: str) -> tuple[Any, str]:
        """A comparison value and its ClickHouse type; only text, numbers and booleans."""
        value = _scalar(self.path, node, what)
        if isinstance(value, bool):
            return int(value), "UInt8"
        if isinstance(value, int):
            return value, "Int64"
        if isinstance(value, float):
            return value, "Float64"
        if isinstance(value, str):
            return value, "String"
        if isinstance(value, datetime):
            moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
            return moment.astimezone(timezone.utc).replace(tzinfo=None), "DateTime64(3, 'UTC')"
        if isinstance(value, date):
            return value, "Date"
        raise _fail(self.path, node, f"{what} must be text, a number, a date or true/false, got {value!r}")

    def compile(self, node: yaml.Node) -> str:
        rule = _mapping(self.path, node, f"a rule ({_RULE_FORMS})")
        if not rule:
            raise _fail(self.path, node, f"empty rule; expected {_RULE_FORMS}")
        keys = set(rule)
        if keys & {"all", "any", "not"}:
            if len(keys) != 1:
                raise _fail(self.path, node, f"{'/'.join(sorted(keys & {'all', 'any', 'not'}))} must stand alone in its mapping, found also {', '.join(sorted(keys - {'all', 'any', 'not'}))}")
            (key,) = keys
            _, child = rule[key]
            if key == "not":
                return f"(NOT {self.compile(child)})"
            if not isinstance(child, yaml.SequenceNode) or not child.value:
                raise _fail(self.path, child, f"{key} takes a non-empty list of rules")
            joiner = " AND " if key == "all" else " OR "
            return "(" + joiner.join(self.compile(item) for item in child.value) + ")"
        if "trait" in keys:
            return self._trait(node, rule)
        if "event" in keys:
            return self._event(node, rule)
        place = keys & set(PLACE_FILTERS)
        if place:
            if len(keys) != 1:
                raise _fail(self.path, node, f"{', '.join(sorted(keys))}: a place filter stands alone in its mapping (combine filters with all/any)")
            (key,) = place
            return self._place(key, rule[key][1])
        first_key = min(rule.values(), key=lambda kv: kv[0].start_mark.index)[0]
        raise _fail(self.path, first_key, f"unknown rule {', '.join(sorted(keys))}; expected {_RULE_FORMS}")

    def _only(self, node: yaml.Node, rule: dict[str, tuple[yaml.Node, yaml.Node]], allowed: set[str], required: set[str], form: str) -> None:
        for key, (key_node, _) in rule.items():
            if key not in allowed:
                raise _fail(self.path, key_node, f"unknown key {key!r} in a {form} rule; expected {', '.join(sorted(allowed))}")
        missing = sorted(required - set(rule))
        if missing:
            raise _fail(self.path, node, f"a {form} rule needs {', '.join(missing)}")

    def _trait(self, node: yaml.Node, rule: dict[str, tuple[yaml.Node, yaml.Node]]) -> str:
        self._only(node, rule, {"trait", "op", "value"}, {"trait", "op"}, "trait")
        trait_node = rule["trait"][1]
        trait = _text(self.path, trait_node, "trait")
        columns = trait_columns()
        if trait not in columns or trait == "oneid":
            raise _fail(self.path, trait_node, f"unknown trait {trait!r}; the traits of {TRAITS_VIEW} are {', '.join(c for c in columns if c != 'oneid')}")
        op_node = rule["op"][1]
        op = _scalar(self.path, op_node, "op")
        if op in ("is null", "is not null"):
            if "value" in rule:
                raise _fail(self.path, rule["value"][0], f"op {op!r} takes no value")
            return f"({trait} {op.upper()})"
        if op not in OPERATORS:
            raise _fail(self.path, op_node, f"unknown op {op!r}; expected one of {', '.join(repr(o) for o in [*OPERATORS, 'is null', 'is not null'])}")
        if "value" not in rule:
            raise _fail(self.path, node, f"op {op!r} needs a value")
        value_node = rule["value"][1]
        if op in ("in", "not in"):
            if not isinstance(value_node, yaml.SequenceNode) or not value_node.value:
                raise _fail(self.path, value_node, f"op {op!r} takes a non-empty list of values")
            values = [self._value(item, "each value") for item in value_node.value]
            types = {t for _, t in values}
            if len(types) > 1:
                raise _fail(self.path, value_node, "the values of one list must all be text or all numbers")
            return f"({trait} {OPERATORS[op]} {self._param([v for v, _ in values], f'Array({types.pop()})')})"
        value, ch_type = self._value(value_node, "value")
        return f"({trait} {OPERATORS[op]} {self._param(value, ch_type)})"

    def _count(self, rule: dict[str, tuple[yaml.Node, yaml.Node]], key: str, default: int | None) -> int:
        if key not in rule:
            assert default is not None
            return default
        node = rule[key][1]
        value = _scalar(self.path, node, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _fail(self.path, node, f"{key} must be a whole number of at least 1, got {value!r}")
        return value

    def _event(self, node: yaml.Node, rule: dict[str, tuple[yaml.Node, yaml.Node]]) -> str:
        self._only(node, rule, {"event", "at_least", "days", "hours", "where"}, {"event"}, "event")
        event_node = rule["event"][1]
        event = _scalar(self.path, event_node, "event")
        if event not in EVENT_TABLES:
            raise _fail(self.path, event_node, f"unknown event {event!r}; expected one of {', '.join(EVENT_TABLES)}")
        if ("days" in rule) == ("hours" in rule):
            raise _fail(self.path, node, "an event rule needs exactly one window: days or hours")
        at_least = self._count(rule, "at_least", 1)
        unit = "days" if "days" in rule else "hours"
        window = self._count(rule, unit, None)
        interval = "toIntervalDay" if unit == "days" else "toIntervalHour"
        filters = self._where(event, rule["where"][1]) if "where" in rule else ""
        self.uses_events = True
        table = EVENT_TABLES[event]
        self.windows.append((table, window * (86400 if unit == "days" else 3600)))
        window_param = self._param(window, "UInt32")  # parameters numbered in the order of the SQL
        event_param = self._param(event, "String")
        window_rows = (f"SELECT event_id FROM {table} FINAL"
                       f" WHERE occurred_at <= {{as_of:DateTime64(3, 'UTC')}}"
                       f" AND occurred_at > {{as_of:DateTime64(3, 'UTC')}} - {interval}({window_param}){filters}")
        at_least_param = self._param(at_least, "UInt32")
        if self.among is not None:
            # only these people's links: a small table to join the window's events against,
            # instead of every person's links
            return (f"(oneid IN (SELECT e.oneid FROM ({window_rows}) AS r"
                    f" INNER JOIN (SELECT event_id, oneid FROM ({self.among}) WHERE event_type = {event_param}) AS e"
                    f" ON r.event_id = e.event_id"
                    f" GROUP BY e.oneid HAVING uniqExact(e.event_id) >= {at_least_param}))")
        # Raw events of the window (FINAL, and events counted by id: a replayed event counts
        # once), each resolved to the person behind it by event_oneid; "now" is the as_of
        # parameter, the same for every audience of one evaluation.
        return (
            f"(oneid IN (SELECT e.oneid FROM event_oneid AS e"
            f" INNER JOIN ({window_rows}) AS r"
            f" ON r.event_id = e.event_id"
            f" WHERE e.event_type = {event_param}"
            f" GROUP BY e.oneid HAVING uniqExact(e.event_id) >= {at_least_param}))"
        )

    def _where(self, event: str, node: yaml.Node) -> str:
        """``where: {field: value or [values]}``: equality on the event's top-level fields.

        Field names are checked against the event's contract (plain values only: no objects or
        lists), so only a known column name reaches the SQL; values are parameters.
        """
        from lastmile.contracts import contract

        properties = contract(event).properties
        fields = sorted(k for k, v in properties.items() if v.get("type") not in ("object", "array") and k != "occurred_at")
        where = _mapping(self.path, node, "where")
        if not where:
            raise _fail(self.path, node, f"where takes at least one field; the fields of {event} are {', '.join(fields)}")
        out = ""
        for key, (key_node, value_node) in where.items():
            if key not in fields:
                raise _fail(self.path, key_node, f"unknown field {key!r} of {event}; expected one of {', '.join(fields)}")
            if isinstance(value_node, yaml.SequenceNode):
                if not value_node.value:
                    raise _fail(self.path, value_node, f"where {key} takes a value or a non-empty list of values")
                values = [self._value(item, "each value") for item in value_node.value]
                types = {t for _, t in values}
                if len(types) > 1:
                    raise _fail(self.path, value_node, "the values of one list must all be text or all numbers")
                out += f" AND `{key}` IN {self._param([v for v, _ in values], f'Array({types.pop()})')}"
            else:
                value, ch_type = self._value(value_node, f"where {key}")
                out += f" AND `{key}` = {self._param(value, ch_type)}"
        return out

    def _place(self, key: str, node: yaml.Node) -> str:
        column = PLACE_FILTERS[key]
        if isinstance(node, yaml.SequenceNode):
            if not node.value:
                raise _fail(self.path, node, f"{key} takes an id or a non-empty list of ids")
            ids = [_text(self.path, item, f"each {key} id") for item in node.value]
        else:
            ids = [_text(self.path, node, f"{key} id")]
        return f"({column} IN {self._param(ids, 'Array(String)')})"
