"""Layer names a user recognises: SmoothQuant's wrapper must not change what reports and plans call a layer.

Brevitas' activation equalization wraps a smoothed layer in an ``EqualizedModule`` whose child ``layer`` is the
original, so ``named_modules()`` says ``down_blocks.0.attentions.0.proj_in.layer`` where the user, the plan and
every report say ``down_blocks.0.attentions.0.proj_in``. These helpers translate both ways.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn as nn

from brevitas_ldm.compat import EqualizedModule
from brevitas_ldm.denoiser.blocks import quantizable_layers

#: Attribute under which Brevitas' EqualizedModule keeps the wrapped layer.
EQUALIZED_CHILD = "layer"


def equalized_prefixes(model: nn.Module) -> set[str]:
    """Qualified names of the Brevitas ``EqualizedModule`` wrappers in ``model`` (the user-facing layer names)."""
    return {name for name, module in model.named_modules() if isinstance(module, EqualizedModule)}


def user_facing_name(model: nn.Module, name: str, prefixes: set[str] | None = None) -> str:
    """``down_blocks.0.attentions.0.proj_in.layer`` -> ``down_blocks.0.attentions.0.proj_in`` (identity otherwise).

    Names below the wrapped layer keep their tail (``X.layer.weight_quant`` -> ``X.weight_quant``).
    """
    prefixes = equalized_prefixes(model) if prefixes is None else prefixes
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] == EQUALIZED_CHILD and ".".join(parts[:i]) in prefixes:
            return ".".join(parts[:i] + parts[i + 1:])
    return name


def internal_name(model: nn.Module, name: str, prefixes: set[str] | None = None) -> str:
    """The ``named_modules()`` name of a user-facing layer name (adds ``.layer`` under an EqualizedModule)."""
    prefixes = equalized_prefixes(model) if prefixes is None else prefixes
    return f"{name}.{EQUALIZED_CHILD}" if name in prefixes else name


def user_facing_names(model: nn.Module) -> dict[str, str]:
    """Internal -> user-facing name of every quantizable (Linear/Conv2d, incl. Brevitas quant) layer of ``model``."""
    prefixes = equalized_prefixes(model)
    return {name: user_facing_name(model, name, prefixes) for name, _ in quantizable_layers(model)}


def to_internal_keys(model: nn.Module, mapping: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Translate the keys of a plan/precision map from user-facing to internal names (block names pass through)."""
    if mapping is None:
        return None
    prefixes = equalized_prefixes(model)
    return {internal_name(model, key, prefixes): value for key, value in mapping.items()}


def is_smoothed(model: nn.Module, name: str) -> bool:
    """Whether the user-facing layer ``name`` is already wrapped by SmoothQuant."""
    return name in equalized_prefixes(model)
