"""Save and reload a quantized denoiser without re-running analysis, SmoothQuant or calibration.

A checkpoint folder holds ``denoiser.safetensors`` (the Brevitas state: weights, SmoothQuant multipliers and the
calibrated activation scales), ``recipe.toml``, ``precisions.json`` (user-facing layer -> precision),
``smoothing.json`` (which layers carry a SmoothQuant multiplier and its shape), ``plan.json`` when a plan chose
the precisions, and ``meta.json``: the format version, which denoiser it was made for, the base pipeline it
references (the embedded model's name or a pipeline directory; the unchanged components are not copied) and the
SHA-256 of every file the reload reads, so a tampered or truncated file is named instead of half-loaded.
:func:`load_quantized` rebuilds the same module structure on a freshly loaded FP pipeline (SmoothQuant wrappers,
then Brevitas quant layers) and loads the state, so sampling with the same seeds gives bit-identical latents.
"""

from __future__ import annotations

import importlib.metadata
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
from brevitas_ldm.io import check_safetensors_file, file_sha256, give_user_mode, write_json_atomic, write_text_atomic
from brevitas_ldm.planning.plan import PLAN_FILE, Plan
from brevitas_ldm.precision import parse_precision
from brevitas_ldm.quant.quantize import initialise_weight_scales, quantize_denoiser, read_precisions
from brevitas_ldm.recipe import Recipe

#: Version 2 added the file hashes and the base-pipeline reference; other versions are refused on load.
FORMAT_VERSION = 2
FORMAT_NAME = "brevitas-ldm quantized denoiser"
STATE_FILE = "denoiser.safetensors"
META_FILE = "meta.json"
#: The files a reload reads, each hashed into meta.json (plan.json is informative and stays editable).
HASHED_FILES = (STATE_FILE, "recipe.toml", "precisions.json", "smoothing.json")


def _package_version() -> str:
    try:
        return importlib.metadata.version("brevitas-ldm")
    except importlib.metadata.PackageNotFoundError:     # running from a source tree that was never installed
        return "unknown"


def _config_of(denoiser: nn.Module) -> dict[str, Any]:
    config = getattr(denoiser, "config", {}) or {}
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}, default=str))


def _smoothing_layout(denoiser: nn.Module) -> list[dict[str, Any]]:
    return [{"name": name, "num_features": int(module.scale.num_features),
             "runtime_shape": [int(v) for v in module.scale.runtime_shape]}
            for name, module in denoiser.named_modules() if isinstance(module, EqualizedModule)]


def save_checkpoint(denoiser: nn.Module, recipe: Recipe, directory: Path, model: str | None = None,
                    smoothing_alphas: Mapping[str, float | None] | None = None, plan: Plan | None = None,
                    denoiser_component: str = "unet", lora: Mapping[str, Any] | None = None) -> Path:
    """Write a quantized denoiser's checkpoint into ``directory``: its state, the recipe, the layer precisions,
    the SmoothQuant layout and alphas, and the plan when there is one (``plan.json``, editable and reusable with
    ``--plan``).

    ``model`` is the base pipeline the folder references (an embedded model name or a pipeline directory);
    with it, :func:`brevitas_ldm.from_pretrained` reloads the folder in one call. ``lora`` (path and SHA-256 of a
    LoRA fused into the base before quantization) is recorded so every later command fuses the same file."""
    directory.mkdir(parents=True, exist_ok=True)
    initialise_weight_scales(denoiser)      # an uninitialised MSE weight scale is left out of a state dict
    state = {k: v.detach().cpu().contiguous().clone() for k, v in denoiser.state_dict().items()
             if isinstance(v, torch.Tensor)}
    save_file(state, str(directory / STATE_FILE))
    give_user_mode(directory / STATE_FILE)
    write_text_atomic(directory / "recipe.toml", recipe.to_toml())
    write_json_atomic(directory / "precisions.json", {n: str(p) for n, p in read_precisions(denoiser).items()})
    write_json_atomic(directory / "smoothing.json", {"layers": _smoothing_layout(denoiser),
                                                     "alphas": dict(smoothing_alphas or {})})
    if plan is not None:
        plan.save(directory / PLAN_FILE)
    write_json_atomic(directory / META_FILE, {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "brevitas_ldm_version": _package_version(),
        "model": model, "denoiser_component": denoiser_component, "denoiser_class": type(denoiser).__name__,
        "denoiser_config": _config_of(denoiser), "recipe": recipe.name, "lora": dict(lora) if lora else None,
        "dtype": str(next(denoiser.parameters()).dtype).removeprefix("torch."),
        "files": {name: file_sha256(directory / name) for name in HASHED_FILES}})
    return directory


def read_checkpoint_recipe(directory: Path) -> Recipe:
    return Recipe.from_file(Path(directory) / "recipe.toml")


