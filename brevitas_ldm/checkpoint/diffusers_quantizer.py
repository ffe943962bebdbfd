"""The ``"brevitas"`` quantization backend of diffusers: ``from_pretrained`` of a quantized folder, natively.

diffusers has no registration API for outside backends; ``ModelMixin.from_pretrained`` looks a component's
``config.json`` ``quantization_config["quant_method"]`` up in ``diffusers.quantizers.auto``'s
``AUTO_QUANTIZATION_CONFIG_MAPPING`` (-> :class:`BrevitasConfig`) and ``AUTO_QUANTIZER_MAPPING``
(-> :class:`BrevitasQuantizer`). :func:`register` adds the ``"brevitas"`` entry to both; ``import brevitas_ldm``
arranges for it to run as soon as diffusers' quantizers are imported
(:mod:`brevitas_ldm.checkpoint.diffusers_registration`), so ``brevitas-ldm recipes`` never pays for torch.

How diffusers drives the quantizer while it loads a denoiser folder written by
:func:`~brevitas_ldm.checkpoint.save_checkpoint` (its weights file holds integer codes, not float weights):

1. ``maybe_update_loaded_keys``: the file is known; the format version is checked (one line naming config.json);
2. ``_process_model_before_weight_loading``: the (meta-device, float) model is checked against the config's
   layer names;
3. ``maybe_update_state_dict``: the tensors' SHA-256 is checked against the file header; the integer state is kept
   aside and diffusers gets a float state dict (dequantized weights under the float model's names);
4. ``_process_model_after_weight_loading``: :func:`~brevitas_ldm.checkpoint.rebuild_quantized` turns the loaded
   float model into the Brevitas model (SmoothQuant wrappers, quant layers pinned to their codes, scales).

``save_pretrained`` of the reloaded model writes the same integer file (``get_state_dict_and_metadata``) and the
same ``quantization_config``, so it reloads the same way. A float folder with ``quantization_config=
BrevitasConfig(...)`` is refused: Brevitas' activation ranges need calibration data, which ``from_pretrained`` has
not got.
"""

from __future__ import annotations

import importlib
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from diffusers.quantizers.base import DiffusersQuantizer
from diffusers.quantizers.quantization_config import QuantizationConfigMixin

from brevitas_ldm.checkpoint.folder import (
    CONFIG_FILE,
    CONFIG_KEYS,
    FORMAT_VERSION,
    HASH_METADATA_KEY,
    QUANT_METHOD,
    check_config_layers,
    check_format_version,
    check_state_hash,
    rebuild_quantized,
    tensors_sha256,
)
from brevitas_ldm.errors import ModelError
from brevitas_ldm.io import check_known_keys
from brevitas_ldm.quant.integer_codes import (
    CODES_KEY,
    integer_state_dict,
    is_code_key,
    layer_codes,
)


class BrevitasQuantizationMethod(str, Enum):
    """diffusers reads ``quant_method.value``; a str Enum member compares and hashes as its string."""

    BREVITAS = QUANT_METHOD


#: The fields of a brevitas ``quantization_config`` (see :func:`brevitas_ldm.checkpoint.quantization_config`).
CONFIG_FIELDS = tuple(key for key in CONFIG_KEYS if key != "quant_method")


class BrevitasConfig(QuantizationConfigMixin):
    """A Brevitas-quantized denoiser's ``quantization_config``: the recipe, the per-layer precisions, the
    SmoothQuant layout, the plan and the storage table of the integer codes, with the format version."""

    def __init__(self, recipe: dict | str | None = None, precisions: dict | None = None,
                 smoothing: dict | None = None, plan: dict | None = None, codes: dict | None = None,
                 format_version: int = FORMAT_VERSION, brevitas_ldm_version: str | None = None,
                 dtype: str | None = None, **unused: Any) -> None:
        # diffusers hands the whole stored dict over, quant_method included; anything else is not this format
        check_known_keys(unused, ("quant_method",), "brevitas quantization_config", ModelError)
        self.quant_method = BrevitasQuantizationMethod.BREVITAS
        self.format_version = format_version
        self.brevitas_ldm_version = brevitas_ldm_version
        self.recipe = recipe
        self.precisions = precisions
        self.smoothing = smoothing
        self.plan = plan
        self.codes = codes
        self.dtype = dtype

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": QUANT_METHOD, **{name: getattr(self, name) for name in CONFIG_FIELDS}}

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def torch_dtype(self) -> torch.dtype | None:
        return getattr(torch, self.dtype) if self.dtype else None


