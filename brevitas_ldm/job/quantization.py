"""Brevitas quantization of the denoiser following the plan (``layerwise_quantize`` with the recipe's
injectors). No denoiser calls, so the plan of work has no row for it."""

from __future__ import annotations

from brevitas_ldm.denoiser.sampling import get_denoiser
from brevitas_ldm.job.phase import JobPhase
from brevitas_ldm.job.state import JobState
from brevitas_ldm.quant.quantize import quantize_denoiser


class QuantizationPhase(JobPhase):
    name = "quantization"
    key = "quantization"

    def run(self, state: JobState) -> None:
        quantize_denoiser(get_denoiser(state.pipe), state.recipe, state.layer_precisions)
