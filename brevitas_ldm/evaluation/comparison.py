"""The main job's comparison: FP reference, then the quantized pipeline on the same prompts and seeds.

Used by ``brevitas-ldm quantize``/``evaluate`` and by the benchmarks, so all measure the same way: the FP pipeline
runs the evaluation set once (:func:`~brevitas_ldm.denoiser.trajectory.fp_reference` keeps its per-step denoiser
outputs and counts every layer's input elements), then the same pipeline object is quantized in place and runs the
same prompts and seeds again (:func:`~brevitas_ldm.denoiser.trajectory.measure`), the very recorder and measurer
the global analysis uses.

In a torch.distributed job both split the pipeline batches across the ranks (every rank gets the whole trajectory
and measurement back); only the main rank decodes images and scores them, since only it writes the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from brevitas_ldm.denoiser.sampling import SamplingSpec, get_denoiser
from brevitas_ldm.denoiser.trajectory import FPReference, measure
from brevitas_ldm.denoiser.trajectory import fp_reference as record_trajectory
from brevitas_ldm.errors import ModelError
from brevitas_ldm.evaluation.class_evaluator import ClassEvaluator
from brevitas_ldm.evaluation.compare import psnr_db
from brevitas_ldm.evaluation.prompts import EvaluationSet
from brevitas_ldm.evaluation.run import Generation, class_metrics, decode_latents
from brevitas_ldm.precision import Precision
from brevitas_ldm.process.ranks import current_ranks
from brevitas_ldm.quant.footprint import Footprint, footprint, weight_elements
from brevitas_ldm.quant.quantize import fast_inference
from brevitas_ldm.sqnr import sqnr_db


@dataclass
class Reference:
    """The FP side of a comparison: generations, the recorded trajectory and layer sizes."""

    generation: Generation
    trajectory: FPReference
    weights: dict[str, int]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def activations(self) -> dict[str, float]:
        """Input elements per sample per denoiser call of every layer (what activation bits are weighted by)."""
        return self.trajectory.act_elements


def fp_reference(pipe: Any, eval_set: EvaluationSet, spec: SamplingSpec,
                 evaluator: ClassEvaluator | None) -> Reference:
    """Run the FP pipeline on the evaluation set and measure what the quantized run is compared against
    (``evaluator``: the model's class metrics, or None for a model without them)."""
    start = time.perf_counter()
    ranks = current_ranks()
    trajectory = record_trajectory(pipe, list(eval_set.prompts), list(eval_set.seeds), spec,
                                   progress=ranks.is_main, desc="FP sampling", ranks=ranks)
    if not torch.isfinite(trajectory.latents).all():
        raise ModelError("the FP pipeline produced NaN/Inf latents: the model weights or the sampling settings "
                         "(--guidance-scale, prompts) are broken; fix them before quantizing")
    images = decode_latents(pipe, trajectory.latents) if ranks.is_main else torch.empty(0)
    generation = Generation(images=images, latents=trajectory.latents, seconds=time.perf_counter() - start)
    reference = Reference(generation, trajectory, weight_elements(get_denoiser(pipe)))
    if evaluator is not None and ranks.is_main:
        reference.metrics.update(class_metrics(generation.images, eval_set, evaluator))
    return reference


def compare_quantized(pipe: Any, eval_set: EvaluationSet, spec: SamplingSpec, reference: Reference,
                      precisions: dict[str, Precision],
                      evaluator: ClassEvaluator | None) -> tuple[dict[str, Any], Generation, list[float]]:
    """Quantized pipeline on the same evaluation set: output SQNR, image PSNR, per-step SQNR, footprint."""
    start = time.perf_counter()
    ranks = current_ranks()
    with fast_inference(get_denoiser(pipe)):
        measurement = measure(pipe, reference.trajectory, progress=ranks.is_main, desc="quantized sampling",
                              ranks=ranks)
    if not ranks.is_main:     # the main rank scores and writes; the others only sampled their batches
        return {}, Generation(images=torch.empty(0), latents=measurement.latents, seconds=0.0), measurement.steps_db
    images = decode_latents(pipe, measurement.latents)
    generation = Generation(images=images, latents=measurement.latents, seconds=time.perf_counter() - start)
    size: Footprint = footprint(get_denoiser(pipe), precisions, reference.weights, reference.activations)
    metrics: dict[str, Any] = {}
    if evaluator is not None:
        metrics.update(class_metrics(generation.images, eval_set, evaluator))
    metrics.update({
        "output_sqnr_db": sqnr_db(reference.generation.latents, generation.latents),
        "image_psnr_db": psnr_db(reference.generation.images, generation.images),
        **size.as_dict(),
    })
    return metrics, generation, measurement.steps_db
