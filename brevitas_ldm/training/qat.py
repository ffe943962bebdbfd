"""QAT from the same recipe and plan: PTQ first, then distillation from the float denoiser.

:func:`qat` is the PTQ job followed by fine-tuning. The float pipeline first records its own sampling
trajectories (or, with ``data``, denoiser calls on noised images of a folder); the PTQ result is then built exactly
as ``brevitas-ldm quantize`` builds it (same recipe, same plan or global analysis, same calibration) or read from a
PTQ checkpoint; the quant layers then train by distillation (:mod:`~brevitas_ldm.training.distillation`), and
adapters are merged. The result has the same quant layers, precisions and state layout as a PTQ result, so it
saves, reloads (bit-identically) and exports through the same paths.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brevitas_ldm.checkpoint.folder import (
    load_quantized,
    read_checkpoint_meta,
    read_checkpoint_recipe,
)
from brevitas_ldm.denoiser.loading import pipeline_source
from brevitas_ldm.denoiser.sampling import SamplingSpec, get_denoiser
from brevitas_ldm.errors import BrevitasLDMError, RecipeError
from brevitas_ldm.evaluation.prompts import calibration_set
from brevitas_ldm.planning.plan import PLAN_FILE, read_plan
from brevitas_ldm.quant.quantize import quant_layers, read_precisions
from brevitas_ldm.recipe import Recipe, get_recipe
from brevitas_ldm.training.adapters import merge_adapters
from brevitas_ldm.training.distillation import (
    TrainingLog,
    distil,
    mean_distillation_loss,
    select_trainable,
)
from brevitas_ldm.training.distillation_set import DistillationSet, record_trajectories
from brevitas_ldm.workflow import PlanLike, QuantizationResult, quantize_pipeline


@dataclass
class QATResult:
    """A QAT run: the PTQ start it trained from (whose pipeline is now the trained one) and the training log."""

    quantization: QuantizationResult
    log: TrainingLog
    data: DistillationSet
    trained_parameters: int = 0
    merged_adapters: int = 0
    loss_before: float = float("nan")      # mean distillation loss of the PTQ start over the recorded calls
    loss_after: float = float("nan")       # the same after training
    timing_s: dict[str, float] = field(default_factory=dict)
    denoiser_calls: dict[str, int] = field(default_factory=dict)

    @property
    def pipeline(self) -> Any:
        return self.quantization.pipeline

    @property
    def recipe(self) -> Recipe:
        return self.quantization.recipe

    def save(self, directory: str | Path, model: str | None = None, lora: dict | None = None,
             self_contained: bool = True) -> Path:
        """The same quantized pipeline folder a PTQ result writes (reload with
        ``DiffusionPipeline.from_pretrained``)."""
        return self.quantization.save(directory, model=model, lora=lora, self_contained=self_contained)


def qat_recipe(recipe: Recipe | str, steps: int | None = None) -> Recipe:
    """``recipe`` with ``steps`` training steps when given (``--qat-steps``); refused when it trains nothing."""
    recipe = get_recipe(recipe)
    if steps is not None:
        recipe = dataclasses.replace(recipe, qat=dataclasses.replace(recipe.qat, steps=int(steps)))
        recipe.validate()
    if not recipe.qat.enabled:
        raise RecipeError(f"recipe {recipe.name!r} has no QAT (qat.steps = 0): pick a QAT recipe such as qat-w4a8 or "
                          f"qat-w4a4, add a [qat] section with steps > 0, or pass --qat-steps")
    return recipe


def checkpoint_start(pipe: Any, checkpoint: str | Path, recipe: Recipe) -> QuantizationResult:
    """The PTQ result saved at ``checkpoint``, applied to ``pipe``, with ``recipe``'s ``[qat]`` section: the quant
    layers, precisions and calibrated scales are the checkpoint's, what to train is the QAT recipe's."""
    meta = read_checkpoint_meta(checkpoint)
    saved = read_checkpoint_recipe(checkpoint, meta)
    load_quantized(pipe, checkpoint, meta)
    combined = dataclasses.replace(saved, name=f"{saved.name}+{recipe.name}" if saved.name != recipe.name else
                                   saved.name, qat=recipe.qat)
    plan = read_plan(Path(checkpoint) / PLAN_FILE) if (Path(checkpoint) / PLAN_FILE).is_file() else None
    return QuantizationResult(pipeline=pipe, recipe=combined, precisions=read_precisions(get_denoiser(pipe)),
                              plan=plan)


def qat(pipe: Any, recipe: Recipe | str, plan: PlanLike | None = None, checkpoint: str | Path | None = None,
        data: DistillationSet | None = None, calibration_prompts: Sequence[str] | None = None,
        calibration_seeds: Sequence[int] | None = None, spec: SamplingSpec | None = None, seed: int = 0,
        steps: int | None = None, progress: bool = False, cache_dir: str | Path | None = None,
        trajectory_prompts: Sequence[str] | None = None,
        before_training: Callable[[QuantizationResult], None] | None = None) -> QATResult:
    """Quantize ``pipe``'s float denoiser in place with ``recipe`` (PTQ, or the PTQ ``checkpoint``), then fine-tune
    it by distillation from the float denoiser following ``recipe.qat``.

    ``data``: the distillation set (default: the float trajectories of ``recipe.qat.num_prompts`` samples cycling
    through ``trajectory_prompts``, or the model's own prompts, with calibration seeds; recorded here before
    quantization); ``calibration_prompts``/``seeds`` feed PTQ as in
    :func:`~brevitas_ldm.workflow.quantize_pipeline`. ``spec``: how trajectories are sampled (its batch size is the
    training batch). ``seed`` fixes which calls train and the adapters' initial values. ``before_training`` sees
    the PTQ result before any parameter moves (the command line evaluates it there).
    """
    recipe = qat_recipe(recipe, steps)
    denoiser = get_denoiser(pipe)
    if quant_layers(denoiser):
        raise BrevitasLDMError("qat() takes the float pipeline (it records the float trajectories first): load it "
                               "again, and pass the PTQ result as checkpoint= instead of quantizing it yourself")
    if plan is not None and checkpoint is not None:
        raise BrevitasLDMError("pass a plan or a checkpoint, not both: a checkpoint already carries its plan")
    settings = recipe.qat
    spec = spec or SamplingSpec(batch_size=settings.batch_size)
    timing: dict[str, float] = {}
    calls: dict[str, int] = {}
    start = time.perf_counter()
    if data is None:
        trajectories = calibration_set(settings.num_prompts, model=pipeline_source(pipe),
                                       prompts=list(trajectory_prompts) if trajectory_prompts else None)
        data = record_trajectories(pipe, trajectories.prompts, trajectories.seeds, spec, progress=progress)
    timing["recording"] = time.perf_counter() - start
    calls["recording"] = len(data)

    if checkpoint is not None:
        start_result = checkpoint_start(pipe, checkpoint, recipe)
    else:
        start_result = quantize_pipeline(pipe, recipe, calibration_prompts, calibration_seeds,
                                         dataclasses.replace(spec, batch_size=recipe.calibration.batch_size),
                                         plan=plan, progress=progress, cache_dir=cache_dir)
    timing.update(start_result.timing_s)
    calls.update(start_result.denoiser_calls)
    if before_training is not None:
        before_training(start_result)

    every = max(1, len(data) // 64)        # the loss before/after is measured on up to 64 recorded calls
    loss_before = mean_distillation_loss(denoiser, data, every)
    trainable = select_trainable(denoiser, settings, seed)
    log = distil(denoiser, data, settings, trainable, seed, progress=progress)
    merged = merge_adapters(denoiser)
    denoiser.eval()
    loss_after = mean_distillation_loss(denoiser, data, every)
    timing["training"] = log.wall_time_s
    calls["training"] = log.denoiser_calls
    return QATResult(quantization=start_result, log=log, data=data, trained_parameters=trainable.count(),
                     merged_adapters=merged, loss_before=loss_before, loss_after=loss_after, timing_s=timing,
                     denoiser_calls=calls)
