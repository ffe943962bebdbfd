"""The package's floors point one way (docs/design.md): no module imports a higher floor, and no import circles.

Every ``import`` is counted, at module level or inside a function alike: a lazy import that only exists to dodge a
circle is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import brevitas_ldm

PACKAGE = Path(brevitas_ldm.__file__).parent
#: The floor of every group: a package (``brevitas_ldm.quant``: all its modules) or a top-level module. A module may
#: import its own group and groups on lower floors only: nothing upward, and nothing sideways on its own floor. A
#: module no entry covers fails the suite, so a new one must be placed (docs/design.md says where).
FLOORS = {
    # core: the method's vocabulary
    "brevitas_ldm.errors": 0,
    "brevitas_ldm.precision": 1, "brevitas_ldm.limits": 1, "brevitas_ldm.sqnr": 1, "brevitas_ldm.compat": 1,
    "brevitas_ldm.zoo": 1,
    "brevitas_ldm.registry": 1,     # the method families by name; their built-ins are found as plugins, not imported
    "brevitas_ldm.process": 1,      # infrastructure, not the method: ranks, threads, signals, the job's progress
    "brevitas_ldm.recipe": 2, "brevitas_ldm.recipes": 2, "brevitas_ldm.io": 2,
    # the method, bottom up
    "brevitas_ldm.denoiser": 3,
    "brevitas_ldm.quant": 4,
    "brevitas_ldm.analysis": 5,
    "brevitas_ldm.planning": 6,
    "brevitas_ldm.checkpoint": 7, "brevitas_ldm.evaluation": 7, "brevitas_ldm.export": 7, "brevitas_ldm.runtimes": 7,
    "brevitas_ldm.cost": 8,
    "brevitas_ldm.job": 9,
    "brevitas_ldm.workflow": 10,
    "brevitas_ldm.training": 11,
    # the edges: report, command line, public API
    "brevitas_ldm.report": 12,
    "brevitas_ldm.commands": 13,
    "brevitas_ldm.cli": 14, "brevitas_ldm": 14,
    "brevitas_ldm.__main__": 15,
}


def group(module: str) -> str | None:
    """The FLOORS entry that covers ``module``: itself, or the package it lies in; None when none does."""
    parts = module.split(".")
    for length in range(len(parts), 0, -1):
        candidate = ".".join(parts[:length])
        if candidate in FLOORS and (length == len(parts) or candidate != "brevitas_ldm"):
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(module: str) -> int:
    return FLOORS[group(module)]


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes up a floor or sideways to another group of the same floor."""
    found = []
    for module, targets in graph.items():
        for target in targets:
            if group(target) is None or group(module) is None or group(target) == group(module):
                continue
            if floor(target) > floor(module):
                found.append(f"{module} (floor {floor(module)}) imports {target} (floor {floor(target)}): upward")
            elif floor(target) == floor(module):
                found.append(f"{module} imports {target}: sideways on floor {floor(module)}")
    return sorted(found)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``path`` imports (``from a.b import c`` counts as ``a.b.c`` when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "brevitas_ldm":
                continue
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in modules else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "brevitas_ldm"}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def test_every_module_is_placed_on_a_floor():
    unplaced = sorted(name for name in project_modules() if group(name) is None)
    assert not unplaced, f"modules no FLOORS entry covers: {unplaced}"
    assert len(project_modules()) > 40


def test_no_module_imports_upward_or_sideways():
    found = violations(import_graph())
    assert not found, "\n".join(found)


def test_no_import_circles():
    graph = import_graph()
    state: dict[str, int] = {}
    circles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                circles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # the package root lazily re-exports the API; its TYPE_CHECKING block imports downward only
    assert not circles, "\n".join(circles)


def _fake_module(tmp_path: Path, name: str, source: str) -> dict[str, set[str]]:
    path = tmp_path / (name.replace(".", "/") + ".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    modules = {**project_modules(), name: path}
    return {name: imports_of(path, modules) - {name}}


def test_the_checker_sees_upward_sideways_and_unplaced_modules(tmp_path):
    """The rules can fail: a denoiser module importing the workflow (upward), an export module importing the
    evaluation package on the same floor (sideways), and a new top-level module no entry covers."""
    upward = _fake_module(tmp_path, "brevitas_ldm.denoiser.bad",
                          "from brevitas_ldm.workflow import quantize_pipeline\n")
    assert violations(upward) == ["brevitas_ldm.denoiser.bad (floor 3) imports brevitas_ldm.workflow (floor 10): "
                                  "upward"]
    sideways = _fake_module(tmp_path, "brevitas_ldm.export.bad", "from brevitas_ldm.evaluation.prompts import "
                                                                 "evaluation_set\n")
    assert violations(sideways) == ["brevitas_ldm.export.bad imports brevitas_ldm.evaluation.prompts: sideways on "
                                    "floor 7"]
    assert group("brevitas_ldm.newthing") is None and group("brevitas_ldm.quant.newthing") == "brevitas_ldm.quant"
    inside = _fake_module(tmp_path, "brevitas_ldm.checkpoint.bad", "from brevitas_ldm.checkpoint.folder import "
                                                                   "load_quantized\n")
    assert violations(inside) == []        # a package's modules may import each other


def test_public_api_is_one_list():
    """``__all__``, the lazy loader and the TYPE_CHECKING imports IDEs read name the same objects."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    checking = next(node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") ==
                    "TYPE_CHECKING")
    seen = {alias.name: node.module for node in checking.body if isinstance(node, ast.ImportFrom)
            for alias in node.names}
    assert seen == brevitas_ldm._EXPORTS
    assert set(brevitas_ldm.__all__) == set(brevitas_ldm._EXPORTS) | {"__version__"}
    for name, module in brevitas_ldm._EXPORTS.items():
        value = getattr(brevitas_ldm, name)
        assert value.__module__ == module or module == "brevitas_ldm.export", name
