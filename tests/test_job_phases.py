"""The job is one list of phase objects: the plan of work prices exactly the phases that run, and each phase makes
the denoiser calls it priced (counted by a hook while it runs), whichever phases the recipe switches on."""

from __future__ import annotations

import dataclasses

import pytest

from brevitas_ldm.denoiser.sampling import SamplingSpec
from brevitas_ldm.evaluation.prompts import evaluation_set
from brevitas_ldm.job import EVALUATED_PHASES, QUANTIZE_PHASES, price_phases, run_phases
from brevitas_ldm.job.evaluation import Evaluation
from brevitas_ldm.recipe import get_recipe
from brevitas_ldm.workflow import finish_job, prepare_job
from brevitas_ldm.zoo.tiny import tiny_sd_pipeline

SPEC = SamplingSpec(num_inference_steps=3, batch_size=2)
PROMPTS, SEEDS = ["digit one", "digit two"], [5, 6]


def _recipe(global_: bool, local: bool, smoothquant: str | None, gptq: bool, mode: str, bias_correction: bool):
    recipe = get_recipe("sqnr-hybrid-w8a8")
    return recipe.replace(
        plan=recipe.plan if global_ else dataclasses.replace(recipe.plan, method="uniform"),
        analysis=dataclasses.replace(recipe.analysis, global_=global_, local=local, num_prompts=2, steps=3),
        smoothquant=dataclasses.replace(recipe.smoothquant, enabled=smoothquant is not None,
                                        scope=smoothquant or recipe.smoothquant.scope),
        weights=dataclasses.replace(recipe.weights, rounding="gptq" if gptq else "nearest"),
        calibration=dataclasses.replace(recipe.calibration, mode=mode, bias_correction=bias_correction,
                                        sampling_steps=0, timestep_layers="every_step" if mode == "single_step"
                                        else "calibration_steps"))


#: Each phase is on in some cases and off in others; the given plan replaces the global analysis.
CASES = {
    "everything": dict(global_=True, local=True, smoothquant="sensitive", gptq=True, mode="single_step",
                       bias_correction=True),
    "no analysis, smooth all, every step": dict(global_=False, local=False, smoothquant="all", gptq=False,
                                                mode="all_steps", bias_correction=False),
    "uniform, uniform steps": dict(global_=False, local=False, smoothquant=None, gptq=False, mode="uniform_steps",
                                   bias_correction=True),
    "local + gptq, no smoothing": dict(global_=True, local=True, smoothquant=None, gptq=True, mode="single_step",
                                       bias_correction=False),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_the_priced_calls_are_the_calls_made(case):
    recipe = _recipe(**CASES[case])
    pipe = tiny_sd_pipeline()
    evaluation = Evaluation(evaluation_set(2, seed=0), SamplingSpec(num_inference_steps=3, batch_size=2), None)
    state = prepare_job(pipe, recipe, PROMPTS, SEEDS, SPEC, evaluation=evaluation)
    priced = price_phases(EVALUATED_PHASES, state)
    run_phases(EVALUATED_PHASES, state)
    result = finish_job(state)
    counted = result.counted_calls
    enabled = {phase.name for phase in EVALUATED_PHASES if phase.enabled(state)}
    assert enabled <= set(counted) and set(counted) <= {phase.name for phase in EVALUATED_PHASES}
    assert ("global analysis" in enabled) == CASES[case]["global_"]
    assert ("GPTQ" in enabled) == CASES[case]["gptq"]
    assert ("SmoothQuant" in enabled) == (CASES[case]["smoothquant"] is not None)
    for row in priced:
        if row.at_most:      # SmoothQuant: the layers and alphas are chosen while it runs
            assert 0 < counted[row.name] <= row.calls, (row, counted)
        else:
            assert counted[row.name] == row.calls, (row, counted)
    # phases without a priced row made no calls (the plan step, the quantization itself)
    assert all(counted[name] == 0 for name in counted if name not in {row.name for row in priced})
    # what each phase says it made is what the hook counted
    for phase in QUANTIZE_PHASES:
        if phase.name in counted and phase.key in result.denoiser_calls:
            assert result.denoiser_calls[phase.key] == counted[phase.name], phase
    assert evaluation.quantized["output_sqnr_db"] > 10.0


def test_a_given_plan_replaces_the_global_analysis_in_the_price_and_the_run():
    recipe = _recipe(**CASES["local + gptq, no smoothing"])
    state = prepare_job(tiny_sd_pipeline(), recipe, PROMPTS, SEEDS, SPEC, plan={"mid_block": "w8a16"})
    names = [row.name for row in price_phases(QUANTIZE_PHASES, state)]
    assert names == ["local analysis", "GPTQ", "calibration"]
    run_phases(QUANTIZE_PHASES, state)
    result = finish_job(state)
    assert "global analysis" not in result.counted_calls and result.block_report is None
    assert str(result.precisions["mid_block.resnets.0.conv1"]) == "w8a16"
