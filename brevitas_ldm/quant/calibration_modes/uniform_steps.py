"""``uniform_steps``: Q-Diffusion's choice, statistics from ``num_steps`` steps spread uniformly over the run (the
others run in float without observing, so the calls are every step's)."""

from __future__ import annotations

from brevitas_ldm.quant.calibration_modes.base import CalibrationMode
from brevitas_ldm.registry import CALIBRATION_MODES


class UniformSteps(CalibrationMode):
    name = "uniform_steps"

    def context(self, denoiser, recipe, num_inference_steps, max_noise, bias_correction):
        from brevitas_ldm.quant.calibration import multi_step_calibration

        return multi_step_calibration(denoiser, steps=recipe.calibration.num_steps,
                                      num_inference_steps=num_inference_steps, bias_correction=bias_correction)


CALIBRATION_MODES.register(UniformSteps())
