"""Evaluate a pipeline: generate the evaluation set once and score it (class metrics where the model has them)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from brevitas_ldm.denoiser.sampling import SamplingSpec, autoencoder, generate
from brevitas_ldm.evaluation.class_evaluator import ClassEvaluator, evaluator_for
from brevitas_ldm.evaluation.prompts import EvaluationSet


@dataclass
class Generation:
    """Images (N, C, H, W) in [0, 1] and final latents of one pipeline on one evaluation set."""

    images: torch.Tensor
    latents: torch.Tensor
    seconds: float


def generate_with_latents(pipe: Any, eval_set: EvaluationSet, spec: SamplingSpec, progress: bool = False,
                          desc: str = "sampling") -> Generation:
    """Sample latents once and decode them with the pipeline's VAE (no second sampling run)."""
    start = time.perf_counter()
    latents = generate(pipe, list(eval_set.prompts), list(eval_set.seeds), spec, output_type="latent",
                       progress=progress, desc=desc)
    images = decode_latents(pipe, latents)
    return Generation(images=images, latents=latents, seconds=time.perf_counter() - start)


@torch.no_grad()
def decode_latents(pipe: Any, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images in [0, 1] from what :func:`generate` returns as latents (the autoencoder's input, already unscaled
    and unshifted); pixel-space pipelines' latents are their images already."""
    vae = autoencoder(pipe)
    if vae is None:
        return latents
    out = []
    for chunk in latents.split(batch_size):
        decoded = vae.decode(chunk.to(vae.dtype), return_dict=False)[0]
        out.append(((decoded.float() + 1.0) / 2.0).clamp(0, 1).cpu())
    return torch.cat(out)


def class_metrics(images: torch.Tensor, eval_set: EvaluationSet, evaluator: ClassEvaluator) -> dict[str, float]:
    """``evaluator``'s FID (under its own key, e.g. ``digits_fid``) and prompt accuracy of ``images``."""
    return evaluator.metrics(images, eval_set.labels)


def digits_metrics(images: torch.Tensor, eval_set: EvaluationSet) -> dict[str, float]:
    """digits-FID and prompt accuracy (tiny-sd-digits' evaluator)."""
    return class_metrics(images, eval_set, evaluator_for("tiny-sd-digits"))


def has_digits_evaluator(model: str | Path) -> bool:
    """Whether ``model`` is an embedded model with an installed classifier (digits or fashion); see
    :func:`~brevitas_ldm.evaluation.class_evaluator.evaluator_for` for the evaluator itself."""
    return evaluator_for(model) is not None
