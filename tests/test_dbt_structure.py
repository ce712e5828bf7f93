"""The dbt project keeps dbt-labs' layering (the structure guide and dbt-project-evaluator's
modeling rules), checked on the manifest of `dbt parse` and on the project's SQL:

* staging models select from sources only;
* intermediate models read staging or other intermediates, never a mart, never a source;
* marts never read a source;
* no model reaches a source through a macro unless it is a staging model (dbt records a
  `source()` inside an `is_incremental()` branch or a hook only when it runs, so the manifest
  alone would miss it);
* no hard-coded relation: SQL names tables through `source()` / `ref()` (or `this`), never by
  their warehouse name.

No warehouse is needed: `dbt parse` only reads the project.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from lastmile import transform
from lastmile.config import settings

LAYERS = ("staging", "intermediate", "marts")

#: The entry macros of each `incremental_scope` kind (macros/incremental_scope.sql): what a model
#: of that kind runs around its query, besides what its SQL and its `scope_rules` call.
SCOPE_ENTRY_MACROS = {
    "person": ("customer_scope_prepare", "scope_drop"),
    "order": ("scope_drop",),
    "series": ("scope_drop",),
    "identity_snapshot": ("event_oneid_state_begin", "event_oneid_state_end"),
    "reading_batch": ("telemetry_batch_begin", "telemetry_batch_end"),
}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The parsed project, through the runner `lastmile transform` uses."""
    cfg = dataclasses.replace(settings(), home=tmp_path_factory.mktemp("dbt-parse"))
    result, outcome = transform.invoke(cfg, ["parse"], quiet=True)
    assert result.success, result.failures
    return outcome.result


def models(manifest: Any) -> list[Any]:
    return [n for n in manifest.nodes.values() if n.resource_type.value == "model" and n.package_name == "lastmile"]


def layer(node: Any) -> str:
    """The layer of a model: the first folder under models/."""
    return node.fqn[1]


def upstream(manifest: Any, node: Any) -> Iterable[tuple[str, str]]:
    """(kind, name or layer) of every node the model depends on."""
    for uid in node.depends_on.nodes:
        if uid.startswith("source."):
            yield "source", uid.split(".", 2)[2]
        elif uid.startswith("model."):
            yield layer(manifest.nodes[uid]), uid.split(".")[-1]


def test_every_model_sits_in_a_layer_with_its_prefix(manifest: Any) -> None:
    prefixes = {"staging": "stg_", "intermediate": "int_"}
    wrong = [f"{n.name} in {layer(n)}" for n in models(manifest)
             if layer(n) not in LAYERS or (layer(n) in prefixes and not n.name.startswith(prefixes[layer(n)]))
             or (layer(n) == "marts" and n.name.startswith(("stg_", "int_")))]
    assert not wrong, wrong


def test_staging_models_select_from_sources_only(manifest: Any) -> None:
    wrong = [f"{n.name} reads {what} {name}" for n in models(manifest) if layer(n) == "staging"
             for what, name in upstream(manifest, n) if what != "source"]
    assert not wrong, wrong
    assert all(any(what == "source" for what, _ in upstream(manifest, n)) for n in models(manifest) if layer(n) == "staging")


def test_intermediate_models_read_staging_and_intermediates_only(manifest: Any) -> None:
    wrong = [f"{n.name} reads {what} {name}" for n in models(manifest) if layer(n) == "intermediate"
             for what, name in upstream(manifest, n) if what not in ("staging", "intermediate")]
    assert not wrong, wrong


def test_marts_never_read_a_source(manifest: Any) -> None:
    wrong = [f"{n.name} reads source {name}" for n in models(manifest) if layer(n) == "marts"
             for what, name in upstream(manifest, n) if what == "source"]
    assert not wrong, wrong


def _code(text: str) -> str:
    """SQL/Jinja without its comments."""
    text = re.sub(r"\{#.*?#\}", " ", text, flags=re.S)
    return re.sub(r"--[^\n]*", " ", text)


def _project_macros(manifest: Any) -> dict[str, Any]:
    return {m.name: m for m in manifest.macros.values() if m.package_name == "lastmile"}


