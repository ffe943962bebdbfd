"""Local (layer-level) SQNR analysis: how much noise each layer makes when it alone is quantized.

The paper's local analysis measures, for every quantizable layer, the SQNR of its output when *only that layer*
is quantized and it receives its full-precision input ("relative SQNR"). Doing that one layer at a time would
cost one sampling run per layer; here every layer is measured in the *same* FP sampling run: a forward hook on
each float layer runs the layer's quantized twin on the very input the float layer just received and feeds a
streaming :class:`~brevitas_ldm.sqnr.SQNRMeter` with (FP output, twin output). The FP run is never perturbed, so
every layer sees exactly the input it has in the float model, at every sampling step.

The twins are the layers of ``quantize_denoiser(deepcopy(denoiser), recipe, precisions)``: the very quant layers
the main job builds, with the recipe's quantizers at each layer's planned precision, and their activation ranges
calibrated *before* the measurement with the recipe's own calibration mode (single-step, all steps or uniform
steps, :func:`brevitas_ldm.quant.calibration.recipe_calibration`). Each twin is run three times per call, its Brevitas
quant proxies toggled through their ``disable_quant`` flag: weights and activations quantized (the relative
SQNR), weights only, and activations only, which splits each layer's noise into a weight-caused and an
activation-caused part; SmoothQuant only helps the second.

Measurements are kept per sampling step (from :func:`brevitas_ldm.denoiser.sampling.denoiser_step_hook`); a layer is
*time-sensitive* when its per-step SQNR spans more than ``time_sensitive_db`` dB over the trajectory (default
6 dB: its worst step is 4x noisier than its best), i.e. a single static activation range cannot serve all its steps
equally. (3 dB flagged 58% of the layers of tiny-sd-digits at W8A8, 6 dB flags 34%, the ones that stand out.)

In a torch.distributed job (:mod:`brevitas_ldm.process.ranks`) the sampling steps are split: every rank runs the whole
FP sampling (each step's input needs the steps before it) but runs the twins, three quantized passes of every layer
and the bulk of the cost, only at its own steps (step s on rank s mod N). The per-step meters are gathered and the
report is the single process' report, plus ``work_per_rank``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from brevitas_ldm.analysis.layer_report import (
    DEFAULT_TIME_SENSITIVE_DB,
    VARIANTS,
    LayerEntry,
    LayerReport,
)
from brevitas_ldm.compat import hookless_deepcopy
from brevitas_ldm.denoiser.blocks import get_blocks, layer_to_block, quantizable_layers
from brevitas_ldm.denoiser.layer_categories import layer_category
from brevitas_ldm.denoiser.names import user_facing_names
from brevitas_ldm.denoiser.sampling import (
    CallCounter,
    Condition,
    SamplingSpec,
    denoiser_step_hook,
    find_timestep,
    generate,
    get_denoiser,
    max_noise_timestep,
    pipeline_denoiser,
    sampling_calls,
)
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.precision import FLOAT, Precision
from brevitas_ldm.process.ranks import Ranks, all_gather, current_ranks, peak_rss_bytes
from brevitas_ldm.quant.calibration import calibration_calls, recipe_calibration
from brevitas_ldm.quant.probes import TwinProbe, split_twin
from brevitas_ldm.quant.quantize import (
    quant_layers,
    quantize_denoiser,
    resolve_precisions,
)
from brevitas_ldm.recipe import Recipe

RunFn = Callable[[nn.Module], Any]
CalibrationContext = Callable[[nn.Module], Any]


def analyze_layers(denoiser: nn.Module, recipe: Recipe, run_fn: RunFn, calibration_fn: RunFn,
                    precisions: Mapping[str, str | Precision] | None = None,
                    calibration: CalibrationContext | None = None,
                    time_sensitive_db: float = DEFAULT_TIME_SENSITIVE_DB, num_samples: int = 0,
                    num_inference_steps: int | None = None, modules: Sequence[str] | None = None,
                    ranks: Ranks | None = None) -> LayerReport:
    """Relative SQNR of every quantized layer of ``denoiser`` in one FP pass of ``run_fn``.

    ``calibration_fn(model)`` runs calibration data through ``model`` (the quantized copy holding the twins) inside
    ``calibration(model)`` (default: the recipe's calibration mode, which for ``uniform_steps`` needs
    ``num_inference_steps``); ``run_fn(denoiser)`` then runs the analysis
    data through the float ``denoiser`` once, with every layer's twins hooked on. The float denoiser is not
    modified. ``modules`` restricts the analysis to those user-facing layer names (e.g. to re-measure smoothed
    layers); the other layers then get no twin at all. ``ranks`` (default: the initialised torch.distributed
    group, if any) split the sampling steps; every rank returns the same report. :class:`LayerSensitivity` is the
    pipeline-level front end.
    """
    ranks = ranks or current_ranks()
    start = time.perf_counter()
    plan = resolve_precisions(denoiser, recipe, precisions)  # user-facing layer names -> precision
    twin_plan = dict(plan)
    if modules is not None:
        unknown = [name for name in modules if name not in plan]
        if unknown:
            raise BrevitasLDMError(f"{unknown[0]!r} is not a Linear/Conv2d layer of {type(denoiser).__name__}: pass "
                                   f"user-facing layer names as listed in the layer report")
        wanted = set(modules)
        twin_plan = {name: (p if name in wanted else FLOAT) for name, p in plan.items()}
    quantized = quantize_denoiser(hookless_deepcopy(denoiser), recipe, twin_plan).eval()
    context = calibration or (lambda model: recipe_calibration(model, recipe, num_inference_steps))
    counter = CallCounter(quantized)
    calibration_context = context(quantized)
    with counter, calibration_context, torch.no_grad():
        calibration_fn(quantized)
    # brevitas_ldm's calibration contexts count the calls they executed (single-step skips all later steps).
    calibration_calls = int(getattr(calibration_context, "calls", counter.count))
    twins = quant_layers(quantized)  # keyed by user-facing names, like everything below
    to_user = user_facing_names(denoiser)  # internal -> user-facing (they differ only for smoothed layers)
    layers = {to_user[name]: module for name, module in quantizable_layers(denoiser) if to_user[name] in twins}
    probe = TwinProbe(layers, {name: split_twin(twins[name]) for name in layers})
    timesteps: dict[int, float] = {}
    calls = 0

    def end_call(step: int, timestep: float, *_: Any) -> None:
        nonlocal calls
        calls += 1
        timesteps.setdefault(step, timestep)
        probe.end_call(step)

    with probe, denoiser_step_hook(denoiser, end_call) as tracker, torch.no_grad():
        def gate(module: nn.Module, args: tuple, kwargs: dict) -> None:
            probe.active = ranks.owns(tracker.peek(find_timestep(args, kwargs)[1]))

        handle = denoiser.register_forward_pre_hook(gate, with_kwargs=True) if ranks.is_distributed else None
        try:
            run_fn(denoiser)
        finally:
            if handle is not None:
                handle.remove()
    if calls == 0:
        raise BrevitasLDMError("the local analysis saw no denoiser call: run_fn(denoiser) must run data through the "
                               "denoiser it is given")
    work_per_rank = []
    if ranks.is_distributed:
        work = {"rank": ranks.rank, "steps": sorted(s for s in timesteps if ranks.owns(s)),
                "calibration_calls": calibration_calls, "denoiser_calls": calls,
                "seconds": time.perf_counter() - start, "peak_rss_bytes": peak_rss_bytes()}
        shares = all_gather((probe.steps, work), "the local analysis", ranks)
        probe.steps = {name: {variant: {} for variant in variants} for name, variants in probe.steps.items()}
        for share_steps, _ in shares:
            probe.absorb(share_steps)
        work_per_rank = [share_work for _, share_work in shares]
        calibration_calls = sum(w["calibration_calls"] for w in work_per_rank)
        calls = sum(w["denoiser_calls"] for w in work_per_rank)
    blocks = {to_user.get(name, name): block for name, block in layer_to_block(get_blocks(denoiser)).items()}
    steps = sorted(timesteps)
    entries = []
    for name, layer in layers.items():
        if not probe.steps[name]["total"]:
            continue  # a layer the data never reached (e.g. an unused embedding projection)
        total, weight, act = (probe.meter(name, v) for v in VARIANTS)
        per_step = {v: [probe.meter(name, v, s).pooled_db if s in probe.steps[name][v] else math.nan
                        for s in steps] for v in VARIANTS}
        entry = LayerEntry(
            name=name, block=blocks.get(name, "other"), category=layer_category(name),
            layer_type=type(layer).__name__, precision=plan[name], sqnr_db=total.pooled_db,
            weight_sqnr_db=weight.pooled_db, act_sqnr_db=act.pooled_db, step_sqnr_db=per_step["total"],
            step_weight_sqnr_db=per_step["weight"], step_act_sqnr_db=per_step["act"])
        entry.time_sensitive = entry.step_range_db > time_sensitive_db
        entries.append(entry)
    return LayerReport(modules=entries, recipe=recipe.name, default_precision=recipe.default_precision,
                        calibration_mode=recipe.calibration.mode, timesteps=[timesteps[s] for s in steps],
                        num_samples=num_samples,
                        denoiser_calls={"calibration": calibration_calls, "analysis": calls},
                        time_sensitive_db=time_sensitive_db, wall_time_s=time.perf_counter() - start,
                        work_per_rank=work_per_rank)


@dataclass
class LayerSensitivity:
    """Relative SQNR of every quantizable layer of a pipeline's denoiser, measured in one FP sampling run.

    ``prompts``/``seeds``: the analysis samples (one seed each); ``spec``: how they are sampled. ``precisions``:
    the plan (block or layer names -> precision) the twins follow; default the recipe's precision everywhere.
    ``calibration_prompts``/``calibration_seeds``: data for calibrating the twins' activation ranges with the
    recipe's calibration mode (default: the analysis prompts and seeds). Denoiser calls are counted in
    ``report.denoiser_calls``: ``calibration`` (twin calibration; one per batch in single-step mode) and
    ``analysis`` (the one FP run: one call per step per batch, independent of the number of layers). ``ranks``:
    the processes that split the sampling steps (default: the initialised torch.distributed group, if any).
    """

    recipe: Recipe
    prompts: Sequence[Condition]
    seeds: Sequence[int]
    spec: SamplingSpec = field(default_factory=SamplingSpec)
    precisions: Mapping[str, str | Precision] | None = None
    calibration_prompts: Sequence[Condition] | None = None
    calibration_seeds: Sequence[int] | None = None
    time_sensitive_db: float = DEFAULT_TIME_SENSITIVE_DB
    progress: bool = True
    ranks: Ranks | None = None      # default: the initialised torch.distributed group, if any

    def planned_calls(self) -> dict[str, int]:
        """Denoiser calls :meth:`run` will make, by the keys of ``report.denoiser_calls``."""
        num_calibration = len(self.calibration_prompts if self.calibration_prompts is not None else self.prompts)
        return {"calibration": calibration_calls(self.recipe, num_calibration, self.spec),
                "analysis": sampling_calls(len(self.prompts), self.spec)}

    def run(self, pipe: Any) -> LayerReport:
        if len(self.prompts) != len(self.seeds):
            raise BrevitasLDMError(f"{len(self.prompts)} prompts but {len(self.seeds)} seeds: give one seed per "
                                   f"analysis sample")
        cal_prompts = list(self.calibration_prompts if self.calibration_prompts is not None else self.prompts)
        cal_seeds = list(self.calibration_seeds if self.calibration_seeds is not None else self.seeds)
        max_noise = max_noise_timestep(pipe)

        def calibrate(model: nn.Module) -> None:
            with pipeline_denoiser(pipe, model):
                generate(pipe, cal_prompts, cal_seeds, self.spec, progress=self.progress, desc="calibrating twins")

        def run(model: nn.Module) -> None:
            generate(pipe, list(self.prompts), list(self.seeds), self.spec, progress=self.progress,
                     desc="local SQNR analysis")

        return analyze_layers(
            get_denoiser(pipe), self.recipe, run, calibrate, self.precisions,
            calibration=lambda m: recipe_calibration(m, self.recipe, self.spec.num_inference_steps, max_noise),
            time_sensitive_db=self.time_sensitive_db, num_samples=len(self.prompts),
            num_inference_steps=self.spec.num_inference_steps, ranks=self.ranks)
