"""QAT as phases of the job: record the float trajectories, start from PTQ (the quantize job's own phases, or a PTQ
checkpoint), then distil. :func:`~brevitas_ldm.training.qat.qat` runs :func:`qat_phases` through the same
:func:`~brevitas_ldm.job.run.run_phases` loop as the quantize job, so each phase is switched on by the recipe, priced
by the object that does the work, and has its calls counted against that price."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brevitas_ldm.checkpoint.folder import load_quantized, read_checkpoint_meta, read_checkpoint_recipe
from brevitas_ldm.cost import Phase
from brevitas_ldm.denoiser.loading import pipeline_source
from brevitas_ldm.denoiser.sampling import SamplingSpec, get_denoiser, sampling_calls
from brevitas_ldm.evaluation.prompts import calibration_set
from brevitas_ldm.job import QUANTIZE_PHASES, JobPhase, JobState, QuantizationResult
from brevitas_ldm.planning.plan import PLAN_FILE, read_plan
from brevitas_ldm.quant.quantize import read_precisions
from brevitas_ldm.recipe import Recipe
from brevitas_ldm.training.adapters import merge_adapters
from brevitas_ldm.training.distillation import (
    TrainableParameters,
    TrainingLog,
    distil,
    mean_distillation_loss,
    select_trainable,
)
from brevitas_ldm.training.distillation_set import DistillationSet, record_trajectories

#: The loss before and after training is measured on up to this many recorded calls.
LOSS_CALLS = 64


def loss_stride(recorded: int) -> int:
    """Every how many recorded calls the loss before and after training is measured (about :data:`LOSS_CALLS`)."""
    return max(1, recorded // LOSS_CALLS)


@dataclass
class QATWork:
    """What the QAT phases share beyond the quantize job's state: their inputs and what they produce."""

    spec: SamplingSpec                      # how trajectories are sampled (its batch size is the training batch)
    seed: int
    data: DistillationSet | None = None     # given (an image folder) or recorded by :class:`RecordingPhase`
    checkpoint: str | Path | None = None    # a PTQ checkpoint to start from instead of the quantize phases
    trajectory_prompts: Sequence[str] | None = None
    before_training: Callable[[Any], None] | None = None
    log: TrainingLog | None = None
    trainable: TrainableParameters | None = None
    merged_adapters: int = 0
    loss_before: float = float("nan")
    loss_after: float = float("nan")
    recording_s: float = 0.0


class RecordingPhase(JobPhase):
    """The float pipeline samples ``qat.num_prompts`` trajectories and keeps every denoiser call (skipped when the
    distillation set is given)."""

    name = "recording"
    key = "recording"

    def enabled(self, state: JobState) -> bool:
        return state.qat.data is None

    def _trajectories(self, state: JobState):
        work = state.qat
        prompts = list(work.trajectory_prompts) if work.trajectory_prompts else None
        return calibration_set(state.recipe.qat.num_prompts, model=pipeline_source(state.pipe), prompts=prompts)

    def cost(self, state: JobState) -> Phase:
        return Phase(self.name, sampling_calls(state.recipe.qat.num_prompts, state.qat.spec), False,
                     state.qat.spec.batch_size)

    def run(self, state: JobState) -> None:
        start = time.perf_counter()
        trajectories = self._trajectories(state)
        state.qat.data = record_trajectories(state.pipe, trajectories.prompts, trajectories.seeds, state.qat.spec,
                                             progress=state.progress)
        state.qat.recording_s = time.perf_counter() - start


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


class CheckpointStartPhase(JobPhase):
    """The PTQ start read from a checkpoint (instead of the quantize phases): its layers, precisions and scales."""

    name = "checkpoint start"
    key = "checkpoint"

    def run(self, state: JobState) -> None:
        result = checkpoint_start(state.pipe, state.qat.checkpoint, state.recipe)
        result.counted_calls.update(state.result.counted_calls)      # the recording's count stays with the job
        state.result, state.recipe = result, result.recipe
        state.layer_precisions = result.precisions


class BeforeTrainingPhase(JobPhase):
    """The PTQ start shown to the caller's ``before_training`` before any parameter moves (the command evaluates it
    there). Its calls are the caller's, not the job's: the plan of work has no row for them."""

    name = "before training"
    key = "before_training"

    def enabled(self, state: JobState) -> bool:
        return state.qat.before_training is not None

    def run(self, state: JobState) -> None:
        state.result.precisions = state.layer_precisions
        state.qat.before_training(state.result)


class DistillationPhase(JobPhase):
    """The quant layers train by distillation from the recorded float calls (``qat.steps`` calls, one per step) and
    adapters are merged."""

    name = "training"
    key = "training"

    def cost(self, state: JobState) -> Phase:
        """One call per training step, plus the loss of the PTQ start and of the result on every
        ``len(data) // 64``-th recorded call (each a quantized call of one recorded batch)."""
        work = state.qat
        recorded = len(work.data) if work.data is not None else sampling_calls(state.recipe.qat.num_prompts, work.spec)
        loss_calls = math.ceil(recorded / loss_stride(recorded))
        return Phase(self.name, state.recipe.qat.steps + 2 * loss_calls, True, work.spec.batch_size)

    def run(self, state: JobState) -> None:
        work = state.qat
        denoiser = get_denoiser(state.pipe)
        every = loss_stride(len(work.data))     # the cost above counts these calls too
        work.loss_before = mean_distillation_loss(denoiser, work.data, every)
        work.trainable = select_trainable(denoiser, state.recipe.qat, work.seed)
        work.log = distil(denoiser, work.data, state.recipe.qat, work.trainable, work.seed, progress=state.progress)
        work.merged_adapters = merge_adapters(denoiser)
        denoiser.eval()
        work.loss_after = mean_distillation_loss(denoiser, work.data, every)


def qat_phases(state: JobState) -> tuple[JobPhase, ...]:
    """What :func:`~brevitas_ldm.training.qat.qat` runs on ``state``, in order: recording, the PTQ start (the
    quantize job's phases, or the checkpoint), the caller's look at the PTQ start, training."""
    start = (CheckpointStartPhase(),) if state.qat.checkpoint is not None else QUANTIZE_PHASES
    return (RecordingPhase(), *start, BeforeTrainingPhase(), DistillationPhase())
