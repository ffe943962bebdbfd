"""Register the ``"brevitas"`` backend with diffusers on ``import brevitas_ldm``, without importing torch then.

diffusers reads its quantizer tables (``diffusers.quantizers.auto``) when ``from_pretrained`` meets a
``quantization_config``; the backend must be in them by then. Importing diffusers inside ``import brevitas_ldm``
would cost every command (``brevitas-ldm recipes`` too) the torch start-up, so :func:`install` registers at once
only when diffusers' quantizers are already imported, and otherwise puts a finder on ``sys.meta_path`` that
registers right after ``diffusers.quantizers.auto`` has been executed, whenever that happens.
"""

from __future__ import annotations

import importlib.abc
import sys

#: The diffusers module whose tables the backend goes into.
TARGET = "diffusers.quantizers.auto"


class _RegisteringLoader(importlib.abc.Loader):
    """Wraps diffusers' loader: executes the module, then registers the backend into it."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        _register()


class DiffusersRegistrationFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself; for :data:`TARGET` it hands back the real spec with a registering loader."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


def _register() -> None:
    module = sys.modules.get("brevitas_ldm.checkpoint.diffusers_quantizer")
    if module is not None and not hasattr(module, "register"):
        return      # it is being imported (and imported diffusers' quantizers): it registers itself at its end
    from brevitas_ldm.checkpoint.diffusers_quantizer import register

    register()


def install() -> None:
    """Register now if diffusers' quantizers are loaded, else as soon as they are (idempotent)."""
    if TARGET in sys.modules:
        _register()
    elif not any(isinstance(finder, DiffusersRegistrationFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, DiffusersRegistrationFinder())
