"""Save and reload a quantized pipeline as an ordinary diffusers folder, its denoiser stored as integer codes.

A quantized pipeline folder is what ``save_pretrained`` writes - ``model_index.json`` and one subfolder per
component - so ``DiffusionPipeline.from_pretrained(folder)`` loads it (after ``import brevitas_ldm``, which
registers the ``"brevitas"`` backend with diffusers, :mod:`brevitas_ldm.checkpoint.diffusers_quantizer`). The components
the quantization did not change are hard-linked from the base pipeline's files (copied where links cannot be made),
never re-saved. The denoiser's subfolder holds:

* ``config.json``: the denoiser's own config plus a ``quantization_config`` with ``quant_method = "brevitas"``:
  the format version, the recipe, every layer's precision, the SmoothQuant layout (which layers carry a
  multiplier, its shape) and alphas, the plan, the storage table of the codes and the dtype - what rebuilds the
  Brevitas model;
* ``diffusion_pytorch_model.safetensors``: the integer state (:func:`~brevitas_ldm.quant.integer_codes.
  integer_state_dict`): each quantized weight as codes (int8, two 4-bit codes per byte, ...) with its scales and
  zero points; float tensors only for what stays float (biases, norms, float layers, activation scales,
  SmoothQuant multipliers). Its header carries a SHA-256 of the tensors, so a changed file is named, not
  half-loaded.

``meta.json`` beside ``model_index.json`` says which base pipeline the folder was quantized from (evaluation
compares against it), the LoRA fused into it, and the SHA-256 of the denoiser's two files. With
``self_contained=False`` the folder holds only the denoiser and references the base instead of linking its
components (for very large pipelines on another file system): :func:`brevitas_ldm.from_pretrained` then loads the
base and swaps the denoiser in.

:func:`rebuild_quantized` turns a float denoiser (freshly loaded, or whose weights diffusers just loaded from the
codes) into the saved quantized one: SmoothQuant wrappers, Brevitas quant layers from the recipe and precisions,
weights pinned to their codes and scales, activation scales loaded. Sampling with the same seeds gives
bit-identical latents.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from brevitas.nn.quant_scale_bias import ScaleBias
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from brevitas_ldm.compat import EqualizedModule
from brevitas_ldm.denoiser.names import user_facing_names
from brevitas_ldm.denoiser.sampling import (
    denoiser_component as pipeline_denoiser_component,
)
from brevitas_ldm.denoiser.sampling import get_denoiser
from brevitas_ldm.errors import BrevitasLDMError, ModelError
from brevitas_ldm.io import (
    check_known_keys,
    check_safetensors_file,
    file_sha256,
    give_user_mode,
    write_json_atomic,
    write_safetensors_atomic,
    write_text_atomic,
)
from brevitas_ldm.planning.plan import PLAN_FILE, Plan
from brevitas_ldm.precision import parse_precision
from brevitas_ldm.quant.integer_codes import (
    integer_state_dict,
    is_code_key,
    layer_codes,
    restore_weight,
)
from brevitas_ldm.quant.quantize import (
    initialise_weight_scales,
    quantize_denoiser,
    read_precisions,
)
from brevitas_ldm.recipe import Recipe

#: Version 3 stores the denoiser as integer codes in a diffusers folder; other versions are refused on load.
FORMAT_VERSION = 3
FORMAT_NAME = "brevitas-ldm quantized pipeline"
QUANT_METHOD = "brevitas"
META_FILE = "meta.json"
RECIPE_FILE = "recipe.toml"
CONFIG_FILE = "config.json"
STATE_FILE = "diffusion_pytorch_model.safetensors"
#: safetensors header key of the SHA-256 over the stored tensors (names, dtypes, shapes, bytes).
HASH_METADATA_KEY = "brevitas_ldm.sha256"


def _package_version() -> str:
    try:
        return importlib.metadata.version("brevitas-ldm")
    except importlib.metadata.PackageNotFoundError:     # running from a source tree that was never installed
        return "unknown"


def _config_of(denoiser: nn.Module) -> dict[str, Any]:
    config = getattr(denoiser, "config", {}) or {}
    return json.loads(json.dumps({k: v for k, v in dict(config).items()
                                  if not k.startswith("_") and k != "quantization_config"}, default=str))


def _smoothing_layout(denoiser: nn.Module) -> list[dict[str, Any]]:
    return [{"name": name, "num_features": int(module.scale.num_features),
             "runtime_shape": [int(v) for v in module.scale.runtime_shape]}
            for name, module in denoiser.named_modules() if isinstance(module, EqualizedModule)]


def hashed_files(component: str) -> tuple[str, str]:
    """The files of a folder a reload reads, each hashed into meta.json."""
    return (f"{component}/{CONFIG_FILE}", f"{component}/{STATE_FILE}")


def tensors_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over tensors' names, dtypes, shapes and bytes (sorted by name): the same value for the same
    tensors however a writer orders them in a file."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def quantization_config(denoiser: nn.Module, recipe: Recipe, codes: dict[str, dict],
                        smoothing_alphas: Mapping[str, float | None] | None = None,
                        plan: Plan | None = None) -> dict[str, Any]:
    """The ``quantization_config`` a quantized denoiser's ``config.json`` carries: what rebuilds it."""
    return {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION,
            "brevitas_ldm_version": _package_version(), "recipe": recipe.to_dict(),
            "precisions": {n: str(p) for n, p in read_precisions(denoiser).items()},
            "smoothing": {"layers": _smoothing_layout(denoiser), "alphas": dict(smoothing_alphas or {})},
            "plan": plan.to_dict() if plan is not None else None, "codes": codes,
            "dtype": str(next(denoiser.parameters()).dtype).removeprefix("torch.")}