def read_checkpoint_meta(directory: Path) -> dict[str, Any]:
    """``meta.json`` of a checkpoint folder, checked: this format version, every hashed file present and unchanged
    (one :class:`ModelError` naming the file otherwise)."""
    directory = Path(directory)
    if not directory.is_dir() or not (directory / META_FILE).is_file():
        raise ModelError(f"{str(directory)!r} is not a brevitas-ldm checkpoint (no {META_FILE}): pass the "
                         f"checkpoint folder written by `brevitas-ldm quantize`")
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format", FORMAT_NAME) != FORMAT_NAME:
        raise ModelError(f"{directory / META_FILE} is not a brevitas-ldm checkpoint description (unreadable or "
                         f"changed): re-run `brevitas-ldm quantize` to write the folder again")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(f"the checkpoint at {directory} has format version {version} (brevitas-ldm "
                         f"{meta.get('brevitas_ldm_version', '0.1 or older')}); this brevitas-ldm reads version "
                         f"{FORMAT_VERSION}: re-run `brevitas-ldm quantize` with this version")
    hashes = meta.get("files")
    if not isinstance(hashes, dict) or set(hashes) != set(HASHED_FILES):
        raise ModelError(f"{directory / META_FILE} lists the wrong files: re-run `brevitas-ldm quantize`")
    for name in HASHED_FILES:
        path = directory / name
        if not path.is_file():
            raise ModelError(f"checkpoint file {path} is missing: restore it or re-run `brevitas-ldm quantize`")
        if file_sha256(path) != hashes[name]:
            raise ModelError(f"checkpoint file {path} was changed or truncated after it was written (its SHA-256 "
                             f"differs from meta.json): restore it or re-run `brevitas-ldm quantize`")
    # A file whose hash was updated too is still read by its header first: nothing is allocated for a state that
    # claims more bytes than the file holds, and a non-safetensors file is named.
    check_safetensors_file(directory / STATE_FILE, "restore it or re-run `brevitas-ldm quantize`", ModelError)
    return meta



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
        layer = modules[name]
        features = getattr(layer, "in_features", getattr(layer, "in_channels", None))
        shape = entry.get("runtime_shape")
        if entry.get("num_features") != features or not isinstance(shape, list) or len(shape) > 5 \
                or any(v not in (-1, 1, features) for v in shape):
            raise ModelError(f"smoothing.json gives layer {name!r} a SmoothQuant scale of {entry.get('num_features')!r} "
                             f"features, shaped {shape!r}, where the layer takes {features}: restore the checkpoint "
                             f"or re-run `brevitas-ldm quantize`")
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else denoiser
        scale = ScaleBias(entry["num_features"], bias=False, runtime_shape=tuple(entry["runtime_shape"]))
        setattr(parent, child, EqualizedModule(scale_module=scale, layer=modules[name]))


@torch.no_grad()
def load_quantized(pipe: Any, directory: str | Path, meta: dict[str, Any] | None = None) -> Any:
    """Turn a freshly loaded FP pipeline into the quantized one saved in ``directory`` (in place; returned).

    ``meta``: the folder's description as :func:`read_checkpoint_meta` returned it, when the caller has already
    checked the folder (so its files are not hashed twice); read and checked here otherwise."""
    directory = Path(directory)
    meta = meta if meta is not None else read_checkpoint_meta(directory)
    denoiser = get_denoiser(pipe)
    _check_model_matches(meta, denoiser)
    recipe = read_checkpoint_recipe(directory)
    precisions = {k: parse_precision(v, f"precisions.json[{k!r}]")
                  for k, v in json.loads((directory / "precisions.json").read_text()).items()}
    smoothing = json.loads((directory / "smoothing.json").read_text())
    _rebuild_smoothing(denoiser, smoothing.get("layers", []))
    quantize_denoiser(denoiser, recipe, precisions)
    state = load_file(str(directory / STATE_FILE))
    expected = denoiser.state_dict()
    reshaped = [k for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if reshaped:
        raise ModelError(f"checkpoint file {directory / STATE_FILE} holds {reshaped[0]} with shape "
                         f"{tuple(state[reshaped[0]].shape)} where the model has {tuple(expected[reshaped[0]].shape)} "
                         f"({len(reshaped)} tensor(s) differ): restore the file or re-run `brevitas-ldm quantize`")
    missing, unexpected = denoiser.load_state_dict(state, strict=False)
    # Brevitas never stores some runtime buffers; anything else missing means the structure differs.
    missing = [k for k in missing if not k.endswith((".buffer", ".training"))]
    if missing or unexpected:
        raise ModelError(f"checkpoint state does not fit the rebuilt model ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected keys, e.g. {(missing or unexpected)[:2]}): re-run "
                         f"`brevitas-ldm quantize` with this brevitas-ldm version")
    denoiser.eval()
    return pipe


def checkpoint_lora(meta: Mapping[str, Any], given: str | Path | None) -> Path | None:
    """The LoRA file a command must fuse into the base pipeline before loading this checkpoint: the one the
    checkpoint was quantized with (``meta["lora"]``), at ``given`` (``--lora``) or where it was; refused in one line
    when it is missing, a different file, or given for a checkpoint quantized without one."""
    recorded = meta.get("lora")
    if not recorded:
        if given is not None:
            raise ModelError(f"the checkpoint was quantized without a LoRA: drop --lora {given}, or quantize again "
                             f"with it")
        return None
    path = Path(given if given is not None else recorded["path"]).expanduser()
    if not path.is_file():
        raise ModelError(f"the checkpoint was quantized with the LoRA {recorded['path']}, which is not there: pass "
                         f"--lora with that file")
    if file_sha256(path) != recorded["sha256"]:
        raise ModelError(f"--lora {path} is not the LoRA the checkpoint was quantized with ({recorded['path']}; its "
                         f"SHA-256 differs): pass that file")
    return path
