"""``all_steps``: the plain baseline, activation statistics from every step of the real trajectory."""

from __future__ import annotations

from brevitas_ldm.quant.calibration_modes.base import CalibrationMode
from brevitas_ldm.registry import CALIBRATION_MODES


class AllSteps(CalibrationMode):
    name = "all_steps"
    report_note = " (activation ranges from every sampling step)"

    def context(self, denoiser, recipe, num_inference_steps, max_noise, bias_correction):
        from brevitas_ldm.quant.calibration import multi_step_calibration

        return multi_step_calibration(denoiser, bias_correction=bias_correction)


CALIBRATION_MODES.register(AllSteps())
