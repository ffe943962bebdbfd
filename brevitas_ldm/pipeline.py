"""The whole strategy on a pipeline: analyse, plan, smooth, quantize, calibrate.

:func:`quantize_pipeline` is the paper's recipe as one call, each step switched on or off by the recipe:

1. global SQNR analysis of the blocks -> a per-block precision plan (``[analysis] global``, ``[plan]``);
2. local SQNR analysis of the layers under that plan (``[analysis] local``);
3. SmoothQuant on every layer or on the worst activation-limited layers (``[smoothquant]``), on the float model;
4. Brevitas quantization following the plan, then activation calibration (``[calibration] mode``).

The pipeline is modified in place (its denoiser becomes a Brevitas fake-quantized model) and returned in a
:class:`QuantizationResult` that also carries the reports, the plan and the cost of each phase.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brevitas_ldm.calibration import calibrate_pipeline, recipe_calibration
from brevitas_ldm.evaluation.prompts import calibration_set
from brevitas_ldm.precision import Precision
from brevitas_ldm.quantize import quantize_denoiser, resolve_precisions
from brevitas_ldm.recipe import Recipe, get_recipe
from brevitas_ldm.sampling import SamplingSpec, generate, get_denoiser


@dataclass
class QuantizationResult:
    """What :func:`quantize_pipeline` did and what it cost."""

    pipeline: Any
    recipe: Recipe
    precisions: dict[str, Precision]
    plan: Any = None              # brevitas_ldm.plan.Plan when the global analysis chose it
    block_report: Any = None      # brevitas_ldm.sensitivity.global_.BlockReport
    module_report: Any = None     # brevitas_ldm.sensitivity.local.ModuleReport
    smoothing: dict[str, Any] = field(default_factory=dict)
    timing_s: dict[str, float] = field(default_factory=dict)
    denoiser_calls: dict[str, int] = field(default_factory=dict)

    def save(self, directory: str | Path, model: str | None = None) -> Path:
        """Checkpoint (quantized denoiser state + recipe + plan), reloadable with :func:`load_quantized`."""
        from brevitas_ldm.checkpoint import save_checkpoint

        return save_checkpoint(self, Path(directory), model=model)


def _block_plan(pipe: Any, recipe: Recipe, plan: Any, prompts: Sequence, seeds: Sequence[int], spec: SamplingSpec,
                progress: bool, cache_dir: str | Path | None, result: QuantizationResult) -> Mapping[str, Any] | None:
    """Block/layer -> precision overrides: a given plan, the global analysis' choice, or None (uniform)."""
    from brevitas_ldm.plan import Plan, choose_plan, read_plan

    if plan is not None:
        if isinstance(plan, (str, Path)):
            plan = read_plan(plan)
        if isinstance(plan, Plan):
            result.plan = plan
            # Blocks the plan does not list take the plan's default (which may differ from the recipe's).
            from brevitas_ldm.blocks import get_blocks

            filled = {block.name: plan.default for block in get_blocks(get_denoiser(pipe))}
            return {**filled, **plan.precisions}
        return dict(plan)
    if not recipe.analysis.global_:
        return None
    from brevitas_ldm.sensitivity.global_ import BlockSensitivity

    start = time.perf_counter()
    report = BlockSensitivity(recipe, prompts, seeds, spec, progress=progress).run(pipe, cache_dir=cache_dir)
    result.block_report = report
    result.plan = choose_plan(report, recipe.plan, recipe.default_precision)
    result.timing_s["global_analysis"] = time.perf_counter() - start
    result.denoiser_calls["global_analysis"] = int(report.denoiser_calls.get("total", 0))
    return result.plan.precisions


