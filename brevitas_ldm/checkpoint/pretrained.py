"""One call from a quantized pipeline folder to a ready pipeline: ``brevitas_ldm.from_pretrained(path)``.

A folder ``brevitas-ldm quantize --out DIR`` (``DIR/checkpoint``) or :meth:`QuantizationResult.save` writes is an
ordinary diffusers pipeline folder whose denoiser diffusers itself reloads (``DiffusionPipeline.from_pretrained``,
through the ``"brevitas"`` backend, :mod:`brevitas_ldm.checkpoint.diffusers_quantizer`). :func:`from_pretrained` is a
thin alias for that call which also takes the ``quantize --out`` folder, checks the files against ``meta.json`` first
(one-line errors), loads in the dtype the denoiser was calibrated in, and for a folder saved with
``self_contained=False`` loads the referenced base pipeline and swaps the quantized denoiser in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brevitas_ldm.checkpoint.folder import (
    META_FILE,
    checkpoint_lora,
    load_quantized,
    read_checkpoint_meta,
)
from brevitas_ldm.denoiser.loading import load_pipeline, resolve_model_path
from brevitas_ldm.denoiser.lora import fuse_lora
from brevitas_ldm.errors import ModelError
from brevitas_ldm.zoo import EMBEDDED_MODELS

#: Where ``quantize`` puts the quantized pipeline folder inside its ``--out`` folder.
CHECKPOINT_SUBDIR = "checkpoint"


def quantized_folder(path: str | Path) -> Path | None:
    """The quantized pipeline folder behind ``path``: ``path`` itself or ``path/checkpoint`` (a ``quantize --out``
    folder); None when ``path`` is neither (e.g. a plain diffusers pipeline or an embedded model's name)."""
    if str(path) in EMBEDDED_MODELS:
        return None
    path = Path(path).expanduser()
    for candidate in (path, path / CHECKPOINT_SUBDIR):
        if (candidate / META_FILE).is_file():
            return candidate
    return None


def base_model(folder: Path, meta: dict[str, Any] | None = None) -> str:
    """The base pipeline a checkpoint folder was quantized from, checked to still be loadable."""
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
    """Bytes of every file under ``path`` (what a copy of it would cost; a hard link counts in full)."""
    return sum(item.stat().st_size for item in Path(path).rglob("*") if item.is_file())


def from_pretrained(path: str | Path, device: str = "cpu") -> Any:
    """The quantized diffusers pipeline saved at ``path`` (a ``quantize --out`` folder or its ``checkpoint/``, or
    a folder ``save_pretrained`` wrote from a reloaded one), ready to sample: what
    ``DiffusionPipeline.from_pretrained(folder)`` gives. Sampling with the seeds of the original run gives
    bit-identical latents. A folder from another brevitas-ldm format or with a changed file gets a one-line
    :class:`~brevitas_ldm.errors.ModelError`."""
    folder = quantized_folder(path)
    if folder is None:
        plain = Path(path).expanduser()
        if (plain / "model_index.json").is_file():
            return load_pipeline(plain, device)       # e.g. save_pretrained of a reloaded pipeline: diffusers alone
        raise ModelError(f"{str(path)!r} is not a quantized pipeline folder (no {META_FILE} or model_index.json): "
                         f"pass the --out folder of `brevitas-ldm quantize` or the folder QuantizationResult.save "
                         f"wrote")
    meta = read_checkpoint_meta(folder)
    dtype = meta.get("dtype") or "float32"
    if meta.get("self_contained", True):
        return load_pipeline(folder, device, dtype)
    pipe = load_pipeline(base_model(folder, meta), device, dtype)
    if meta.get("lora"):
        fuse_lora(pipe, checkpoint_lora(meta, None))
    return load_quantized(pipe, folder, meta)
