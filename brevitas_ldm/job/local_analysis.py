"""The local (layer-level) SQNR analysis under the plan: each layer quantized alone on its FP input
(``[analysis] local``); its worst activation-limited layers are what SmoothQuant treats."""

from __future__ import annotations

import time

from brevitas_ldm.analysis.layer_sensitivity import LayerSensitivity
from brevitas_ldm.cost import Phase
from brevitas_ldm.job.phase import JobPhase
from brevitas_ldm.job.state import JobState


class LocalAnalysisPhase(JobPhase):
    name = "local analysis"
    key = "local_analysis"

    def enabled(self, state: JobState) -> bool:
        return state.recipe.analysis.local if state.local is None else state.local

    def analysis(self, state: JobState) -> LayerSensitivity:
        return LayerSensitivity(state.recipe, state.analysis_prompts, state.analysis_seeds, state.spec,
                                precisions=state.layer_precisions or None, progress=state.progress)

    def cost(self, state: JobState) -> Phase:
        return Phase(self.name, sum(self.analysis(state).planned_calls().values()), True, state.spec.batch_size,
                     copies=1)

    def run(self, state: JobState) -> None:
        start = time.perf_counter()
        report = self.analysis(state).run(state.pipe)
        state.result.layer_report = report
        state.result.timing_s[self.key] = time.perf_counter() - start
        state.result.denoiser_calls[self.key] = int(sum(report.denoiser_calls.values()))
