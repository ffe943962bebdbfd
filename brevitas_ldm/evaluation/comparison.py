"""The main job: FP reference, quantization, comparison at equal seeds, report and checkpoint, in one folder.

Used by ``brevitas-ldm quantize`` and by the benchmarks, so both measure the same way: the FP pipeline runs the
evaluation set first (its per-step denoiser outputs are kept as the reference trajectory), then the same pipeline
object is quantized in place and runs the same prompts and seeds again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from brevitas_ldm.denoiser.sampling import SamplingSpec, generate, get_denoiser
from brevitas_ldm.errors import ModelError
from brevitas_ldm.evaluation.compare import TrajectoryRecorder, psnr_db
from brevitas_ldm.evaluation.prompts import EvaluationSet
from brevitas_ldm.evaluation.run import Generation, decode_latents, digits_metrics
from brevitas_ldm.precision import Precision
from brevitas_ldm.quant.footprint import Footprint, activation_elements, footprint, weight_elements
from brevitas_ldm.quant.quantize import fast_inference
from brevitas_ldm.sqnr import sqnr_db


@dataclass
class Reference:
    """The FP side of a comparison: generations, per-step denoiser outputs and layer sizes."""

    generation: Generation
    recorder: TrajectoryRecorder
    weights: dict[str, int]
    activations: dict[str, int]
    metrics: dict[str, float] = field(default_factory=dict)


def _sample(pipe: Any, eval_set: EvaluationSet, spec: SamplingSpec, recorder: TrajectoryRecorder, record: bool,
            desc: str) -> Generation:
    start = time.perf_counter()
    box: dict[str, torch.Tensor] = {}

    def run() -> None:
        box["latents"] = generate(pipe, list(eval_set.prompts), list(eval_set.seeds), spec, output_type="latent",
                                  progress=True, desc=desc)

    (recorder.record if record else recorder.compare)(pipe, run)
    images = decode_latents(pipe, box["latents"])
    return Generation(images=images, latents=box["latents"], seconds=time.perf_counter() - start)


def fp_reference(pipe: Any, eval_set: EvaluationSet, spec: SamplingSpec, with_digits: bool) -> Reference:
    """Run the FP pipeline on the evaluation set and measure what the quantized run is compared against."""
    recorder = TrajectoryRecorder()
    generation = _sample(pipe, eval_set, spec, recorder, record=True, desc="FP sampling")
    if not torch.isfinite(generation.latents).all():
        raise ModelError("the FP pipeline produced NaN/Inf latents: the model weights or the sampling settings "
                         "(--guidance-scale, prompts) are broken; fix them before quantizing")
    denoiser = get_denoiser(pipe)
    one = EvaluationSet(eval_set.prompts[:1], eval_set.seeds[:1])
    activations = activation_elements(denoiser, lambda: generate(
        pipe, list(one.prompts), list(one.seeds), SamplingSpec(1, spec.guidance_scale, 1)))
    reference = Reference(generation, recorder, weight_elements(denoiser), activations)
    if with_digits:
        reference.metrics.update(digits_metrics(generation.images, eval_set))
    return reference


def compare_quantized(pipe: Any, eval_set: EvaluationSet, spec: SamplingSpec, reference: Reference,
                      precisions: dict[str, Precision], with_digits: bool) -> tuple[dict[str, Any], Generation, list[float]]:
    """Quantized pipeline on the same evaluation set: output SQNR, image PSNR, per-step SQNR, footprint."""
    with fast_inference(get_denoiser(pipe)):
        generation = _sample(pipe, eval_set, spec, reference.recorder, record=False, desc="quantized sampling")
    size: Footprint = footprint(get_denoiser(pipe), precisions, reference.weights, reference.activations)
    metrics: dict[str, Any] = {}
    if with_digits:
        metrics.update(digits_metrics(generation.images, eval_set))
    metrics.update({
        "output_sqnr_db": sqnr_db(reference.generation.latents, generation.latents),
        "image_psnr_db": psnr_db(reference.generation.images, generation.images),
        **size.as_dict(),
    })
    return metrics, generation, reference.recorder.per_step_db()
