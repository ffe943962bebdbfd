"""GPTQ rounding of the quantized weights (``[weights] rounding = "gptq"``), its Hessians from the float inputs of
the calibration samples' whole trajectory (every step: the rounding serves every step, unlike activation ranges,
which single-step calibration takes at the maximum-noise step)."""

from __future__ import annotations

from brevitas_ldm.cost import Phase, gptq_extra_seconds
from brevitas_ldm.denoiser.sampling import generate, get_denoiser, sampling_calls
from brevitas_ldm.job.phase import JobPhase
from brevitas_ldm.job.state import JobState
from brevitas_ldm.quant.gptq import GptqRounding


class GptqPhase(JobPhase):
    name = "GPTQ"
    key = "gptq"

    def enabled(self, state: JobState) -> bool:
        return state.recipe.weights.rounding == "gptq"

    def cost(self, state: JobState) -> Phase:
        n_cal, final = len(state.calibration_prompts), state.final_spec
        # float sampling runs feeding every layer's Hessian, then the column-by-column rounding
        return Phase(self.name, sampling_calls(n_cal, final), False, state.spec.batch_size,
                     extra_s=gptq_extra_seconds(get_denoiser(state.pipe), n_cal * final.num_inference_steps))

    def run(self, state: JobState) -> None:
        def run_calibration_data(denoiser) -> None:
            generate(state.pipe, state.calibration_prompts, state.calibration_seeds, state.final_spec,
                     output_type="latent", progress=state.progress, desc="GPTQ statistics")

        result = state.result
        result.gptq = GptqRounding().apply(get_denoiser(state.pipe), run_calibration_data)
        result.timing_s[self.key] = result.gptq.wall_time_s
        result.denoiser_calls[self.key] = result.gptq.denoiser_calls
