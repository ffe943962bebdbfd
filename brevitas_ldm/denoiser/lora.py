"""Fusing a LoRA into the pipeline before anything is measured, so users quantize the model they actually run.

A LoRA changes the denoiser's weights and activation ranges; quantizing the base model and adding the LoRA later
would calibrate the wrong model. :func:`fuse_lora` loads a diffusers/peft LoRA file with the pipeline's own
``load_lora_weights``, fuses it at full strength and unloads the adapter layers, so the denoiser is again made of
plain Linear/Conv2d layers that Brevitas can replace. A LoRA whose tensors name no layer of this pipeline is
refused in one line instead of being silently ignored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from brevitas_ldm.denoiser.sampling import get_denoiser
from brevitas_ldm.errors import ModelError
from brevitas_ldm.io import check_safetensors_file, file_sha256

ADAPTER_NAME = "brevitas_ldm_lora"


@dataclass(frozen=True)
class FusedLora:
    """Which LoRA file was fused (absolute path and SHA-256, so a checkpoint can insist on the same one)."""

    path: str
    sha256: str
    changed_layers: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_lora_file(path: str | Path) -> Path:
    """The LoRA file, checked to exist and be a safetensors file (before the model loads)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"--lora {str(path)!r} does not exist: pass a LoRA .safetensors file written by diffusers' "
                         f"save_lora_weights() or peft")
    if path.suffix != ".safetensors":
        raise ModelError(f"--lora {str(path)!r} is not a .safetensors file: pass the LoRA weights diffusers' "
                         f"save_lora_weights() writes (pytorch_lora_weights.safetensors)")
    check_safetensors_file(path, "pass the LoRA weights diffusers' save_lora_weights() or peft wrote", ModelError)
    return path.resolve()


@torch.no_grad()
def fuse_lora(pipe: Any, path: str | Path) -> FusedLora:
    """Load the LoRA at ``path`` into ``pipe``, fuse it into the weights and drop the adapter layers."""
    path = check_lora_file(path)
    if not hasattr(pipe, "load_lora_weights"):
        raise ModelError(f"{type(pipe).__name__} does not take LoRA weights (no load_lora_weights): drop --lora, or "
                         f"fuse the LoRA into the pipeline yourself and save_pretrained() it")
    from peft.tuners.tuners_utils import BaseTunerLayer

    denoiser = get_denoiser(pipe)
    try:
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=ADAPTER_NAME)
        # The denoiser's layers peft wrapped are the ones the fused LoRA changes (counted without copying weights).
        changed = sum(1 for module in denoiser.modules() if isinstance(module, BaseTunerLayer))
        if changed:
            pipe.fuse_lora(lora_scale=1.0, adapter_names=[ADAPTER_NAME])
        pipe.unload_lora_weights()
    except (ValueError, RuntimeError, KeyError, TypeError, OSError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = next((line for line in lines if not line.endswith(":")), lines[0] if lines else type(exc).__name__)
        first = first[:200]
        raise ModelError(f"--lora {path.name} does not fit {type(denoiser).__name__} ({first}): pass a LoRA trained "
                         f"for this model") from None
    if changed == 0:
        raise ModelError(f"--lora {path.name} changes no weight of {type(denoiser).__name__}: none of its tensors "
                         f"names a layer of this denoiser; pass a LoRA trained for this model")
    return FusedLora(path=str(path), sha256=file_sha256(path), changed_layers=changed)