def save_denoiser(denoiser: nn.Module, directory: Path, config: dict[str, Any] | None = None,
                  **config_args: Any) -> dict[str, Any]:
    """Write ``directory/config.json`` (with the ``quantization_config``) and the integer safetensors; returns
    the ``quantization_config`` written. ``config``: one to write as it is (re-saving a reloaded model)."""
    directory.mkdir(parents=True, exist_ok=True)
    initialise_weight_scales(denoiser)      # an MSE weight scale is set by its first forward
    state, codes = integer_state_dict(denoiser)
    config = dict(config) if config is not None else quantization_config(denoiser, codes=codes, **config_args)
    if config.get("codes") != codes:
        raise ModelError("the model's quantized layers differ from its quantization_config (re-quantized after "
                         "loading?): save it with QuantizationResult.save")
    write_safetensors_atomic(directory / STATE_FILE, state, {"format": "pt", HASH_METADATA_KEY: tensors_sha256(state)})
    own = json.loads(denoiser.to_json_string()) if hasattr(denoiser, "to_json_string") else {}
    own = {k: v for k, v in own.items() if k not in ("quantization_config", "_name_or_path")}
    write_json_atomic(directory / CONFIG_FILE, {**own, "quantization_config": config})
    return config


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (no bytes copied), or a copy where the file system refuses."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)      # a link from an earlier save: replaced, never written through
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
        give_user_mode(target)


def _link_components(base: Path, directory: Path, skip: str) -> None:
    """``model_index.json`` and every component folder of ``base`` except ``skip``, linked into ``directory``."""
    for item in sorted(base.iterdir()):
        if item.name == skip or item.name.startswith("."):
            continue
        if item.is_dir():
            for path in sorted(item.rglob("*")):
                if path.is_file():
                    _link_or_copy(path, directory / path.relative_to(base))
        elif item.name == "model_index.json":
            _link_or_copy(item, directory / item.name)


def _save_components(pipe: Any, directory: Path, skip: str) -> None:
    """For a pipeline built in memory (no base folder to link): ``model_index.json`` and each other component
    saved by its own ``save_pretrained``."""
    pipe.save_config(str(directory))
    for name, component in pipe.components.items():
        if name != skip and component is not None and hasattr(component, "save_pretrained"):
            component.save_pretrained(str(directory / name))


