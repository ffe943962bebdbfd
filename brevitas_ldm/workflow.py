"""The whole strategy on a pipeline: analyse, plan, smooth, quantize, calibrate.

:func:`quantize_pipeline` is the paper's recipe as one call, each step switched on or off by the recipe:

1. global SQNR analysis of the blocks -> a per-block precision plan (``[analysis] global``, ``[plan]``);
2. local SQNR analysis of the layers under that plan (``[analysis] local``);
3. SmoothQuant on every layer or on the worst activation-limited layers (``[smoothquant]``), on the float model;
4. Brevitas quantization following the plan; GPTQ rounding of the weights when ``[weights] rounding = "gptq"``;
   then activation calibration (``[calibration] mode``).

The pipeline is modified in place (its denoiser becomes a Brevitas fake-quantized model) and returned in a
:class:`QuantizationResult` that also carries the reports, the plan and the cost of each phase.

Each step is a phase object of :mod:`brevitas_ldm.job` (:data:`~brevitas_ldm.job.QUANTIZE_PHASES`): the recipe
switches it on, it prices itself for the plan of work, and it runs; this module builds the job's state
(:func:`prepare_job`), runs the list and sums what the phases measured (:func:`finish_job`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from brevitas_ldm.denoiser.blocks import get_blocks
from brevitas_ldm.denoiser.loading import pipeline_source
from brevitas_ldm.denoiser.sampling import SamplingSpec, check_spec, get_denoiser
from brevitas_ldm.evaluation.prompts import calibration_set
from brevitas_ldm.job import QUANTIZE_PHASES, JobState, run_phases
from brevitas_ldm.job.result import PlanLike, QuantizationResult
from brevitas_ldm.job.state import analysis_samples, calibration_spec
from brevitas_ldm.planning.plan import Plan, read_plan
from brevitas_ldm.quant.quantize import resolve_precisions
from brevitas_ldm.recipe import Recipe, get_recipe

__all__ = ["PlanLike", "QuantizationResult", "analysis_samples", "calibration_spec", "check_job", "finish_job",
           "prepare_job", "quantize_pipeline"]


def check_job(pipe: Any, recipe: Recipe | str, spec: SamplingSpec, plan: PlanLike | None = None) -> None:
    """Refuse up front, before any sampling, what the job would otherwise find part-way (after the FP evaluation or
    the analysis): step counts the scheduler cannot sample (the calibration runs' and the global analysis' own),
    plan entries that name no block or layer of this denoiser, and ``skip_layers`` entries that name no layer."""
    recipe = get_recipe(recipe)
    steps_key = "calibration.sampling_steps (--calibration-steps)" if recipe.calibration.sampling_steps else "--steps"
    check_spec(pipe, calibration_spec(recipe, spec), steps_key)
    if recipe.analysis.global_ and recipe.analysis.steps and plan is None:
        check_spec(pipe, dataclasses.replace(spec, num_inference_steps=recipe.analysis.steps), "[analysis] steps")
    if isinstance(plan, (str, Path)):
        plan = read_plan(plan)
    denoiser = get_denoiser(pipe)
    if isinstance(plan, Plan):
        plan = {**{block.name: plan.default for block in get_blocks(denoiser)}, **plan.precisions}
    resolve_precisions(denoiser, recipe, dict(plan) if plan is not None else None)


def prepare_job(pipe: Any, recipe: Recipe | str, calibration_prompts: Sequence[str] | None = None,
                calibration_seeds: Sequence[int] | None = None, spec: SamplingSpec | None = None,
                plan: PlanLike | None = None, progress: bool = False, cache_dir: str | Path | None = None,
                **state_fields: Any) -> JobState:
    """The checked state a quantize job's phases run on (and are priced on): defaults filled in, the plan read,
    :func:`check_job` passed. ``state_fields``: further :class:`~brevitas_ldm.job.JobState` fields (the command's
    ``evaluation``, ``analyze``'s ``model_id`` and ``local``)."""
    recipe = get_recipe(recipe)
    spec = spec or SamplingSpec(batch_size=recipe.calibration.batch_size)
    if calibration_prompts is None:
        default_set = calibration_set(recipe.calibration.num_prompts, model=pipeline_source(pipe))
        calibration_prompts, calibration_seeds = list(default_set.prompts), list(default_set.seeds)
    elif calibration_seeds is None:
        calibration_seeds = [10_000 + i for i in range(len(calibration_prompts))]
    if isinstance(plan, (str, Path)):
        plan = read_plan(plan)
    check_job(pipe, recipe, spec, plan)
    return JobState(pipe=pipe, recipe=recipe, calibration_prompts=list(calibration_prompts),
                    calibration_seeds=list(calibration_seeds), spec=spec,
                    result=QuantizationResult(pipeline=pipe, recipe=recipe, precisions={}), plan=plan,
                    progress=progress, cache_dir=cache_dir, **state_fields)


def finish_job(state: JobState) -> QuantizationResult:
    """The result, with the two analyses' time and calls summed under ``analysis`` (what the report shows)."""
    result = state.result
    result.timing_s["analysis"] = (result.timing_s.get("global_analysis", 0.0)
                                   + result.timing_s.get("local_analysis", 0.0))
    result.denoiser_calls["analysis"] = (result.denoiser_calls.get("global_analysis", 0)
                                         + result.denoiser_calls.get("local_analysis", 0))
    result.precisions = state.layer_precisions
    return result


def quantize_pipeline(pipe: Any, recipe: Recipe | str, calibration_prompts: Sequence[str] | None = None,
                      calibration_seeds: Sequence[int] | None = None, spec: SamplingSpec | None = None,
                      plan: PlanLike | None = None, progress: bool = False,
                      cache_dir: str | Path | None = None) -> QuantizationResult:
    """Quantize ``pipe``'s denoiser in place following ``recipe``; see the module docstring for the steps.

    ``calibration_prompts``/``calibration_seeds`` feed calibration, SmoothQuant statistics and the analyses
    (default: ``recipe.calibration.num_prompts`` prompts of the pipeline's classes, digits unless it is another
    embedded model, with seeds from 10000, disjoint from evaluation's).
    ``plan``: a :class:`~brevitas_ldm.planning.plan.Plan`, a plan.json path, or a name -> precision mapping; it replaces
    the global analysis. ``cache_dir`` stores the global analysis so re-planning is fast.
    """
    state = prepare_job(pipe, recipe, calibration_prompts, calibration_seeds, spec, plan, progress, cache_dir)
    return finish_job(run_phases(QUANTIZE_PHASES, state))
