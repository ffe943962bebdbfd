"""The global (block-level) SQNR analysis and the plan chosen from it (``[analysis] global``, ``[plan]``)."""

from __future__ import annotations

import time
from pathlib import Path

from brevitas_ldm.analysis.block_report import REPORT_FILE
from brevitas_ldm.analysis.block_sensitivity import BlockSensitivity
from brevitas_ldm.cost import Phase
from brevitas_ldm.denoiser.sampling import get_denoiser
from brevitas_ldm.job.phase import JobPhase
from brevitas_ldm.job.state import JobState
from brevitas_ldm.planning.planners import choose_plan
from brevitas_ldm.process.ranks import current_ranks


class GlobalAnalysisPhase(JobPhase):
    """Quantize blocks progressively, track output SQNR over the steps, choose the hybrid plan. ``always``: run it
    whatever the recipe says (``brevitas-ldm analyze``); a plan given to the job replaces it."""

    name = "global analysis"
    key = "global_analysis"

    def __init__(self, always: bool = False) -> None:
        self.always = always

    def analysis(self, state: JobState) -> BlockSensitivity:
        return BlockSensitivity(state.recipe, state.analysis_prompts, state.analysis_seeds, state.spec,
                                progress=state.progress)

    def enabled(self, state: JobState) -> bool:
        return state.plan is None and (self.always or state.recipe.analysis.global_)

    def _cached(self, state: JobState, analysis: BlockSensitivity) -> bool:
        if state.cache_dir is None:
            return False
        key = analysis.cache_key(state.pipe, state.model_id)
        return (Path(state.cache_dir) / f"global-{key}" / REPORT_FILE).is_file()

    def cost(self, state: JobState) -> Phase:
        analysis = self.analysis(state)
        if self._cached(state, analysis):
            state.notes.append(f"the global analysis is cached in {state.cache_dir}: it will be loaded, not measured")
            return Phase(f"{self.name} (cached)", 0, quantized=True, batch_size=state.spec.batch_size)
        calls = analysis.planned_calls(analysis.units(get_denoiser(state.pipe)), current_ranks())
        return Phase(self.name, calls["total"], quantized=True, batch_size=state.spec.batch_size,
                     copies=len(analysis.measured_precisions))

    def run(self, state: JobState) -> None:
        start = time.perf_counter()
        report = self.analysis(state).run(state.pipe, cache_dir=state.cache_dir, model_id=state.model_id)
        result = state.result
        result.block_report = report
        result.plan = choose_plan(report, state.recipe.plan, state.recipe.default_precision, state.latency_table)
        result.timing_s[self.key] = time.perf_counter() - start
        # Calls this run made: a report read from --cache-dir cost none (the report keeps what computing it cost).
        result.denoiser_calls[self.key] = 0 if report.from_cache else int(report.denoiser_calls.get("total", 0))
        state.overrides = dict(result.plan.precisions)
