"""A tiny denoiser quantized with a built-in recipe and calibrated on three seeded random calls (all observed)."""

from __future__ import annotations

import torch.nn as nn

from brevitas_ldm.quant.calibration import multi_step_calibration
from brevitas_ldm.quant.quantize import quantize_denoiser
from brevitas_ldm.recipe import get_recipe
from brevitas_ldm.zoo.tiny import denoiser_inputs


def quantized(model: nn.Module, recipe: str = "minmax-w8a8", plan=None, calibrate: bool = True) -> nn.Module:
    quantize_denoiser(model, get_recipe(recipe), plan)
    if calibrate:
        with multi_step_calibration(model):
            for seed in range(3):
                model(**denoiser_inputs(model, batch=4, seed=10 + seed))
    return model
