"""The default recipe end to end on a tiny random SD pipeline, and a hand-edited plan through the command line.

``sqnr-hybrid-w8a8`` runs every phase: global analysis -> budget plan -> local analysis -> SmoothQuant on the
selected layers only -> single-step calibration. The checks are the product's promises: the plan keeps its bit
budget, SmoothQuant touches nothing it did not select, and the result beats min-max on the same seeds.
"""

from __future__ import annotations

import json

import pytest
import torch

from brevitas_ldm.analysis.layer_report import select_for_smoothing
from brevitas_ldm.cli import main
from brevitas_ldm.denoiser.names import equalized_prefixes
from brevitas_ldm.denoiser.sampling import SamplingSpec, generate, get_denoiser
from brevitas_ldm.planning.plan import Plan
from brevitas_ldm.quant.quantize import read_precisions
from brevitas_ldm.recipe import get_recipe
from brevitas_ldm.sqnr import sqnr_db
from brevitas_ldm.workflow import quantize_pipeline
from brevitas_ldm.zoo.tiny import tiny_sd_pipeline

SPEC = SamplingSpec(num_inference_steps=3, batch_size=2)
CALIBRATION = (["digit one", "digit two"], [5, 6])
EVALUATION = (["digit three", "digit four", "digit five", "digit six"], [21, 22, 23, 24])


@torch.no_grad()
def evaluate(pipe) -> torch.Tensor:
    return generate(pipe, EVALUATION[0], EVALUATION[1], SPEC)


@pytest.fixture(scope="module")
def runs():
    fp = evaluate(tiny_sd_pipeline())
    results = {}
    for recipe in ("sqnr-hybrid-w8a8", "minmax-w8a8"):
        pipe = tiny_sd_pipeline()
        result = quantize_pipeline(pipe, recipe, *CALIBRATION, spec=SPEC)
        results[recipe] = (result, sqnr_db(fp, evaluate(pipe)))
    return results


def test_default_recipe_plan_meets_its_budget(runs):
    result, _ = runs["sqnr-hybrid-w8a8"]
    recipe = get_recipe("sqnr-hybrid-w8a8")
    assert result.block_report is not None and result.layer_report is not None and result.plan is not None
    assert result.plan.method == "budget"
    assert result.plan.avg_weight_bits <= recipe.plan.avg_weight_bits + 1e-9
    assert result.plan.avg_act_bits <= recipe.plan.avg_act_bits + 1e-9
    # the plan uses its headroom: some block above W8A8, and the quantized model carries exactly the plan
    assert {str(p) for p in result.plan.precisions.values()} - {"w8a8"}
    planned = {name: str(p) for name, p in result.precisions.items()}
    assert {name: str(p) for name, p in read_precisions(get_denoiser(result.pipeline)).items()} == planned
    assert result.denoiser_calls["global_analysis"] > 0 and result.denoiser_calls["local_analysis"] > 0


def test_default_recipe_smooths_only_the_selected_layers(runs):
    result, _ = runs["sqnr-hybrid-w8a8"]
    section = get_recipe("sqnr-hybrid-w8a8").smoothquant
    selected = set(select_for_smoothing(result.layer_report, section.max_modules, section.min_activation_share))
    wrapped = equalized_prefixes(get_denoiser(result.pipeline))
    assert wrapped == set(result.smoothing.layers)
    assert wrapped <= selected and len(selected) <= section.max_modules
    assert set(result.smoothing.layers) | set(result.smoothing.skipped) == {
        name for name in selected if result.precisions[name].act_bits is not None}


def test_default_recipe_beats_min_max_on_the_same_seeds(runs):
    hybrid, hybrid_db = runs["sqnr-hybrid-w8a8"]
    minmax, minmax_db = runs["minmax-w8a8"]
    assert hybrid_db >= minmax_db, (hybrid_db, minmax_db)
    # single-step calibration: one denoiser call per calibration batch, plus one one-row call per later step for the
    # timestep-only layers ([calibration] timestep_layers = "every_step"); min-max observes every step
    assert hybrid.denoiser_calls["calibration"] == 1 + SPEC.num_inference_steps - 1
    assert minmax.denoiser_calls["calibration"] == SPEC.num_inference_steps


def test_quantize_takes_an_edited_plan(runs, tmp_path):
    """``quantize --plan edited.json``: the job follows the edit instead of running the global analysis."""
    result, _ = runs["sqnr-hybrid-w8a8"]
    plan = Plan.from_dict(result.plan.to_dict())
    plan.precisions = {name: "w8a8" for name in plan.precisions}
    plan.precisions["conv_in"] = "float"
    plan.precisions["mid_block"] = "w8a16"
    edited = plan.save(tmp_path / "edited.json")
    model_dir = tmp_path / "tiny-sd"
    tiny_sd_pipeline().save_pretrained(str(model_dir))
    out = tmp_path / "run"
    assert main(["quantize", "--model", str(model_dir), "--recipe", "sqnr-hybrid-w8a8", "--plan", str(edited),
                 "--out", str(out), "--num-samples", "2", "--steps", "3", "--batch-size", "2",
                 "--calibration-prompts", "2"]) == 0
    precisions = json.loads((out / "layer_precisions.json").read_text())
    flat = precisions.get("precisions", precisions)
    assert flat["conv_in"] == "float"
    assert {p for name, p in flat.items() if name.startswith("mid_block.")} == {"w8a16"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["denoiser_calls"].get("global_analysis", 0) == 0     # the edited plan replaced the analysis
    assert json.loads((out / "plan.json").read_text())["precisions"]["conv_in"] == "float"


def test_deployment_recipe_end_to_end_runs_qlinearconv(tmp_path):
    """``sqnr-hybrid-w7a8-x86``: the whole strategy on the requantized model, exported with integer kernels."""
    from brevitas_ldm.export import (
        emulator_available,
        export_denoiser,
        integer_kernel_counts,
        verify_onnx,
    )
    from brevitas_ldm.zoo.tiny import denoiser_inputs

    pipe = tiny_sd_pipeline()
    result = quantize_pipeline(pipe, "sqnr-hybrid-w7a8-x86", *CALIBRATION, spec=SPEC)
    denoiser = get_denoiser(pipe)
    assert result.plan.avg_weight_bits <= 7.0 + 1e-9 and result.plan.avg_act_bits <= 9.0 + 1e-9
    requantized = [name for name, layer in denoiser.named_modules()
                   if isinstance(layer, torch.nn.Conv2d) and getattr(layer, "output_quant", None) is not None
                   and layer.output_quant.is_quant_enabled]
    assert requantized and all(str(result.precisions[n.removesuffix(".layer")]) in ("w7a8", "w4a8")
                               for n in requantized)
    path = export_denoiser(denoiser, denoiser_inputs(denoiser, batch=2), tmp_path / "unet.onnx", fmt="onnx-int8")
    assert integer_kernel_counts(path)["integer"].get("QLinearConv") == len(requantized)
    # This chaotic random pipeline turns one-LSB rounding flips into whole-sample differences (see
    # test_export), so the bound is relative: the file's mismatch stays below the model's own quantization noise
    # (measured 28.3 dB against 24.0 dB, natively and on an emulated AVX2 CPU alike).
    for cpu in (None, "Haswell") if emulator_available() else (None,):
        check = verify_onnx(path, denoiser, denoiser_inputs(denoiser, batch=8, seed=3), threads=1, emulate_cpu=cpu)
        assert check["sqnr_db"] >= check["quant_noise_sqnr_db"] + 1.0, (cpu, check)
