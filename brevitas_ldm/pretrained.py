"""One call from a quantized pipeline folder to a ready pipeline: ``brevitas_ldm.from_pretrained(path)``.

``brevitas-ldm quantize --out DIR`` (or :meth:`QuantizationResult.save`) leaves a folder whose ``checkpoint/``
holds the quantized denoiser's state, the recipe and the plan, and references the base pipeline (an embedded
model's name or a pipeline directory) instead of copying its unchanged components. Reloading loads that base the
way :func:`~brevitas_ldm.denoiser.loading.load_pipeline` does and applies the checkpoint, like diffusers'
``from_pretrained`` does for a plain pipeline folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brevitas_ldm.checkpoint import META_FILE, STATE_FILE, checkpoint_lora, load_quantized, read_checkpoint_meta
from brevitas_ldm.denoiser.loading import load_pipeline, resolve_model_path
from brevitas_ldm.denoiser.lora import fuse_lora
from brevitas_ldm.errors import ModelError
from brevitas_ldm.zoo import EMBEDDED_MODELS

#: Where ``quantize`` puts the checkpoint inside its ``--out`` folder.
CHECKPOINT_SUBDIR = "checkpoint"


def quantized_folder(path: str | Path) -> Path | None:
    """The checkpoint folder behind ``path``: ``path`` itself or ``path/checkpoint`` (a ``quantize --out``
    folder); None when ``path`` is neither (e.g. a plain diffusers pipeline or an embedded model's name)."""
    if str(path) in EMBEDDED_MODELS:
        return None
    path = Path(path).expanduser()
    for candidate in (path, path / CHECKPOINT_SUBDIR):
        if (candidate / META_FILE).is_file() and (candidate / STATE_FILE).exists():
            return candidate
    return None


def base_model(folder: Path, meta: dict[str, Any] | None = None) -> str:
    """The base pipeline a checkpoint folder references, checked to still be loadable."""
    meta = meta if meta is not None else read_checkpoint_meta(folder)
    model = meta.get("model")
    if not model:
        raise ModelError(f"the checkpoint at {folder} does not record its base pipeline (it was saved from a pipeline "
                         f"built in memory): load the FP pipeline and call brevitas_ldm.load_quantized(pipe, path)")
    try:
        resolve_model_path(model)
    except ModelError as exc:
        raise ModelError(f"the base pipeline {model!r} that {folder} references cannot be loaded ({exc})") from None
    return str(model)


def folder_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (what a copy of it would cost)."""
    return sum(item.stat().st_size for item in Path(path).rglob("*") if item.is_file())


def from_pretrained(path: str | Path, device: str = "cpu") -> Any:
    """The quantized diffusers pipeline saved at ``path`` (a ``quantize --out`` folder or its ``checkpoint/``),
    ready to sample: the base pipeline loaded offline with the quantized denoiser state applied. Sampling with
    the seeds of the original run gives bit-identical latents. A folder from another brevitas-ldm format or with
    a changed file gets a one-line :class:`~brevitas_ldm.errors.ModelError`."""
    folder = quantized_folder(path)
    if folder is None:
        raise ModelError(f"{str(path)!r} is not a quantized pipeline folder (no {CHECKPOINT_SUBDIR}/{META_FILE}): pass "
                         f"the --out folder of `brevitas-ldm quantize` or the folder QuantizationResult.save wrote")
    meta = read_checkpoint_meta(folder)
    pipe = load_pipeline(base_model(folder, meta), device)
    if meta.get("lora"):
        fuse_lora(pipe, checkpoint_lora(meta, None))
    return load_quantized(pipe, folder, meta)
