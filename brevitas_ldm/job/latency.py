"""The latency side of a plan (``[plan] target``): the target runtime's latency table measured before the plan is
chosen, and the chosen plan exported and timed in that runtime after calibration, so the report can put the
predicted latency beside the measured one.

Both phases make their own denoiser calls (one to find the call's inputs, shared by both, one to capture every
layer's input, the exports' check runs and traces), which they price as they count them; their time is mostly the
runtime's, priced from the number of layers (:data:`SECONDS_PER_LAYER_KERNEL`).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from brevitas_ldm.analysis.block_sensitivity import BlockSensitivity
from brevitas_ldm.cost import Phase
from brevitas_ldm.denoiser.blocks import quantizable_layers
from brevitas_ldm.denoiser.sampling import get_denoiser
from brevitas_ldm.errors import RecipeError
from brevitas_ldm.export.exporters import export_denoiser
from brevitas_ldm.export.latency_costs import measure_latency_table, timed_rounds
from brevitas_ldm.export.wrapper import export_signature, first_call_inputs
from brevitas_ldm.job.phase import JobPhase
from brevitas_ldm.job.state import JobState
from brevitas_ldm.process.timing import interleaved_latency
from brevitas_ldm.registry import EXPORT_FORMATS, LATENCY_TARGETS

#: Export, compile and timing of one layer alone at one kernel (an AMD EPYC, tiny-sd-digits: 22 s for 133 layers
#: at 3 kernels and an empty model each): the phase's price per layer and kernel, an upper bound since layers of
#: one shape are measured once.
SECONDS_PER_LAYER_KERNEL = 0.06
#: Seconds of interleaved timed calls of the float and the planned file.
DEPLOYED_TIMING_S = 3.0
#: Denoiser calls (of one image) each phase makes, counted on tiny-sd-digits: the first call's inputs, every
#: layer's input, and the float export's check run and trace (4, all a cached table costs), plus the all-integer
#: model's calibration call and its export's check run, trace and export passes (6) when the table is measured;
#: the quantized export's check run and Brevitas' trace and export passes, on the table's inputs (none for an
#: all-float plan, whose deployment is the float file).
TABLE_CALLS, CACHED_TABLE_CALLS, DEPLOYED_CALLS = 10, 4, 4


def _first_inputs(state: JobState) -> dict:
    """The denoiser's keyword tensors for one image's first call (one prompt, classifier-free guidance as
    sampled)."""
    return first_call_inputs(state.pipe, state.calibration_prompts[:1], state.calibration_seeds[:1], state.spec)


def _menu(state: JobState) -> list:
    target = LATENCY_TARGETS.get(state.recipe.plan.target)
    menu = list(state.recipe.plan.menu)
    for extra in (state.recipe.default_precision, state.recipe.plan.high_precision):
        try:
            target.kernel(extra)
        except RecipeError:     # an fp8 high precision the target cannot deploy stays off its menu
            continue
        if extra not in menu:
            menu.append(extra)
    return menu


class LatencyTablePhase(JobPhase):
    """Measure (or read from ``--cache-dir``) the target's per-layer latency table, and write the float denoiser
    in the target's form for the deployed-plan timing."""

    name = "latency table"
    key = "latency_table"

    def enabled(self, state: JobState) -> bool:
        return bool(state.recipe.plan.target)

    def cost(self, state: JobState) -> Phase:
        target = LATENCY_TARGETS.get(state.recipe.plan.target)
        kernels = {target.kernel(p) for p in _menu(state)} | {"float", "empty"}
        layers = len(quantizable_layers(get_denoiser(state.pipe)))
        return Phase(self.name, TABLE_CALLS, quantized=False, batch_size=1, at_most=True,
                     extra_s=SECONDS_PER_LAYER_KERNEL * layers * len(kernels))

    def run(self, state: JobState) -> None:
        start = time.perf_counter()
        recipe = state.recipe
        denoiser = get_denoiser(state.pipe)
        inputs = state.latency_inputs = _first_inputs(state)
        table = measure_latency_table(denoiser, inputs, recipe, recipe.plan.target, _menu(state),
                                      threads=torch.get_num_threads(), cache_dir=state.cache_dir,
                                      progress=state.progress)
        analysis = BlockSensitivity(recipe, state.analysis_prompts, state.analysis_seeds, state.spec)
        table.units = {unit.name: list(unit.module_names) for unit in analysis.units(denoiser)}
        state.latency_table = table
        state.result.latency_table = table
        export_format = EXPORT_FORMATS.get(LATENCY_TARGETS.get(recipe.plan.target).export_format)
        state.latency_workdir = tempfile.TemporaryDirectory(prefix="brevitas-ldm-deployed-")
        state.latency_float_file = export_format.write_float(
            denoiser, inputs, Path(state.latency_workdir.name) / f"fp32.{export_format.suffix}", 17)
        state.result.timing_s[self.key] = time.perf_counter() - start


class DeployedLatencyPhase(JobPhase):
    """Export the quantized, calibrated denoiser in the target's format and time it against the float one in the
    target runtime, interleaved: the measured latency ratio beside the plan's predicted one."""

    name = "deployed latency"
    key = "deployed_latency"

    def enabled(self, state: JobState) -> bool:
        return bool(state.recipe.plan.target)

    def cost(self, state: JobState) -> Phase:
        return Phase(self.name, DEPLOYED_CALLS, quantized=True, batch_size=1, at_most=True,
                     extra_s=DEPLOYED_TIMING_S)

    def run(self, state: JobState) -> None:
        start = time.perf_counter()
        recipe = state.recipe
        target = LATENCY_TARGETS.get(recipe.plan.target)
        export_format = EXPORT_FORMATS.get(target.export_format)
        denoiser = get_denoiser(state.pipe)
        inputs = state.latency_inputs      # the table's call: the same prompt, seed and sampling
        workdir = state.latency_workdir
        try:
            if any(not p.is_float for p in state.layer_precisions.values()):
                planned = export_denoiser(denoiser, inputs, Path(workdir.name) / f"planned.{export_format.suffix}",
                                          fmt=target.export_format, weight_storage="portable")
            else:       # an all-float plan (the budget allowed it): its deployment is the float file
                planned = state.latency_float_file
            names, tensors = export_signature(denoiser, inputs)
            feeds = dict(zip(names, tensors))
            threads = torch.get_num_threads()
            calls = {"float": export_format.runner(state.latency_float_file, feeds, threads),
                     "plan": export_format.runner(planned, feeds, threads)}
            rounds = timed_rounds(calls, DEPLOYED_TIMING_S)
            timed = interleaved_latency(calls, rounds=rounds, warmup=1)
        finally:
            workdir.cleanup()
        table = state.latency_table
        # the precisions are keyed by user-facing names, the table's layers by the float model's: the same names
        predicted_ms = table.predict_ms(state.layer_precisions)
        state.result.latency = {
            "target": target.name, "runtime": table.runtime, "inference_precision": table.inference_precision,
            "cpu": table.cpu, "isa": table.isa, "threads": threads, "batch_size": table.batch_size,
            "predicted_ratio": predicted_ms / table.fp_ms, "predicted_ms": predicted_ms, "table_fp_ms": table.fp_ms,
            "measured_ratio": timed["plan"]["median_ms"] / timed["float"]["median_ms"],
            "measured_ms": timed["plan"]["median_ms"], "float_ms": timed["float"]["median_ms"], "rounds": rounds,
            "max_latency_ratio": recipe.plan.max_latency_ratio, "table_from_cache": table.from_cache,
            "table_key": table.key}
        state.result.timing_s[self.key] = time.perf_counter() - start
