"""The package's floors point one way (docs/design.md): no module imports a higher floor, and no import circles.

Every ``import`` is counted, at module level or inside a function alike: a lazy import that only exists to dodge a
circle is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import brevitas_ldm

PACKAGE = Path(brevitas_ldm.__file__).parent
#: Floor of each module, by the longest matching prefix (lower floors may not import higher ones).
FLOORS = {
    "brevitas_ldm.errors": 0, "brevitas_ldm.precision": 0, "brevitas_ldm.recipe": 0, "brevitas_ldm.sqnr": 0,
    "brevitas_ldm.io": 0, "brevitas_ldm.interruption": 0, "brevitas_ldm.limits": 0, "brevitas_ldm.compat": 0, "brevitas_ldm.threads": 0, "brevitas_ldm.ranks": 0, "brevitas_ldm.zoo": 0, "brevitas_ldm.recipes": 0,
    "brevitas_ldm.denoiser": 1,
    "brevitas_ldm.quant": 2,
    "brevitas_ldm.analysis": 3,
    "brevitas_ldm.planning": 4,
    "brevitas_ldm.workflow": 5, "brevitas_ldm.checkpoint": 5, "brevitas_ldm.pretrained": 5, "brevitas_ldm.diffusers_quantizer": 5, "brevitas_ldm.cost": 5, "brevitas_ldm.evaluation": 5, "brevitas_ldm.export": 5, "brevitas_ldm.training": 5,
    "brevitas_ldm.runtimes": 5,
    "brevitas_ldm.report": 6, "brevitas_ldm.cli": 6, "brevitas_ldm.commands": 6, "brevitas_ldm.__main__": 6,
    "brevitas_ldm": 6,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(module: str) -> int:
    best = max((prefix for prefix in FLOORS if module == prefix or module.startswith(prefix + ".")), key=len)
    return FLOORS[best]


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


def test_every_module_has_a_floor():
    assert all(floor(name) >= 0 for name in project_modules())
    assert len(project_modules()) > 40


def test_no_module_imports_a_higher_floor():
    upward = sorted(f"{module} (floor {floor(module)}) imports {target} (floor {floor(target)})"
                    for module, targets in import_graph().items() for target in targets
                    if floor(target) > floor(module))
    assert not upward, "\n".join(upward)


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


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule can fail: a floor-1 module importing the workflow (floor 5) is reported."""
    fake = tmp_path / "brevitas_ldm" / "denoiser" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from brevitas_ldm.workflow import quantize_pipeline\n")
    targets = imports_of(fake, {**project_modules(), "brevitas_ldm.denoiser.bad": fake})
    assert targets == {"brevitas_ldm.workflow"} and floor("brevitas_ldm.denoiser.bad") < floor("brevitas_ldm.workflow")


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