def save_checkpoint(denoiser: nn.Module, recipe: Recipe, directory: Path, model: str | None = None,
                    smoothing_alphas: Mapping[str, float | None] | None = None, plan: Plan | None = None,
                    denoiser_component: str = "unet", lora: Mapping[str, Any] | None = None,
                    pipe: Any = None, self_contained: bool = True) -> Path:
    """Write a quantized pipeline folder into ``directory`` (see the module docstring).

    ``model``: the base pipeline (an embedded model name or a pipeline directory) whose other components are
    linked in and which evaluation compares against; ``pipe``: the pipeline, used when there is no base folder.
    ``self_contained=False`` writes the denoiser only and references ``model``. ``plan`` is also written as
    ``plan.json`` (editable, reusable with ``--plan``). ``lora`` (path and SHA-256 of a LoRA fused into the base
    before quantization) is recorded so commands that load the base fuse the same file."""
    from brevitas_ldm.denoiser.loading import resolve_model_path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_denoiser(denoiser, directory / denoiser_component, recipe=recipe, smoothing_alphas=smoothing_alphas,
                  plan=plan)
    if self_contained:
        if model is not None:
            _link_components(resolve_model_path(model), directory, denoiser_component)
        elif pipe is not None:
            _save_components(pipe, directory, denoiser_component)
        else:
            raise ModelError("a self-contained folder needs the base pipeline (model=) or the pipeline (pipe=)")
    elif model is None:
        raise ModelError("a folder that references its base needs model= (the base pipeline's name or folder)")
    if plan is not None:
        plan.save(directory / PLAN_FILE)
    write_text_atomic(directory / RECIPE_FILE, recipe.to_toml())    # to read; config.json is what reloads
    write_json_atomic(directory / META_FILE, {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "brevitas_ldm_version": _package_version(),
        "model": model, "self_contained": bool(self_contained), "denoiser_component": denoiser_component,
        "denoiser_class": type(denoiser).__name__, "recipe": recipe.name, "lora": dict(lora) if lora else None,
        "dtype": str(next(denoiser.parameters()).dtype).removeprefix("torch."),
        "files": {name: file_sha256(directory / name) for name in hashed_files(denoiser_component)}})
    return directory


def denoiser_file_bytes(directory: Path) -> int:
    """Bytes of a quantized pipeline folder's denoiser weights file (the integer codes and what stays float)."""
    meta = json.loads((Path(directory) / META_FILE).read_text())
    return (Path(directory) / hashed_files(str(meta.get("denoiser_component", "unet")))[1]).stat().st_size


#: The keys :func:`save_checkpoint` writes into ``meta.json`` and a ``quantization_config``; reading either refuses
#: any other (:func:`~brevitas_ldm.io.check_known_keys`).
META_KEYS = ("format", "format_version", "brevitas_ldm_version", "model", "self_contained", "denoiser_component",
             "denoiser_class", "recipe", "lora", "dtype", "files")
CONFIG_KEYS = ("quant_method", "format_version", "brevitas_ldm_version", "recipe", "precisions", "smoothing", "plan",
               "codes", "dtype")


