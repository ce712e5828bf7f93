"""The direction of dependencies inside the product package, checked on its source.

The rules (read from the AST of every module under ``lastmile/``, counting module-level,
function-level and ``TYPE_CHECKING`` imports alike, because each is a dependency someone
has to understand before changing either side):

* no import cycles between modules;
* only the command line (``lastmile/cli.py``) imports the engine wiring in ``pipelines/``:
  domain code must run, and be tested, without Beam, PyFlink or Faust;
* terminal output happens in command lines only. Domain functions return results and
  summaries; the command line prints them. What counts as a command line is listed below
  with the reason; everything else has no ``print(``;
* test support does not ship in the product package (``pyproject.toml`` packages
  ``lastmile*`` and ``pipelines*``): nothing under ``lastmile/`` imports a test library or
  ``tests``, and no module there is a test helper.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The command line: prints anywhere.
COMMAND_LINE = "lastmile/cli.py"

#: Modules that are also command lines through ``python -m``: they may print, but only in
#: their ``main()``, which runs under an ``if __name__ == "__main__":`` guard.
MODULE_COMMAND_LINES = {
    "lastmile/dbt_chdb.py": "`python -m lastmile.dbt_chdb install`, the Makefile's install step (writes the .pth hook)",
    "lastmile/transform.py": "`python -m lastmile.transform build|docs|load-reference`, dbt's commands for data engineers",
    "lastmile/quality.py": "`python -m lastmile.quality`, the quality gate as a CI step",
}

#: Report writers: modules whose product is a report. They write it to a file they are given
#: and return its path; like the module command lines they print only from ``main()``.
REPORT_WRITERS = {
    "lastmile/report.py": "the HTML report from the marts (`lastmile report`, `python -m lastmile.report`)",
}

#: Libraries and packages that exist for tests only.
TEST_ONLY_IMPORTS = ("pytest", "_pytest", "hypothesis", "hypothesis_jsonschema", "playwright", "typer.testing",
                     "unittest.mock", "tests")
TEST_HELPER_NAMES = ("testing.py", "conftest.py", "factories.py", "fixtures.py")


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    imports: set[str] = field(default_factory=set)  # every module name an import statement names


def modules(root: Path, package: str = "lastmile") -> dict[str, Module]:
    """Every module of ``package`` under ``root`` with the absolute names of what it imports."""
    found: dict[str, Module] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        found[name] = Module(name, path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    for module in found.values():
        here = module.name if module.path.name == "__init__.py" else module.name.rpartition(".")[0]
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import):
                module.imports.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:  # `from pkg import mod` names the submodule, `from pkg import f` the package
                    module.imports.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in found else base)
    return found


def import_graph(found: dict[str, Module]) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (a name resolves to its longest known prefix)."""
    graph: dict[str, set[str]] = {}
    for module in found.values():
        targets = set()
        for name in module.imports:
            while name and name not in found:
                name = name.rpartition(".")[0]
            if name and name != module.name:
                targets.add(name)
        graph[module.name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _relative(module: Module, root: Path) -> str:
    return module.path.relative_to(root).as_posix()


def prints_outside_command_lines(found: dict[str, Module], root: Path) -> list[str]:
    """``file:line`` of every ``print(`` call the rules above do not allow."""
    bad = []
    for module in found.values():
        rel = _relative(module, root)
        if rel == COMMAND_LINE:
            continue
        allowed: set[int] = set()
        if rel in MODULE_COMMAND_LINES or rel in REPORT_WRITERS:
            guarded = any(isinstance(n, ast.If) and "__name__" in ast.unparse(n.test) and "__main__" in ast.unparse(n.test)
                          for n in module.tree.body)
            for fn in module.tree.body:
                if guarded and isinstance(fn, ast.FunctionDef) and fn.name == "main":
                    allowed |= {id(n) for n in ast.walk(fn)}
        for node in ast.walk(module.tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
                    and id(node) not in allowed):
                bad.append(f"{rel}:{node.lineno}")
    return bad


def importers_of(found: dict[str, Module], package: str) -> set[str]:
    return {m.name for m in found.values() if any(i == package or i.startswith(package + ".") for i in m.imports)}


# -- the rules, on lastmile/ ------------------------------------------------------------------


@lru_cache(maxsize=1)
def product() -> dict[str, Module]:
    """The product package's modules, parsed once for all the rules."""
    return modules(ROOT)


def test_no_import_cycles() -> None:
    found = cycles(import_graph(product()))
    assert found == [], f"import cycles (each list is a set of modules importing each other): {found}"


def test_only_the_command_line_imports_pipelines() -> None:
    assert importers_of(product(), "pipelines") <= {"lastmile.cli"}


def test_no_print_outside_the_command_lines_and_report_writers() -> None:
    found = product()
    assert prints_outside_command_lines(found, ROOT) == []
    listed = {COMMAND_LINE, *MODULE_COMMAND_LINES, *REPORT_WRITERS}
    assert listed <= {_relative(m, ROOT) for m in found.values()}, "a listed command line no longer exists"


def test_test_support_does_not_ship_in_the_product_package() -> None:
    found = product()
    for test_only in TEST_ONLY_IMPORTS:
        assert importers_of(found, test_only) == set(), f"lastmile imports {test_only}"
    helpers = [m.path for m in found.values() if m.path.name in TEST_HELPER_NAMES]
    assert helpers == [], f"test helpers inside the product package: {helpers}"
    packaged = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(pattern.startswith("tests") for pattern in packaged), packaged


# -- the checker finds what it must (so an empty answer above means something) --------------


def test_the_checker_sees_function_level_cycles_pipelines_and_prints(tmp_path: Path) -> None:
    pkg = tmp_path / "lastmile"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("def late():\n    from lastmile.sub.a import x\n    print(x)\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lastmile.d import D\n")
    (pkg / "d.py").write_text("import lastmile.c\n\ndef run():\n    from pipelines.faust_worker import run\n")
    (pkg / "report.py").write_text("def write():\n    print('no')\n\ndef main():\n    print('ok')\n\n"
                                   "if __name__ == '__main__':\n    main()\n")
    found = modules(tmp_path)
    assert cycles(import_graph(found)) == [["lastmile.c", "lastmile.d"], ["lastmile.sub.a", "lastmile.sub.b"]]
    assert importers_of(found, "pipelines") == {"lastmile.d"}
    assert prints_outside_command_lines(found, tmp_path) == ["lastmile/report.py:2", "lastmile/sub/b.py:3"]
