"""Save and reload a quantized denoiser without re-running analysis, SmoothQuant or calibration.

A checkpoint folder holds ``denoiser.safetensors`` (the Brevitas state: weights, SmoothQuant multipliers and the
calibrated activation scales), ``recipe.toml``, ``precisions.json`` (user-facing layer -> precision),
``smoothing.json`` (which layers carry a SmoothQuant multiplier and its shape) and ``meta.json`` (which denoiser
it was made for). :func:`load_quantized` rebuilds the same module structure on a freshly loaded FP pipeline
(SmoothQuant wrappers, then Brevitas quant layers) and loads the state, so sampling with the same seeds gives
bit-identical latents.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from brevitas.nn.quant_scale_bias import ScaleBias
from safetensors.torch import load_file, save_file

from brevitas_ldm.compat import EqualizedModule
from brevitas_ldm.denoiser.sampling import get_denoiser
from brevitas_ldm.errors import ModelError
from brevitas_ldm.io import write_json_atomic, write_text_atomic
from brevitas_ldm.planning.plan import PLAN_FILE, Plan
from brevitas_ldm.precision import parse_precision
from brevitas_ldm.quant.quantize import quantize_denoiser, read_precisions
from brevitas_ldm.recipe import Recipe

FORMAT_VERSION = 1
STATE_FILE = "denoiser.safetensors"


def _config_of(denoiser: nn.Module) -> dict[str, Any]:
    config = getattr(denoiser, "config", {}) or {}
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}, default=str))


def _smoothing_layout(denoiser: nn.Module) -> list[dict[str, Any]]:
    return [{"name": name, "num_features": int(module.scale.num_features),
             "runtime_shape": [int(v) for v in module.scale.runtime_shape]}
            for name, module in denoiser.named_modules() if isinstance(module, EqualizedModule)]


def save_checkpoint(denoiser: nn.Module, recipe: Recipe, directory: Path, model: str | None = None,
                    smoothing_alphas: Mapping[str, float | None] | None = None, plan: Plan | None = None) -> Path:
    """Write a quantized denoiser's checkpoint into ``directory``: its state, the recipe, the layer precisions,
    the SmoothQuant layout and alphas, and the plan when there is one (``plan.json``, editable and reusable with
    ``--plan``)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in denoiser.state_dict().items()
             if isinstance(v, torch.Tensor)}
    save_file(state, str(directory / STATE_FILE))
    write_text_atomic(directory / "recipe.toml", recipe.to_toml())
    write_json_atomic(directory / "precisions.json", {n: str(p) for n, p in read_precisions(denoiser).items()})
    write_json_atomic(directory / "smoothing.json", {"layers": _smoothing_layout(denoiser),
                                                     "alphas": dict(smoothing_alphas or {})})
    if plan is not None:
        plan.save(directory / PLAN_FILE)
    write_json_atomic(directory / "meta.json", {
        "format_version": FORMAT_VERSION, "model": model, "denoiser_class": type(denoiser).__name__,
        "denoiser_config": _config_of(denoiser), "recipe": recipe.name})
    return directory


def read_checkpoint_recipe(directory: Path) -> Recipe:
    return Recipe.from_file(Path(directory) / "recipe.toml")


def _check_checkpoint_dir(directory: Path) -> dict[str, Any]:
    if not directory.is_dir() or not (directory / "meta.json").is_file() or not (directory / STATE_FILE).is_file():
        raise ModelError(f"{str(directory)!r} is not a brevitas-ldm checkpoint (needs meta.json and {STATE_FILE}): "
                         f"pass the checkpoint folder written by `brevitas-ldm quantize`")
    return json.loads((directory / "meta.json").read_text())


def _check_model_matches(meta: dict[str, Any], denoiser: nn.Module) -> None:
    if meta["denoiser_class"] != type(denoiser).__name__:
        raise ModelError(f"the checkpoint was made for a {meta['denoiser_class']} but the model's denoiser is a "
                         f"{type(denoiser).__name__}: pass the --model the checkpoint was quantized from")
    saved, current = meta.get("denoiser_config", {}), _config_of(denoiser)
    differing = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if differing:
        raise ModelError(f"the checkpoint's recipe and plan do not match this model ({meta['denoiser_class']} config "
                         f"differs in {', '.join(differing[:5])}): pass the --model the checkpoint was quantized from "
                         f"({meta.get('model') or 'see meta.json'})")


def _rebuild_smoothing(denoiser: nn.Module, layout: list[dict[str, Any]]) -> None:
    modules = dict(denoiser.named_modules())
    for entry in layout:
        name = entry["name"]
        if name not in modules:
            raise ModelError(f"the checkpoint smooths layer {name!r}, which this model does not have: pass the "
                             f"--model the checkpoint was quantized from")
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else denoiser
        scale = ScaleBias(entry["num_features"], bias=False, runtime_shape=tuple(entry["runtime_shape"]))
        setattr(parent, child, EqualizedModule(scale_module=scale, layer=modules[name]))


@torch.no_grad()
def load_quantized(pipe: Any, directory: str | Path) -> Any:
    """Turn a freshly loaded FP pipeline into the quantized one saved in ``directory`` (in place; returned)."""
    directory = Path(directory)
    meta = _check_checkpoint_dir(directory)
    denoiser = get_denoiser(pipe)
    _check_model_matches(meta, denoiser)
    recipe = read_checkpoint_recipe(directory)
    precisions = {k: parse_precision(v, f"precisions.json[{k!r}]")
                  for k, v in json.loads((directory / "precisions.json").read_text()).items()}
    smoothing = json.loads((directory / "smoothing.json").read_text())
    _rebuild_smoothing(denoiser, smoothing.get("layers", []))
    quantize_denoiser(denoiser, recipe, precisions)
    state = load_file(str(directory / STATE_FILE))
    missing, unexpected = denoiser.load_state_dict(state, strict=False)
    # Brevitas never stores some runtime buffers; anything else missing means the structure differs.
    missing = [k for k in missing if not k.endswith((".buffer", ".training"))]
    if missing or unexpected:
        raise ModelError(f"checkpoint state does not fit the rebuilt model ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected keys, e.g. {(missing or unexpected)[:2]}): re-run "
                         f"`brevitas-ldm quantize` with this brevitas-ldm version")
    denoiser.eval()
    return pipe
