"""Activation calibration of the quantized denoiser (``[calibration] mode``: single-step at the maximum-noise step,
every step, timestep-aware), then Brevitas' bias correction when the recipe asks for it."""

from __future__ import annotations

import time

from brevitas_ldm.cost import Phase
from brevitas_ldm.job.phase import JobPhase
from brevitas_ldm.job.state import JobState
from brevitas_ldm.quant.calibration import (
    bias_correction_calls,
    calibrate_pipeline,
    calibration_calls,
)


class CalibrationPhase(JobPhase):
    name = "calibration"
    key = "calibration"

    def cost(self, state: JobState) -> Phase:
        n_cal, final = len(state.calibration_prompts), state.final_spec
        return Phase(self.name, calibration_calls(state.recipe, n_cal, final)
                     + bias_correction_calls(state.recipe, n_cal, final), True, state.spec.batch_size)

    def run(self, state: JobState) -> None:
        start = time.perf_counter()
        calibration = calibrate_pipeline(state.pipe, state.recipe, state.calibration_prompts, state.calibration_seeds,
                                         state.final_spec, progress=state.progress)
        state.result.timing_s[self.key] = time.perf_counter() - start
        state.result.denoiser_calls[self.key] = calibration.calls