def _reachable_macros(manifest: Any, node: Any) -> set[str]:
    """Project macros a model can run: called in its SQL, its `scope_rules`, the entry macros of
    its `incremental_scope`, and everything they call."""
    macros = _project_macros(manifest)
    called = set(re.findall(r"\b(\w+)\s*\(", _code(node.raw_code))) & set(macros)
    config = node.config
    if config.get("scope_rules"):
        called.add(config.get("scope_rules"))
    called.update(SCOPE_ENTRY_MACROS.get(config.get("incremental_scope") or "", ()))
    seen: set[str] = set()
    while called:
        name = called.pop()
        if name in seen or name not in macros:
            continue
        seen.add(name)
        called.update(uid.split(".")[-1] for uid in macros[name].depends_on.macros if uid.startswith("macro.lastmile."))
        called.update(set(re.findall(r"\b(\w+)\s*\(", _code(macros[name].macro_sql))) & set(macros))
    return seen


def test_only_staging_models_reach_a_source(manifest: Any) -> None:
    macros = _project_macros(manifest)
    reads_source = {name for name, m in macros.items() if re.search(r"\bsource\s*\(", _code(m.macro_sql))}
    assert set(SCOPE_ENTRY_MACROS["identity_snapshot"]) <= set(macros) and "incremental_scope_steps" in macros
    wrong = []
    for n in models(manifest):
        if layer(n) == "staging":
            continue
        if re.search(r"\bsource\s*\(", _code(n.raw_code)):
            wrong.append(f"{n.name} calls source()")
        wrong += [f"{n.name} reaches source() through macro {m}" for m in sorted(_reachable_macros(manifest, n) & reads_source)]
    assert not wrong, wrong


def test_no_hard_coded_relations(manifest: Any) -> None:
    """Neither a source table nor a model is named in SQL but through source()/ref(): not after
    FROM or JOIN, not as a string handed to a macro."""
    names = {s.identifier for s in manifest.sources.values() if s.package_name == "lastmile"}
    names |= {n.name for n in models(manifest)}
    calls = re.compile(r"\b(?:ref|source|optional_source|source_exists)\s*\([^)]*\)")
    alternatives = "|".join(sorted(map(re.escape, names), key=len, reverse=True))
    named = re.compile(r"\b(?:from|join)\s+(?:\w+\.)?`?(" + alternatives + r")\b|['\"`](" + alternatives + r")['\"`]",
                       re.IGNORECASE)
    texts = {f"model {n.name}": n.raw_code for n in models(manifest)}
    texts |= {f"macro {m.name}": m.macro_sql for m in _project_macros(manifest).values()}
    wrong = [f"{where} names {a or b}" for where, text in texts.items()
             for a, b in named.findall(calls.sub(" ", _code(text)))]
    assert not wrong, wrong


def test_incremental_models_use_the_one_mechanism(manifest: Any) -> None:
    """Incremental models carry no hand-written hooks: what a build rewrites comes from their
    `incremental_scope` config (macros/incremental_scope.sql), run by the project-wide hooks."""
    incremental = [n for n in models(manifest) if n.config.materialized == "incremental"]
    assert len(incremental) >= 10
    project_hooks = {"{{ incremental_scope_begin() }}", "{{ incremental_scope_end() }}"}
    wrong = [n.name for n in incremental
             if {h.sql for h in n.config.pre_hook + n.config.post_hook} != project_hooks]
    assert not wrong, wrong
    kinds = {n.config.get("incremental_scope") for n in incremental} - {None}
    assert kinds <= set(SCOPE_ENTRY_MACROS), kinds
    assert all(n.config.incremental_strategy == "delete_insert" for n in incremental)
    readme = (Path(transform.DBT_DIR) / "README.md").read_text()
    assert "incremental_scope=" in readme


def test_the_checks_see_a_violation() -> None:
    """The text rules are not vacuous: source() and a raw table named in SQL are seen, comments
    and ref() calls are not."""
    sql = ("select * from {{ source('lastmile', 'raw_order') }} join raw_pickup using (order_id) -- raw_review\n"
           "{{ lookback_filter('raw_return') }} {{ ref('raw_identify') }}")
    assert re.search(r"\bsource\s*\(", _code(sql))
    code = re.sub(r"\b(?:ref|source)\s*\([^)]*\)", " ", _code(sql))
    named = re.compile(r"\b(?:from|join)\s+(?:\w+\.)?`?(raw_\w+)\b|['\"`](raw_\w+)['\"`]", re.IGNORECASE)
    assert sorted(a or b for a, b in named.findall(code)) == ["raw_pickup", "raw_return"]