def quantize_pipeline(pipe: Any, recipe: Recipe | str, calibration_prompts: Sequence[str] | None = None,
                      calibration_seeds: Sequence[int] | None = None, spec: SamplingSpec | None = None,
                      plan: Any = None, progress: bool = False,
                      cache_dir: str | Path | None = None) -> QuantizationResult:
    """Quantize ``pipe``'s denoiser in place following ``recipe``; see the module docstring for the steps.

    ``calibration_prompts``/``calibration_seeds`` feed calibration, SmoothQuant statistics and the analyses
    (default: ``recipe.calibration.num_prompts`` digit prompts with seeds from 10000, disjoint from evaluation's).
    ``plan``: a :class:`~brevitas_ldm.plan.Plan`, a plan.json path, or a name -> precision mapping; it replaces
    the global analysis. ``cache_dir`` stores the global analysis so re-planning is fast.
    """
    recipe = get_recipe(recipe)
    spec = spec or SamplingSpec(batch_size=recipe.calibration.batch_size)
    if calibration_prompts is None:
        default_set = calibration_set(recipe.calibration.num_prompts)
        calibration_prompts, calibration_seeds = list(default_set.prompts), list(default_set.seeds)
    elif calibration_seeds is None:
        calibration_seeds = [10_000 + i for i in range(len(calibration_prompts))]
    calibration_prompts, calibration_seeds = list(calibration_prompts), list(calibration_seeds)
    n_analysis = min(recipe.analysis.num_prompts, len(calibration_prompts))
    analysis_prompts, analysis_seeds = calibration_prompts[:n_analysis], calibration_seeds[:n_analysis]
    denoiser = get_denoiser(pipe)
    result = QuantizationResult(pipeline=pipe, recipe=recipe, precisions={})

    overrides = _block_plan(pipe, recipe, plan, analysis_prompts, analysis_seeds, spec, progress, cache_dir, result)
    layer_precisions = resolve_precisions(denoiser, recipe, overrides)

    if recipe.analysis.local:
        from brevitas_ldm.sensitivity.local import ModuleSensitivity

        start = time.perf_counter()
        report = ModuleSensitivity(recipe, analysis_prompts, analysis_seeds, spec, precisions=layer_precisions,
                                   progress=progress).run(pipe)
        result.module_report = report
        result.timing_s["local_analysis"] = time.perf_counter() - start
        result.denoiser_calls["local_analysis"] = int(sum(getattr(report, "denoiser_calls", {}).values()))

    if recipe.smoothquant.enabled:
        result.smoothing = _smooth(pipe, recipe, layer_precisions, result.module_report, calibration_prompts,
                                   calibration_seeds, spec, progress)
        result.timing_s["smoothing"] = float(result.smoothing.get("wall_time_s", 0.0))
        result.denoiser_calls["smoothing"] = int(result.smoothing.get("denoiser_calls", 0))

    start = time.perf_counter()
    quantize_denoiser(denoiser, recipe, layer_precisions)
    calibration_spec = spec
    if recipe.calibration.sampling_steps:
        calibration_spec = SamplingSpec(recipe.calibration.sampling_steps, spec.guidance_scale, spec.batch_size)
    calibration = calibrate_pipeline(pipe, recipe, calibration_prompts, calibration_seeds, calibration_spec,
                                     progress=progress)
    result.timing_s["calibration"] = time.perf_counter() - start
    result.denoiser_calls["calibration"] = calibration.calls
    result.timing_s["analysis"] = result.timing_s.get("global_analysis", 0.0) + result.timing_s.get("local_analysis", 0.0)
    result.denoiser_calls["analysis"] = (result.denoiser_calls.get("global_analysis", 0)
                                         + result.denoiser_calls.get("local_analysis", 0))
    result.precisions = layer_precisions
    return result


def _smooth(pipe: Any, recipe: Recipe, layer_precisions: Mapping[str, Precision], module_report: Any,
            prompts: list, seeds: list[int], spec: SamplingSpec, progress: bool) -> dict[str, Any]:
    """SmoothQuant on the float denoiser: all activation-quantized layers, or the local analysis' worst ones."""
    from brevitas_ldm.sensitivity.local import select_for_smoothing
    from brevitas_ldm.smoothing import SmoothQuantStep

    section = recipe.smoothquant
    quantized_inputs = [name for name, p in layer_precisions.items() if p.act_bits is not None]
    if section.scope == "sensitive":
        selected = select_for_smoothing(module_report, section.max_modules, section.min_activation_share)
        modules = [name for name in selected if name in set(quantized_inputs)]
    else:
        modules = quantized_inputs
    if not modules:
        return {"modules": [], "alphas": {}, "denoiser_calls": 0, "wall_time_s": 0.0}
    num_train = int(getattr(pipe.scheduler.config, "num_train_timesteps", 1000))

    def run_calibration_data(denoiser) -> None:
        generate(pipe, prompts, seeds, spec, output_type="latent", progress=progress, desc="SmoothQuant statistics")

    step = SmoothQuantStep.from_recipe(
        recipe, modules=modules, precisions=layer_precisions,
        calibration=lambda model: recipe_calibration(model, recipe, spec.num_inference_steps, num_train))
    return step.apply(get_denoiser(pipe), run_calibration_data)
