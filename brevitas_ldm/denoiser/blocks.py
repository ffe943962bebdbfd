"""The ordered blocks of a diffusers denoiser, each with the layers Brevitas can quantize.

The global analysis quantizes blocks cumulatively *in execution order*, so the order matters: a UNet runs
``conv_in -> time_embedding -> down_blocks[i] -> mid_block -> up_blocks[i] -> conv_out`` (the time embedding is
computed before ``conv_in`` but only feeds the resnets, so placing it second keeps the data path readable), a DiT
runs ``pos_embed -> transformer_blocks[i] -> proj_out``. Blocks are found by the attribute names the diffusers
classes use; anything quantizable left over is reported as its own block so that no layer escapes the analysis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from brevitas_ldm.errors import ModelError, RecipeError

QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)

#: Top-level attributes of UNet-style denoisers (UNet2DConditionModel, UNet2DModel), in execution order.
UNET_ORDER = ("conv_in", "time_embedding", "class_embedding", "add_embedding", "encoder_hid_proj", "down_blocks",
              "mid_block", "up_blocks", "conv_out")
#: Top-level attributes of transformer denoisers (DiTTransformer2DModel, Transformer2DModel, PixArt, SD3, Flux).
TRANSFORMER_ORDER = ("pos_embed", "x_embedder", "latent_image_embedding", "adaln_single", "time_text_embed",
                     "context_embedder", "caption_projection", "transformer_blocks", "single_transformer_blocks",
                     "norm_out", "proj_out_1", "proj_out_2", "proj_out")


@dataclass(frozen=True)
class Block:
    """One unit of the global analysis: a named sub-module and its quantizable layers (qualified names)."""

    name: str
    module_names: tuple[str, ...]
    param_count: int
    kind: str

    def __len__(self) -> int:
        return len(self.module_names)


def quantizable_layers(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """(qualified name, layer) for every Linear/Conv2d under ``module``, in registration order."""
    out = []
    for name, child in module.named_modules():
        if isinstance(child, QUANTIZABLE_TYPES):
            out.append((f"{prefix}.{name}" if prefix and name else (prefix or name), child))
    return out


def _kind(attr: str) -> str:
    if attr.startswith("down"):
        return "down"
    if attr.startswith("up"):
        return "up"
    if attr.startswith("mid"):
        return "mid"
    if "transformer_blocks" in attr:
        return "transformer"
    if attr in ("conv_in", "pos_embed", "x_embedder", "latent_image_embedding"):
        return "input"
    if attr.startswith(("conv_out", "proj_out", "norm_out")):
        return "output"
    return "embedding"


def _make_block(name: str, module: nn.Module, kind: str) -> Block | None:
    layers = quantizable_layers(module, name)
    if not layers:
        return None
    params = sum(p.numel() for layer_name, layer in layers for p in layer.parameters(recurse=False))
    return Block(name=name, module_names=tuple(n for n, _ in layers), param_count=params, kind=kind)


def _order_for(model: nn.Module) -> tuple[str, ...] | None:
    children = dict(model.named_children())
    if "down_blocks" in children and "up_blocks" in children:
        return UNET_ORDER
    if "transformer_blocks" in children:
        return TRANSFORMER_ORDER
    return None


def _expand(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    """A ModuleList becomes one block per element (down_blocks.0, down_blocks.1, ...)."""
    if isinstance(module, (nn.ModuleList, nn.Sequential)):
        return [(f"{name}.{i}", child) for i, child in enumerate(module)]
    return [(name, module)]


def get_blocks(model: nn.Module, block_names: list[str] | None = None) -> list[Block]:
    """Ordered blocks of a denoiser.

    ``block_names`` overrides detection: qualified sub-module names in execution order (for models whose
    structure is not recognised). Layers outside every named block are appended as a final ``other`` block.
    """
    if block_names is not None:
        modules = dict(model.named_modules())
        candidates = []
        for name in block_names:
            if name not in modules:
                raise ModelError(f"block {name!r} is not a sub-module of {type(model).__name__}: use names from "
                                 f"model.named_modules(), e.g. {', '.join(list(dict(model.named_children()))[:6])}")
            candidates.append((name, modules[name]))
    else:
        order = _order_for(model)
        if order is None:
            children = ", ".join(f"{n} ({type(c).__name__})" for n, c in model.named_children()) or "none"
            raise ModelError(
                f"{type(model).__name__} has no recognisable blocks (expected down_blocks/mid_block/up_blocks or "
                f"transformer_blocks); its top-level children are: {children}. Pass the blocks explicitly in "
                f"execution order, e.g. get_blocks(model, block_names=[...]) or --blocks name1,name2,...")
        children = dict(model.named_children())
        candidates = []
        for attr in order:
            if attr in children and children[attr] is not None:
                candidates.extend(_expand(attr, children[attr]))
        listed = set(order)
        for attr, child in model.named_children():
            if attr not in listed:
                candidates.extend(_expand(attr, child))
    blocks: list[Block] = []
    covered: set[str] = set()
    for name, module in candidates:
        if any(name == c or name.startswith(c + ".") for c in covered):
            continue
        block = _make_block(name, module, _kind(name.split(".")[0]))
        if block is not None:
            blocks.append(block)
            covered.add(name)
    seen = {m for b in blocks for m in b.module_names}
    leftovers = [n for n, _ in quantizable_layers(model) if n not in seen]
    if leftovers:
        params = sum(p.numel() for n, m in quantizable_layers(model) if n in leftovers
                     for p in m.parameters(recurse=False))
        blocks.append(Block("other", tuple(leftovers), params, "other"))
    if not blocks:
        raise ModelError(f"{type(model).__name__} has no Linear or Conv2d layers to quantize")
    return blocks


def layer_to_block(blocks: list[Block]) -> dict[str, str]:
    """Qualified layer name -> the name of the block that holds it."""
    return {module: block.name for block in blocks for module in block.module_names}


def expand_to_layers(denoiser: nn.Module, entries: Mapping[str, Any], layer_names: Mapping[str, str] | None = None,
                     blocks: Sequence[Block] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a plan-style mapping (block or layer name -> value) into (block entries expanded to their layers,
    layer entries), both keyed by layer name; callers decide which of the two wins.

    ``layer_names`` maps ``named_modules()`` names to the names the caller uses (user-facing names under
    SmoothQuant, :func:`brevitas_ldm.denoiser.names.user_facing_names`); identity by default. A key that names
    neither a block nor a layer is an error that lists the block names.
    """
    to_caller = dict(layer_names) if layer_names is not None else {n: n for n, _ in quantizable_layers(denoiser)}
    known_layers = set(to_caller.values())
    from_blocks: dict[str, Any] = {}
    from_layers: dict[str, Any] = {}
    members: dict[str, tuple[str, ...]] | None = None
    for key, value in entries.items():
        if key in known_layers:
            from_layers[key] = value
            continue
        if members is None:
            members = {b.name: tuple(to_caller.get(m, m) for m in b.module_names)
                       for b in (blocks or get_blocks(denoiser))}
        if key not in members:
            raise RecipeError(f"plan entry {key!r} names no block or quantizable layer of "
                              f"{type(denoiser).__name__}: use block names ({', '.join(list(members)[:5])}, ...) "
                              f"or layer names")
        from_blocks.update({name: value for name in members[key]})
    return from_blocks, from_layers
