"""SmoothQuant on the float denoiser, before quantization (``[smoothquant]``): every activation-quantized layer, or
the local analysis' worst activation-limited ones, as a Brevitas graph equalization step."""

from __future__ import annotations

from brevitas_ldm.analysis.layer_report import select_for_smoothing
from brevitas_ldm.cost import Phase
from brevitas_ldm.denoiser.sampling import (
    generate,
    get_denoiser,
    max_noise_timestep,
    sampling_calls,
)
from brevitas_ldm.job.phase import JobPhase
from brevitas_ldm.job.state import JobState
from brevitas_ldm.quant.calibration import calibration_calls, recipe_calibration
from brevitas_ldm.quant.smoothquant import SmoothingResult, SmoothQuantStep


class SmoothingPhase(JobPhase):
    name = "SmoothQuant"
    key = "smoothing"

    def enabled(self, state: JobState) -> bool:
        return state.recipe.smoothquant.enabled

    def cost(self, state: JobState) -> Phase:
        n_cal = len(state.calibration_prompts)
        calls = SmoothQuantStep.from_recipe(state.recipe).planned_calls(
            sampling_calls(n_cal, state.spec), calibration_calls(state.recipe, n_cal, state.spec))
        # an upper bound: the layers the local analysis will pick, and the alphas they will get, are not known yet
        return Phase(self.name, calls, True, state.spec.batch_size, at_most=True)

    def _modules(self, state: JobState) -> list[str]:
        section = state.recipe.smoothquant
        quantized_inputs = [name for name, p in state.layer_precisions.items() if p.act_bits is not None]
        if section.scope != "sensitive":
            return quantized_inputs
        selected = select_for_smoothing(state.result.layer_report, section.max_modules,
                                        section.min_activation_share)
        return [name for name in selected if name in set(quantized_inputs)]

    def run(self, state: JobState) -> None:
        result = state.result
        modules = self._modules(state)
        if not modules:
            result.smoothing = SmoothingResult()
            result.timing_s[self.key], result.denoiser_calls[self.key] = 0.0, 0
            return
        recipe, spec, pipe = state.recipe, state.spec, state.pipe
        max_noise = max_noise_timestep(pipe)

        def run_calibration_data(denoiser) -> None:
            generate(pipe, state.calibration_prompts, state.calibration_seeds, spec, output_type="latent",
                     progress=state.progress, desc="SmoothQuant statistics")

        step = SmoothQuantStep.from_recipe(
            recipe, modules=modules, precisions=state.layer_precisions,
            calibration=lambda model: recipe_calibration(model, recipe, spec.num_inference_steps, max_noise))
        result.smoothing = step.apply(get_denoiser(pipe), run_calibration_data)
        result.timing_s[self.key] = result.smoothing.wall_time_s
        result.denoiser_calls[self.key] = result.smoothing.denoiser_calls
