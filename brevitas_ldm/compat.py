"""The project's touchpoints on private torch and Brevitas internals, gathered in one place.

Everything here reaches into attributes that are not public API (torch's hook dictionaries, Brevitas' export
state); when a torch or Brevitas upgrade breaks one, this is the only file to fix.
"""

from __future__ import annotations

import copy

import brevitas.graph  # noqa: F401  (must precede brevitas.nn.equalized_layer: Brevitas 0.13 has an import cycle)
import torch.nn as nn
from brevitas.nn.equalized_layer import EqualizedModule

# Module types Brevitas' layerwise equalization treats as regions; the tuple is private in Brevitas, so fall back
# to the types it contained in 0.13.
try:
    from brevitas.graph.equalize import (
        _supported_layers as BREVITAS_EQUALIZATION_LAYERS,
    )
except ImportError:  # pragma: no cover - depends on the Brevitas version
    BREVITAS_EQUALIZATION_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                                    nn.ConvTranspose2d, nn.ConvTranspose3d, nn.MultiheadAttention)

__all__ = ["BREVITAS_EQUALIZATION_LAYERS", "EqualizedModule", "hookless_deepcopy", "reset_export_state"]


def hookless_deepcopy(module: nn.Module) -> nn.Module:
    """A deep copy without the forward hooks registered on the original (deepcopy would copy them, so a step
    tracker or call counter hooked on the float denoiser would also fire on the twins' calibration calls)."""
    duplicate = copy.deepcopy(module)
    for sub in duplicate.modules():
        for hooks in (sub._forward_hooks, sub._forward_pre_hooks, sub._forward_hooks_with_kwargs,
                      sub._forward_pre_hooks_with_kwargs, sub._forward_hooks_always_called):
            hooks.clear()
    return duplicate


def reset_export_state(module: nn.Module) -> None:
    """Detach any Brevitas export handler and leave export mode on every quant proxy of ``module``.

    Brevitas attaches a handler to each quant proxy only if none is attached and detaches it when export mode is
    switched off; an exception in between would leave stale handlers that break the next export in another format.
    """
    for sub in module.modules():
        if hasattr(sub, "export_handler") and hasattr(sub, "_export_mode"):
            sub._export_mode = False
            sub.export_handler = None
