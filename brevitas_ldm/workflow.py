"""The whole strategy on a pipeline: analyse, plan, smooth, quantize, calibrate.

:func:`quantize_pipeline` is the paper's recipe as one call, each step switched on or off by the recipe:

1. global SQNR analysis of the blocks -> a per-block precision plan (``[analysis] global``, ``[plan]``);
2. local SQNR analysis of the layers under that plan (``[analysis] local``);
3. SmoothQuant on every layer or on the worst activation-limited layers (``[smoothquant]``), on the float model;
4. Brevitas quantization following the plan; GPTQ rounding of the weights when ``[weights] rounding = "gptq"``;
   then activation calibration (``[calibration] mode``).

The pipeline is modified in place (its denoiser becomes a Brevitas fake-quantized model) and returned in a
:class:`QuantizationResult` that also carries the reports, the plan and the cost of each phase.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brevitas_ldm.analysis.block_report import BlockReport
from brevitas_ldm.analysis.block_sensitivity import BlockSensitivity
from brevitas_ldm.analysis.layer_report import LayerReport, select_for_smoothing
from brevitas_ldm.analysis.layer_sensitivity import LayerSensitivity
from brevitas_ldm.checkpoint import save_checkpoint
from brevitas_ldm.denoiser.blocks import get_blocks
from brevitas_ldm.denoiser.loading import pipeline_source
from brevitas_ldm.denoiser.sampling import SamplingSpec, denoiser_component, generate, get_denoiser, max_noise_timestep
from brevitas_ldm.evaluation.prompts import calibration_set
from brevitas_ldm.planning.plan import Plan, read_plan
from brevitas_ldm.planning.planners import choose_plan
from brevitas_ldm.precision import Precision
from brevitas_ldm.quant.calibration import calibrate_pipeline, recipe_calibration
from brevitas_ldm.quant.gptq import GptqResult, GptqRounding
from brevitas_ldm.quant.quantize import quantize_denoiser, resolve_precisions
from brevitas_ldm.quant.smoothquant import SmoothingResult, SmoothQuantStep
from brevitas_ldm.recipe import Recipe, get_recipe

#: What ``plan=`` accepts: a Plan, a plan.json path, or a block/layer name -> precision mapping.
PlanLike = Plan | str | Path | Mapping[str, str | Precision]


@dataclass
class QuantizationResult:
    """What :func:`quantize_pipeline` did and what it cost."""

    pipeline: Any
    recipe: Recipe
    precisions: dict[str, Precision]
    plan: Plan | None = None                   # the plan given or chosen by the global analysis
    block_report: BlockReport | None = None    # the global analysis, when it ran
    layer_report: LayerReport | None = None    # the local analysis, when it ran
    smoothing: SmoothingResult = field(default_factory=SmoothingResult)
    gptq: GptqResult = field(default_factory=GptqResult)
    timing_s: dict[str, float] = field(default_factory=dict)
    denoiser_calls: dict[str, int] = field(default_factory=dict)

    def plan_or_uniform(self, model: str | None) -> Plan:
        """The plan, or for a uniform recipe (no analysis plan) one saying so, so every folder has a plan.json in
        the same file format."""
        return self.plan or Plan(precisions={}, method="uniform", default=str(self.recipe.default_precision),
                                 model=model, recipe=self.recipe.name)

    def save(self, directory: str | Path, model: str | None = None, lora: Mapping[str, Any] | None = None) -> Path:
        """Quantized pipeline folder (quantized denoiser state + recipe + plan + a reference to the base pipeline,
        ``model`` or where the pipeline was loaded from), reloadable with :func:`brevitas_ldm.from_pretrained` in
        one call, or onto an FP pipeline with :func:`load_quantized`. ``lora``: the LoRA fused into the base
        (:class:`~brevitas_ldm.denoiser.lora.FusedLora` as a dict), which reloading fuses again."""
        model = model or pipeline_source(self.pipeline)
        return save_checkpoint(get_denoiser(self.pipeline), self.recipe, Path(directory), model=model,
                               smoothing_alphas=self.smoothing.alphas, plan=self.plan_or_uniform(model),
                               denoiser_component=denoiser_component(self.pipeline), lora=lora)


def _block_plan(pipe: Any, recipe: Recipe, plan: PlanLike | None, prompts: Sequence, seeds: Sequence[int],
                spec: SamplingSpec, progress: bool, cache_dir: str | Path | None,
                result: QuantizationResult) -> Mapping[str, Any] | None:
    """Block/layer -> precision overrides: a given plan, the global analysis' choice, or None (uniform)."""
    if plan is not None:
        if isinstance(plan, (str, Path)):
            plan = read_plan(plan)
        if isinstance(plan, Plan):
            result.plan = plan
            # Blocks the plan does not list take the plan's default (which may differ from the recipe's).
            filled = {block.name: plan.default for block in get_blocks(get_denoiser(pipe))}
            return {**filled, **plan.precisions}
        return dict(plan)
    if not recipe.analysis.global_:
        return None
    start = time.perf_counter()
    report = BlockSensitivity(recipe, prompts, seeds, spec, progress=progress).run(pipe, cache_dir=cache_dir)
    result.block_report = report
    result.plan = choose_plan(report, recipe.plan, recipe.default_precision)
    result.timing_s["global_analysis"] = time.perf_counter() - start
    # Calls this run made: a report read from --cache-dir cost none (the report keeps what computing it cost).
    result.denoiser_calls["global_analysis"] = 0 if report.from_cache else int(report.denoiser_calls.get("total", 0))
    return result.plan.precisions