def read_checkpoint_meta(directory: Path) -> dict[str, Any]:
    """``meta.json`` of a quantized pipeline folder, checked: this format version, the denoiser's files present
    and unchanged (one :class:`ModelError` naming the file otherwise)."""
    directory = Path(directory)
    if not directory.is_dir() or not (directory / META_FILE).is_file():
        raise ModelError(f"{str(directory)!r} is not a brevitas-ldm checkpoint (no {META_FILE}): pass the "
                         f"checkpoint folder written by `brevitas-ldm quantize`")
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT_NAME, "brevitas-ldm quantized denoiser"):
        raise ModelError(f"{directory / META_FILE} is not a brevitas-ldm checkpoint description (unreadable or "
                         f"changed): re-run `brevitas-ldm quantize` to write the folder again")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(f"the checkpoint at {directory} has format version {version} (brevitas-ldm "
                         f"{meta.get('brevitas_ldm_version', '0.1 or older')}); this brevitas-ldm reads version "
                         f"{FORMAT_VERSION}: re-run `brevitas-ldm quantize` with this version")
    check_known_keys(meta, META_KEYS, str(directory / META_FILE), ModelError)
    hashes = meta.get("files")
    expected = hashed_files(str(meta.get("denoiser_component", "unet")))
    if not isinstance(hashes, dict) or set(hashes) != set(expected):
        raise ModelError(f"{directory / META_FILE} lists the wrong files: re-run `brevitas-ldm quantize`")
    for name in expected:
        path = directory / name
        if not path.is_file():
            raise ModelError(f"checkpoint file {path} is missing: restore it or re-run `brevitas-ldm quantize`")
        if file_sha256(path) != hashes[name]:
            raise ModelError(f"checkpoint file {path} was changed or truncated after it was written (its SHA-256 "
                             f"differs from meta.json): restore it or re-run `brevitas-ldm quantize`")
    # A file whose hash was updated too is still read by its header first: nothing is allocated for a state that
    # claims more bytes than the file holds, and a non-safetensors file is named.
    check_safetensors_file(directory / expected[1], "restore it or re-run `brevitas-ldm quantize`", ModelError)
    return meta


def read_quantization_config(path: Path) -> dict[str, Any]:
    """The ``quantization_config`` of a denoiser's ``config.json``, checked to be this format's."""
    try:
        config = json.loads(Path(path).read_text()).get("quantization_config")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        config = None
    if not isinstance(config, dict) or config.get("quant_method") != QUANT_METHOD:
        raise ModelError(f"{path} has no brevitas quantization_config: pass a folder written by `brevitas-ldm "
                         f"quantize` or QuantizationResult.save")
    check_format_version(config, path)
    check_known_keys(config, CONFIG_KEYS, f"{path} quantization_config", ModelError)
    return config


def check_format_version(config: Mapping[str, Any], source: Path | str) -> None:
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(f"{source} was written in brevitas-ldm format version {version} (brevitas-ldm "
                         f"{config.get('brevitas_ldm_version', 'unknown')}); this brevitas-ldm reads version "
                         f"{FORMAT_VERSION}: re-run `brevitas-ldm quantize` with this version")


def read_checkpoint_recipe(directory: Path, meta: Mapping[str, Any] | None = None) -> Recipe:
    meta = meta if meta is not None else read_checkpoint_meta(directory)
    path = Path(directory) / str(meta.get("denoiser_component", "unet")) / CONFIG_FILE
    return config_recipe(read_quantization_config(path), path)


def config_recipe(config: Mapping[str, Any], source: Path | str) -> Recipe:
    try:
        return Recipe.from_dict(dict(config["recipe"]), source=f"{source} quantization_config.recipe")
    except (KeyError, TypeError) as exc:
        raise ModelError(f"{source}: quantization_config has no readable recipe ({exc}): re-run "
                         f"`brevitas-ldm quantize`") from None


