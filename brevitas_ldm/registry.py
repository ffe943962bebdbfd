"""Method families as registries: calibration modes, planners, export formats and deployment runtimes, each
registered by name.

A method is an object with a ``name`` (what a recipe key or a command-line option says) and the family's methods
(:class:`~brevitas_ldm.quant.calibration_modes.base.CalibrationMode`,
:class:`~brevitas_ldm.planning.plan_methods.base.PlanMethod`,
:class:`~brevitas_ldm.export.formats.base.ExportFormat`; a deployment runtime is its transform class). The
built-in methods are the modules of one package per family, one file per method, each calling
``REGISTRY.register(...)`` when it is imported; the registry imports them the first time it is asked for a name,
so adding a built-in touches no other file. A user (or a test) registers their own method the same way, from their
own module, and every recipe, command and report then takes it.

This module sits on the core floor (recipes validate their keys against it) and imports nothing of the method
itself: the built-in packages are found by name, the way plugins are, and their modules keep their heavy imports
(torch, Brevitas) inside the methods, so validating a recipe stays torch-free.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, Protocol, TypeVar

from brevitas_ldm.errors import BrevitasLDMError, RecipeError


class Named(Protocol):
    name: str


MethodT = TypeVar("MethodT", bound=Named)


class MethodRegistry(Generic[MethodT]):
    """Name -> method for one family; ``key`` is how users spell the choice (``calibration.mode``, ``--format``)
    and is named in every refusal, with the registered names."""

    def __init__(self, family: str, key: str, package: str, error: type[BrevitasLDMError]) -> None:
        self.family = family
        self.key = key
        self.package = package
        self.error = error
        self._methods: dict[str, MethodT] = {}
        self._builtins_loaded = False

    def _load_builtins(self) -> None:
        if self._builtins_loaded:
            return
        self._builtins_loaded = True
        package = importlib.import_module(self.package)
        for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if not module.name.startswith("_") and module.name != "base":
                importlib.import_module(f"{self.package}.{module.name}")

    def register(self, method: MethodT, overwrite: bool = False) -> MethodT:
        """Make ``method`` available as ``method.name``; refused if that name is taken (``overwrite`` replaces)."""
        name = getattr(method, "name", None)
        if not isinstance(name, str) or not name or name != name.strip():
            raise self.error(f"a {self.family} needs a non-empty name without surrounding spaces, not {name!r}")
        if name in self._methods and not overwrite and self._methods[name] is not method:
            raise self.error(f"a {self.family} named {name!r} is already registered: choose another name or pass "
                             f"overwrite=True")
        self._methods[name] = method
        return method

    def unregister(self, name: str) -> None:
        """Remove a registered method (a test's own, once it is done)."""
        self._load_builtins()
        if name not in self._methods:
            raise self.error(f"no {self.family} named {name!r} is registered")
        del self._methods[name]

    def names(self) -> tuple[str, ...]:
        self._load_builtins()
        return tuple(sorted(self._methods))

    def get(self, name: str, key: str | None = None) -> MethodT:
        """The method registered as ``name``; an unknown name is a one-line error naming ``key`` and the choices."""
        self._load_builtins()
        if name not in self._methods:
            raise self.error(f"{key or self.key} = {name!r} is not allowed: choose one of {', '.join(self.names())} "
                             f"(the registered {self.family}s; brevitas_ldm.registry.{self.variable}.register adds "
                             f"one)")
        return self._methods[name]

    def __iter__(self):
        return iter(self.names())

    @property
    def variable(self) -> str:
        """The registry's name in this module (``CALIBRATION_MODES``), for messages."""
        return self.family.upper().replace(" ", "_") + "S"


CALIBRATION_MODES: MethodRegistry = MethodRegistry("calibration mode", "calibration.mode",
                                                   "brevitas_ldm.quant.calibration_modes", RecipeError)
PLAN_METHODS: MethodRegistry = MethodRegistry("plan method", "plan.method", "brevitas_ldm.planning.plan_methods",
                                              RecipeError)
EXPORT_FORMATS: MethodRegistry = MethodRegistry("export format", "--format", "brevitas_ldm.export.formats",
                                                BrevitasLDMError)
#: Deployment runtimes: transform classes (``Runtime(**options).apply(denoiser)`` -> layer name -> kernel kind).
RUNTIMES: MethodRegistry = MethodRegistry("runtime", "runtime", "brevitas_ldm.runtimes", BrevitasLDMError)
#: Latency targets (``[plan] target``): a runtime on a CPU kind the planner can spend a latency budget on, with the
#: export format it deploys and which precisions it runs as integer kernels.
LATENCY_TARGETS: MethodRegistry = MethodRegistry("latency target", "plan.target",
                                                 "brevitas_ldm.planning.latency_targets", RecipeError)
