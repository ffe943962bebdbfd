"""The README's headline on the embedded model, end to end through the command line (slow; CI runs it).

Quickstart (200 samples, 20 steps): sqnr-hybrid-w8a8 37.82 dB output SQNR against 25.75 dB for min-max at W8A8,
at 7.77 / 8.93 average weight / activation bits. Here, with fewer samples and steps to keep CI short, the same
ordering must hold with a clear margin, the plan must stay within its budget, and the default recipe must run
every phase (global analysis, local analysis, SmoothQuant, single-step calibration).
"""

from __future__ import annotations

import json
import math

import pytest

from brevitas_ldm.cli import main
from brevitas_ldm.recipe import get_recipe

pytestmark = pytest.mark.slow
RUN = ["--model", "tiny-sd-digits", "--num-samples", "16", "--steps", "20"]


@pytest.fixture(scope="module")
def headline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("headline")
    metrics = {}
    for recipe in ("minmax-w8a8", "sqnr-hybrid-w8a8"):
        assert main(["quantize", *RUN, "--recipe", recipe, "--out", str(folder / recipe)]) == 0
        metrics[recipe] = json.loads((folder / recipe / "metrics.json").read_text())
    return metrics


def test_default_recipe_beats_min_max_by_a_clear_margin(headline):
    hybrid, minmax = headline["sqnr-hybrid-w8a8"]["quantized"], headline["minmax-w8a8"]["quantized"]
    assert hybrid["output_sqnr_db"] >= minmax["output_sqnr_db"] + 6.0, (hybrid, minmax)
    assert hybrid["image_psnr_db"] > minmax["image_psnr_db"]
    assert hybrid["prompt_accuracy"] >= 0.9


def test_default_recipe_runs_every_phase_within_budget(headline):
    run = headline["sqnr-hybrid-w8a8"]
    calls = run["denoiser_calls"]
    assert calls["global_analysis"] > 0 and calls["local_analysis"] > 0 and calls["smoothing"] > 0
    calibration = get_recipe("sqnr-hybrid-w8a8").calibration
    # single-step: one denoiser call per calibration batch, whatever the number of sampling steps
    # ... plus one one-row call per later step for the timestep-only layers ([calibration] timestep_layers)
    assert calls["calibration"] == math.ceil(calibration.num_prompts / calibration.batch_size) + 20 - 1
    # GPTQ's Hessians: every step of the calibration runs, in float
    assert calls["gptq"] == math.ceil(calibration.num_prompts / calibration.batch_size) * 20
    assert run["quantized"]["avg_weight_bits"] <= 8.0 + 0.05   # the budget is on blocks; layers round it
    assert run["quantized"]["avg_act_bits"] <= 9.0 + 0.05