def read_integer_state(path: Path) -> dict[str, torch.Tensor]:
    """The integer state of a denoiser file, its tensors checked against the SHA-256 in its header."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get(HASH_METADATA_KEY)
        state = load_file(str(path))
    except Exception as exc:   # noqa: BLE001 - safetensors raises its own error types for a garbled file
        raise ModelError(f"checkpoint file {path} cannot be read ({str(exc).splitlines()[0] if str(exc) else exc}): "
                         f"restore it or re-run `brevitas-ldm quantize`") from None
    check_state_hash(state, recorded, path)
    return state


def check_state_hash(state: Mapping[str, torch.Tensor], recorded: str | None, path: Path | str) -> None:
    if recorded is None or tensors_sha256(state) != recorded:
        raise ModelError(f"checkpoint file {path} was changed after it was written (its tensors' SHA-256 differs "
                         f"from the one in its header): restore it or re-run `brevitas-ldm quantize`")


def _rebuild_smoothing(denoiser: nn.Module, layout: list[dict[str, Any]], source: Path | str) -> None:
    modules = dict(denoiser.named_modules())
    for entry in layout:
        name = entry["name"]
        if name not in modules:
            raise ModelError(f"{source} smooths layer {name!r}, which this model does not have: pass the model the "
                             f"checkpoint was quantized from, or re-run `brevitas-ldm quantize`")
        if isinstance(modules[name], EqualizedModule):
            continue     # already rebuilt
        layer = modules[name]
        features = getattr(layer, "in_features", getattr(layer, "in_channels", None))
        shape = entry.get("runtime_shape")
        if entry.get("num_features") != features or not isinstance(shape, list) or len(shape) > 5 \
                or any(v not in (-1, 1, features) for v in shape):
            raise ModelError(f"{source} gives layer {name!r} a SmoothQuant scale of {entry.get('num_features')!r} "
                             f"features, shaped {shape!r}, where the layer takes {features}: restore the checkpoint "
                             f"or re-run `brevitas-ldm quantize`")
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else denoiser
        scale = ScaleBias(entry["num_features"], bias=False, runtime_shape=tuple(entry["runtime_shape"]))
        scale = scale.to(device=modules[name].weight.device, dtype=modules[name].weight.dtype)
        setattr(parent, child, EqualizedModule(scale_module=scale, layer=modules[name]))


def check_config_layers(denoiser: nn.Module, config: Mapping[str, Any], source: Path | str) -> None:
    """Refuse a ``quantization_config`` naming layers the (float) denoiser does not have, in one line."""
    names = set(user_facing_names(denoiser).values())
    precisions = config.get("precisions")
    if not isinstance(precisions, dict) or not isinstance(config.get("codes"), dict):
        raise ModelError(f"{source}: quantization_config lacks its precisions or codes table: re-run "
                         f"`brevitas-ldm quantize`")
    unknown = sorted(set(precisions) - names)
    if unknown:
        raise ModelError(f"{source} names {len(unknown)} layer(s) this {type(denoiser).__name__} does not have "
                         f"(e.g. {unknown[0]!r}): pass the folder written for this model, or re-run "
                         f"`brevitas-ldm quantize`")


@torch.no_grad()
def rebuild_quantized(denoiser: nn.Module, config: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                      source: Path | str) -> nn.Module:
    """Turn the float ``denoiser`` into the quantized one ``config`` + the integer ``state`` describe (in place).

    ``source`` (the denoiser's folder) is what error messages name."""
    config_path = Path(source) / CONFIG_FILE
    check_format_version(config, config_path)
    check_config_layers(denoiser, config, config_path)
    recipe = config_recipe(config, config_path)
    precisions = {k: parse_precision(v, f"{config_path} precisions[{k!r}]") for k, v in config["precisions"].items()}
    _rebuild_smoothing(denoiser, list((config.get("smoothing") or {}).get("layers", [])), config_path)
    quantize_denoiser(denoiser, recipe, precisions)
    state_path = Path(source) / STATE_FILE
    rest = {k: v for k, v in state.items() if not is_code_key(k)}
    expected = denoiser.state_dict()
    reshaped = [k for k, v in rest.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if reshaped:
        raise ModelError(f"checkpoint file {state_path} holds {reshaped[0]} with shape "
                         f"{tuple(rest[reshaped[0]].shape)} where the model has {tuple(expected[reshaped[0]].shape)} "
                         f"({len(reshaped)} tensor(s) differ): restore the file or re-run `brevitas-ldm quantize`")
    device = next(denoiser.parameters()).device
    missing, unexpected = denoiser.load_state_dict({k: v.to(device) for k, v in rest.items()}, strict=False)
    restored = set(config["codes"])
    # Brevitas never stores some runtime buffers; a restored weight and its pinned quantizer come from the codes.
    missing = [k for k in missing if not k.endswith((".buffer", ".training")) and not any(
        k == f"{n}.weight" or k.startswith(f"{n}.weight_quant.") for n in restored if k.startswith(n))]
    if missing or unexpected:
        raise ModelError(f"checkpoint file {state_path} does not fit the rebuilt model ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected tensors, e.g. {(missing or unexpected)[:2]}): re-run "
                         f"`brevitas-ldm quantize` with this brevitas-ldm version")
    # After the state: Brevitas rebuilds a weight quantizer when its state loads, which would drop the pins.
    modules = dict(denoiser.named_modules())
    for name, entry in config["codes"].items():
        if name not in modules:
            raise ModelError(f"{config_path} stores codes for layer {name!r}, which the rebuilt model does not "
                             f"have: re-run `brevitas-ldm quantize`")
        try:
            codes = layer_codes(state, name, entry)
        except KeyError as exc:
            raise ModelError(f"checkpoint file {state_path} lacks {exc.args[0]}: restore it or re-run "
                             f"`brevitas-ldm quantize`") from None
        try:
            restore_weight(modules[name], codes, name)
        except ModelError as exc:
            raise ModelError(f"{state_path}: {exc}") from None
    denoiser.eval()
    return denoiser


def _check_model_matches(meta: Mapping[str, Any], saved: Mapping[str, Any], denoiser: nn.Module) -> None:
    if meta["denoiser_class"] != type(denoiser).__name__:
        raise ModelError(f"the checkpoint was made for a {meta['denoiser_class']} but the model's denoiser is a "
                         f"{type(denoiser).__name__}: pass the --model the checkpoint was quantized from")
    saved = {k: v for k, v in saved.items() if not k.startswith("_") and k != "quantization_config"}
    current = _config_of(denoiser)
    differing = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if differing:
        raise ModelError(f"the checkpoint's recipe and plan do not match this model ({meta['denoiser_class']} config "
                         f"differs in {', '.join(differing[:5])}): pass the --model the checkpoint was quantized from "
                         f"({meta.get('model') or 'see meta.json'})")


@torch.no_grad()
def load_quantized(pipe: Any, directory: str | Path, meta: dict[str, Any] | None = None) -> Any:
    """Turn a freshly loaded FP pipeline into the quantized one saved in ``directory`` (in place; returned).

    ``meta``: the folder's description as :func:`read_checkpoint_meta` returned it, when the caller has already
    checked the folder (so its files are not hashed twice); read and checked here otherwise."""
    directory = Path(directory)
    meta = meta if meta is not None else read_checkpoint_meta(directory)
    component = str(meta.get("denoiser_component", "unet"))
    if component != pipeline_denoiser_component(pipe):
        raise ModelError(f"the checkpoint quantized the pipeline's {component}, which this pipeline has not: pass "
                         f"the --model the checkpoint was quantized from")
    _load_denoiser(get_denoiser(pipe), directory / component, meta)
    return pipe


def _load_denoiser(denoiser: nn.Module, folder: Path, meta: Mapping[str, Any]) -> nn.Module:
    try:
        saved = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError(f"{folder / CONFIG_FILE} is not readable JSON: restore it or re-run `brevitas-ldm "
                         f"quantize`") from None
    _check_model_matches(meta, saved, denoiser)
    config = read_quantization_config(folder / CONFIG_FILE)
    return rebuild_quantized(denoiser, config, read_integer_state(folder / STATE_FILE), folder)


def check_checkpoint_fits(pipe: Any, directory: str | Path, meta: dict[str, Any]) -> None:
    """Rebuild the checkpoint once on a copy of the FP denoiser, so a folder whose state does not fit its config
    (or this model) is refused before the FP evaluation a command runs first, not after it (59 s at ``qat``'s
    defaults on tiny-sd-digits). One extra denoiser copy, freed at once: less than the optimiser state the
    fine-tuning that follows holds."""
    directory = Path(directory)
    component = str(meta.get("denoiser_component", "unet"))
    if component != pipeline_denoiser_component(pipe):
        raise ModelError(f"the checkpoint quantized the pipeline's {component}, which this pipeline has not: pass "
                         f"the --model the checkpoint was quantized from")
    _load_denoiser(copy.deepcopy(get_denoiser(pipe)), directory / component, meta)


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


__all__ = ["FORMAT_VERSION", "BrevitasLDMError", "load_quantized", "save_checkpoint"]