def calibration_refusal(model: str = "the model") -> str:
    return (f"{model} is not quantized, and BrevitasConfig cannot quantize it while loading: Brevitas' activation "
            f"ranges need calibration data - run `brevitas-ldm quantize --model FOLDER --out DIR` (or "
            f"brevitas_ldm.quantize_pipeline(pipe, recipe).save(DIR)) and load DIR instead")


class BrevitasQuantizer(DiffusersQuantizer):
    """Loads (and re-saves) a denoiser stored as Brevitas integer codes; see the module docstring."""

    requires_calibration = True
    required_packages = ("brevitas",)
    use_keep_in_fp32_modules = False

    def __init__(self, quantization_config: BrevitasConfig, **kwargs: Any) -> None:
        if not kwargs.get("pre_quantized", True):
            raise ModelError(calibration_refusal())
        super().__init__(quantization_config, **kwargs)
        self._folder: Path | None = None
        self._integer_state: dict[str, torch.Tensor] | None = None
        self._recorded_hash: str | None = None
        self._model = None

    # -- where the file is and what it records ----------------------------------------------------------------
    @property
    def source(self) -> str:
        return str(self._folder) if self._folder is not None else "the denoiser folder"

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        wanted, recorded = kwargs.get("torch_dtype"), self.quantization_config.torch_dtype()
        if wanted is not None and recorded is not None and wanted != recorded:
            raise ModelError(f"this quantized denoiser was calibrated in {self.quantization_config.dtype}; "
                             f"torch_dtype={wanted} would change its scales: drop torch_dtype or pass "
                             f"torch_dtype=torch.{self.quantization_config.dtype}")

    def update_torch_dtype(self, torch_dtype: torch.dtype | None) -> torch.dtype | None:
        return torch_dtype or self.quantization_config.torch_dtype()

    @property
    def supports_parallel_loading(self) -> bool:
        return False    # the integer state must arrive whole (codes, scales and zero points together)

    def maybe_update_loaded_keys(self, loaded_keys: list[str], checkpoint_files: list[str]) -> list[str]:
        from safetensors import safe_open

        if len(checkpoint_files) != 1 or not str(checkpoint_files[0]).endswith(".safetensors"):
            raise ModelError(f"a brevitas-quantized denoiser is one safetensors file, not {checkpoint_files}: "
                             f"re-save it with save_pretrained(max_shard_size=...) large enough for one file")
        self._folder = Path(checkpoint_files[0]).parent
        check_format_version(self.quantization_config.to_dict(), self._folder / CONFIG_FILE)
        with safe_open(str(checkpoint_files[0]), framework="pt") as handle:
            self._recorded_hash = (handle.metadata() or {}).get(HASH_METADATA_KEY)
        smoothed = self._smoothed()
        # Brevitas' own tensors (quantizer state, SmoothQuant multipliers) are not the float model's: left out
        # here so diffusers does not list them as unused; the rebuild loads them.
        return [_float_key(key, smoothed) for key in loaded_keys
                if (not is_code_key(key) or key.endswith(CODES_KEY)) and "_quant." not in key
                and not any(key.startswith(f"{name}.scale.") for name in smoothed)]

    def _smoothed(self) -> set[str]:
        return {entry["name"] for entry in (self.quantization_config.smoothing or {}).get("layers", [])}

    def update_missing_keys(self, model, missing_keys: list[str], prefix: str) -> list[str]:
        return missing_keys

    # -- loading ----------------------------------------------------------------------------------------------
    def _process_model_before_weight_loading(self, model, **kwargs: Any):
        check_config_layers(model, self.quantization_config.to_dict(), Path(self.source) / CONFIG_FILE)
        self._shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
        return model

    def maybe_update_state_dict(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        check_state_hash(state_dict, self._recorded_hash, Path(self.source) / "diffusion_pytorch_model.safetensors")
        self._integer_state = dict(state_dict)
        smoothed = self._smoothed()
        floats: dict[str, torch.Tensor] = {}
        for name, entry in (self.quantization_config.codes or {}).items():
            try:
                floats[_user_name(name, smoothed) + ".weight"] = layer_codes(state_dict, name, entry).dequantize()
            except KeyError as exc:
                raise ModelError(f"{self.source}/diffusion_pytorch_model.safetensors lacks {exc.args[0]}: restore "
                                 f"it or re-run `brevitas-ldm quantize`") from None
        for key, value in state_dict.items():
            if not is_code_key(key):
                floats[_float_key(key, smoothed)] = value
        shapes = getattr(self, "_shapes", {})
        reshaped = [k for k, v in floats.items() if k in shapes and tuple(v.shape) != shapes[k]]
        if reshaped:
            raise ModelError(f"{self.source}/diffusion_pytorch_model.safetensors holds {reshaped[0]} with shape "
                             f"{tuple(floats[reshaped[0]].shape)} where the model has {shapes[reshaped[0]]}: restore "
                             f"the file or re-run `brevitas-ldm quantize`")
        return floats

    def _process_model_after_weight_loading(self, model, **kwargs: Any):
        meta = [name for name, tensor in model.state_dict().items() if tensor.device.type == "meta"]
        if meta:
            raise ModelError(f"{self.source}/diffusion_pytorch_model.safetensors has no value for {meta[0]} "
                             f"({len(meta)} tensor(s)): restore it or re-run `brevitas-ldm quantize`")
        rebuild_quantized(model, self.quantization_config.to_dict(), self._integer_state or {}, self.source)
        self._integer_state = None
        self._model = model
        return model

    # -- saving -----------------------------------------------------------------------------------------------
    def get_state_dict_and_metadata(self, state_dict: dict[str, Any], safe_serialization: bool = False):
        if self._model is None:
            raise ModelError("this model was not loaded by the brevitas quantizer: save it with "
                             "QuantizationResult.save")
        state, codes = integer_state_dict(self._model)
        if codes != self.quantization_config.codes:
            raise ModelError("the model's quantized layers differ from its quantization_config (re-quantized after "
                             "loading?): save it with QuantizationResult.save")
        return state, {HASH_METADATA_KEY: tensors_sha256(state)}

    @property
    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    def _dequantize(self, model):
        raise ModelError("a Brevitas-quantized denoiser keeps only its codes: load the float base pipeline instead")


def _user_name(internal: str, smoothed: set[str]) -> str:
    """The float model's name of a layer (``x`` for SmoothQuant's ``x.layer``)."""
    return internal[: -len(".layer")] if internal.endswith(".layer") and internal[: -len(".layer")] in smoothed \
        else internal


def _float_key(key: str, smoothed: set[str] | None = None) -> str:
    """The float model's key of an integer-state key (``x.layer.bias`` -> ``x.bias``; codes -> ``.weight``)."""
    module, _, leaf = key.rpartition(".")
    if leaf == CODES_KEY:
        leaf = "weight"
    if module.endswith(".layer") and (smoothed is None or module[: -len(".layer")] in smoothed):
        module = module[: -len(".layer")]
    return f"{module}.{leaf}" if module else leaf


def register() -> None:
    """Add the ``"brevitas"`` backend to diffusers' quantizer tables (idempotent)."""
    auto = importlib.import_module("diffusers.quantizers.auto")
    auto.AUTO_QUANTIZER_MAPPING[QUANT_METHOD] = BrevitasQuantizer
    auto.AUTO_QUANTIZATION_CONFIG_MAPPING[QUANT_METHOD] = BrevitasConfig


register()

__all__ = ["BrevitasConfig", "BrevitasQuantizer", "calibration_refusal", "register"]