def analysis_samples(recipe: Recipe, prompts: Sequence, seeds: Sequence[int]) -> tuple[list, list[int]]:
    """The analyses' samples: the first ``analysis.num_prompts`` of the calibration samples."""
    count = min(recipe.analysis.num_prompts, len(prompts))
    return list(prompts[:count]), list(seeds[:count])


def calibration_spec(recipe: Recipe, spec: SamplingSpec) -> SamplingSpec:
    """How the final calibration samples: ``spec`` with ``calibration.sampling_steps`` steps when the recipe sets it."""
    if recipe.calibration.sampling_steps:
        return dataclasses.replace(spec, num_inference_steps=recipe.calibration.sampling_steps)
    return spec


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
    recipe = get_recipe(recipe)
    spec = spec or SamplingSpec(batch_size=recipe.calibration.batch_size)
    if calibration_prompts is None:
        default_set = calibration_set(recipe.calibration.num_prompts, model=pipeline_source(pipe))
        calibration_prompts, calibration_seeds = list(default_set.prompts), list(default_set.seeds)
    elif calibration_seeds is None:
        calibration_seeds = [10_000 + i for i in range(len(calibration_prompts))]
    calibration_prompts, calibration_seeds = list(calibration_prompts), list(calibration_seeds)
    analysis_prompts, analysis_seeds = analysis_samples(recipe, calibration_prompts, calibration_seeds)
    denoiser = get_denoiser(pipe)
    result = QuantizationResult(pipeline=pipe, recipe=recipe, precisions={})

    overrides = _block_plan(pipe, recipe, plan, analysis_prompts, analysis_seeds, spec, progress, cache_dir, result)
    layer_precisions = resolve_precisions(denoiser, recipe, overrides)

    if recipe.analysis.local:
        start = time.perf_counter()
        report = LayerSensitivity(recipe, analysis_prompts, analysis_seeds, spec, precisions=layer_precisions,
                                   progress=progress).run(pipe)
        result.layer_report = report
        result.timing_s["local_analysis"] = time.perf_counter() - start
        result.denoiser_calls["local_analysis"] = int(sum(report.denoiser_calls.values()))

    if recipe.smoothquant.enabled:
        result.smoothing = _smooth(pipe, recipe, layer_precisions, result.layer_report, calibration_prompts,
                                   calibration_seeds, spec, progress)
        result.timing_s["smoothing"] = result.smoothing.wall_time_s
        result.denoiser_calls["smoothing"] = result.smoothing.denoiser_calls

    quantize_denoiser(denoiser, recipe, layer_precisions)
    if recipe.weights.rounding == "gptq":
        result.gptq = _round_by_gptq(pipe, recipe, calibration_prompts, calibration_seeds, spec, progress)
        result.timing_s["gptq"] = result.gptq.wall_time_s
        result.denoiser_calls["gptq"] = result.gptq.denoiser_calls

    start = time.perf_counter()
    calibration = calibrate_pipeline(pipe, recipe, calibration_prompts, calibration_seeds,
                                     calibration_spec(recipe, spec), progress=progress)
    result.timing_s["calibration"] = time.perf_counter() - start
    result.denoiser_calls["calibration"] = calibration.calls
    result.timing_s["analysis"] = result.timing_s.get("global_analysis", 0.0) + result.timing_s.get("local_analysis", 0.0)
    result.denoiser_calls["analysis"] = (result.denoiser_calls.get("global_analysis", 0)
                                         + result.denoiser_calls.get("local_analysis", 0))
    result.precisions = layer_precisions
    return result


def _smooth(pipe: Any, recipe: Recipe, layer_precisions: Mapping[str, Precision], layer_report: LayerReport | None,
            prompts: list, seeds: list[int], spec: SamplingSpec, progress: bool) -> SmoothingResult:
    """SmoothQuant on the float denoiser: all activation-quantized layers, or the local analysis' worst ones."""
    section = recipe.smoothquant
    quantized_inputs = [name for name, p in layer_precisions.items() if p.act_bits is not None]
    if section.scope == "sensitive":
        selected = select_for_smoothing(layer_report, section.max_modules, section.min_activation_share)
        modules = [name for name in selected if name in set(quantized_inputs)]
    else:
        modules = quantized_inputs
    if not modules:
        return SmoothingResult()
    max_noise = max_noise_timestep(pipe)

    def run_calibration_data(denoiser) -> None:
        generate(pipe, prompts, seeds, spec, output_type="latent", progress=progress, desc="SmoothQuant statistics")

    step = SmoothQuantStep.from_recipe(
        recipe, modules=modules, precisions=layer_precisions,
        calibration=lambda model: recipe_calibration(model, recipe, spec.num_inference_steps, max_noise))
    return step.apply(get_denoiser(pipe), run_calibration_data)


def _round_by_gptq(pipe: Any, recipe: Recipe, prompts: list, seeds: list[int], spec: SamplingSpec,
                   progress: bool) -> GptqResult:
    """GPTQ on the quantized denoiser, its Hessians from the float inputs of the calibration samples' whole
    trajectory (every step: the rounding serves every step, unlike activation ranges, which single-step
    calibration takes at the maximum-noise step)."""
    def run_calibration_data(denoiser) -> None:
        generate(pipe, prompts, seeds, calibration_spec(recipe, spec), output_type="latent", progress=progress,
                 desc="GPTQ statistics")

    return GptqRounding().apply(get_denoiser(pipe), run_calibration_data)
