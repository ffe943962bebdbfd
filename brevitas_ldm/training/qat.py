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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brevitas_ldm.denoiser.sampling import SamplingSpec, get_denoiser
from brevitas_ldm.errors import BrevitasLDMError, RecipeError
from brevitas_ldm.job import JobState, run_phases
from brevitas_ldm.quant.quantize import quant_layers
from brevitas_ldm.recipe import Recipe, get_recipe
from brevitas_ldm.training.distillation import TrainingLog
from brevitas_ldm.training.distillation_set import DistillationSet
from brevitas_ldm.training.qat_phases import QATWork, qat_phases
from brevitas_ldm.workflow import PlanLike, QuantizationResult, finish_job, prepare_job


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


def qat(pipe: Any, recipe: Recipe | str, plan: PlanLike | None = None, checkpoint: str | Path | None = None,
        data: DistillationSet | None = None, calibration_prompts: Sequence[str] | None = None,
        calibration_seeds: Sequence[int] | None = None, spec: SamplingSpec | None = None, seed: int = 0,
        steps: int | None = None, progress: bool = False, cache_dir: str | Path | None = None,
        trajectory_prompts: Sequence[str] | None = None,
        before_training: Callable[[QuantizationResult], None] | None = None) -> QATResult:
    """Quantize ``pipe``'s float denoiser in place with ``recipe`` (PTQ, or the PTQ ``checkpoint``), then fine-tune
    it by distillation from the float denoiser following ``recipe.qat``: :func:`prepare_qat`, then the
    :func:`~brevitas_ldm.training.qat_phases.qat_phases` (see :func:`prepare_qat` for the arguments)."""
    state = prepare_qat(pipe, recipe, plan, checkpoint, data, calibration_prompts, calibration_seeds, spec, seed,
                        steps, progress, cache_dir, trajectory_prompts, before_training)
    return qat_result(run_phases(qat_phases(state), state))


def prepare_qat(pipe: Any, recipe: Recipe | str, plan: PlanLike | None = None,
                checkpoint: str | Path | None = None, data: DistillationSet | None = None,
                calibration_prompts: Sequence[str] | None = None, calibration_seeds: Sequence[int] | None = None,
                spec: SamplingSpec | None = None, seed: int = 0, steps: int | None = None, progress: bool = False,
                cache_dir: str | Path | None = None, trajectory_prompts: Sequence[str] | None = None,
                before_training: Callable[[QuantizationResult], None] | None = None) -> JobState:
    """The checked state a QAT job's phases run on (and are priced on, ``price_phases(qat_phases(state), state)``):
    ``pipe``'s float denoiser is quantized with ``recipe`` (PTQ, or the PTQ ``checkpoint``), then fine-tuned by
    distillation from the float denoiser following ``recipe.qat``.

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
    spec = spec or SamplingSpec(batch_size=recipe.qat.batch_size)
    work = QATWork(spec=spec, seed=seed, data=data, checkpoint=checkpoint, trajectory_prompts=trajectory_prompts,
                   before_training=before_training)
    return prepare_job(pipe, recipe, calibration_prompts, calibration_seeds,
                       dataclasses.replace(spec, batch_size=recipe.calibration.batch_size), plan=plan,
                       progress=progress, cache_dir=cache_dir, qat=work)


def qat_result(state: JobState) -> QATResult:
    """What a finished QAT job hands back: the PTQ start (now trained, in place), the log, what each phase cost."""
    work = state.qat
    start_result = finish_job(state) if work.checkpoint is None else state.result
    timing = {"recording": work.recording_s, **start_result.timing_s, "training": work.log.wall_time_s}
    calls = {"recording": len(work.data), **start_result.denoiser_calls, "training": work.log.denoiser_calls}
    return QATResult(quantization=start_result, log=work.log, data=work.data,
                     trained_parameters=work.trainable.count(), merged_adapters=work.merged_adapters,
                     loss_before=work.loss_before, loss_after=work.loss_after, timing_s=timing, denoiser_calls=calls)
