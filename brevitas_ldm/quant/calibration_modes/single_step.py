"""``single_step``: the paper's choice, statistics from the maximum-noise step (t = T) alone, one denoiser call per
batch (every later step is short-circuited), plus the optional one-row sweep of the timestep-only layers."""

from __future__ import annotations

import math

from brevitas_ldm.quant.calibration_modes.base import CalibrationMode
from brevitas_ldm.registry import CALIBRATION_MODES


class SingleStep(CalibrationMode):
    name = "single_step"
    sweeps_timestep_layers = True
    report_note = " (activation ranges from the maximum-noise step t = T only)"

    def context(self, denoiser, recipe, num_inference_steps, max_noise, bias_correction):
        from brevitas_ldm.quant.calibration import single_step_calibration

        return single_step_calibration(denoiser, timestep=max_noise, keep_first_timestep=max_noise is None,
                                       bias_correction=bias_correction,
                                       timestep_layers=recipe.calibration.timestep_layers)

    def calls(self, recipe, num_samples, spec) -> int:
        return math.ceil(num_samples / spec.batch_size)

    def sweep_calls(self, recipe, spec) -> int:
        return spec.num_inference_steps - 1 if recipe.calibration.timestep_layers == "every_step" else 0


CALIBRATION_MODES.register(SingleStep())
