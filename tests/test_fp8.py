"""FP8 as a shipped choice: the ``fp8-e4m3`` and ``sqnr-hybrid-fp8`` recipes through the main job, the
analysis' menu, the report, a checkpoint, the exporters and the torch runtime."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from brevitas_ldm.denoiser.sampling import SamplingSpec, generate, get_denoiser
from brevitas_ldm.errors import BrevitasLDMError, RecipeError
from brevitas_ldm.precision import Precision, parse_precision
from brevitas_ldm.quant.quantize import quant_layers, quantize_denoiser, read_precisions
from brevitas_ldm.recipe import Recipe, get_recipe
from brevitas_ldm.runtimes import deploy
from brevitas_ldm.sqnr import sqnr_db
from brevitas_ldm.workflow import quantize_pipeline
from brevitas_ldm.zoo.tiny import denoiser_inputs, tiny_sd_pipeline, tiny_sd_unet

SPEC = SamplingSpec(num_inference_steps=3, batch_size=2)
CALIBRATION = (["digit one", "digit two"], [5, 6])
EVALUATION = (["digit three", "digit four", "digit five", "digit six"], [21, 22, 23, 24])
E4M3 = Precision(8, 8, "e4m3")


def test_fp8_precisions_parse_name_and_cost_8_bits():
    assert parse_precision("e4m3") == E4M3 and E4M3.name == "e4m3" and str(parse_precision("E5M2")) == "e5m2"
    assert E4M3.effective_weight_bits() == E4M3.effective_act_bits() == 8 and E4M3 != Precision(8, 8)
    with pytest.raises(RecipeError, match="\"e4m3\""):
        parse_precision("e3m4")


def test_the_fp8_recipes_are_built_in_and_round_trip():
    fp8 = get_recipe("fp8-e4m3")
    assert fp8.default_precision == E4M3 and fp8.activations.granularity == "per_tensor"
    assert fp8.weights.format == fp8.activations.format == "e4m3" and fp8.plan.method == "uniform"
    hybrid = get_recipe("sqnr-hybrid-fp8")
    assert E4M3 in hybrid.plan.menu and Precision(8, 8) in hybrid.plan.menu and parse_precision("float") in \
        hybrid.plan.menu and hybrid.default_precision == Precision(8, 8)
    for recipe in (fp8, hybrid):
        assert Recipe.from_toml(recipe.to_toml()) == recipe


def test_a_plan_mixing_e4m3_int8_and_float_quantizes_reads_back_and_deploys():
    model = tiny_sd_unet()
    plan = {"down_blocks.0": "e4m3", "up_blocks.1": "w8a8", "conv_out": "float", "mid_block": "w4a8"}
    quantize_denoiser(model, get_recipe("sqnr-hybrid-fp8"), plan)
    from brevitas_ldm.quant.calibration import multi_step_calibration

    with torch.no_grad(), multi_step_calibration(model):
        for seed in range(2):
            model(**denoiser_inputs(model, batch=2, seed=seed))
    precisions = read_precisions(model)
    fp8_layers = [name for name, p in precisions.items() if p == E4M3]
    assert fp8_layers and all(name.startswith("down_blocks.0.") for name in fp8_layers)
    assert precisions["conv_out"].is_float and precisions["mid_block.resnets.0.conv1"] == Precision(4, 8)
    layer = quant_layers(model)[fp8_layers[0]]
    assert int(layer.input_quant.exponent_bit_width()) == 4 and int(layer.weight_quant.mantissa_bit_width()) == 3
    kernels = deploy(model.eval()).kernels
    assert kernels["fp8"] == len(fp8_layers) and kernels["int8"] > 20 and kernels["float"] == 1


@torch.no_grad()
def _evaluate(pipe) -> torch.Tensor:
    return generate(pipe, EVALUATION[0], EVALUATION[1], SPEC)


@pytest.mark.slow  # the main job end to end
def test_the_hybrid_fp8_recipe_runs_the_main_job_and_its_plan_uses_e4m3(tmp_path):
    fp = _evaluate(tiny_sd_pipeline())
    recipe = get_recipe("sqnr-hybrid-fp8")
    # a plan that must leave 8-bit integer activations somewhere cheaper: the analysis has to weigh e4m3 against
    # w8a8 at equal bits; 6 analysis prompts keep the test short
    recipe = recipe.replace(analysis=dataclasses.replace(recipe.analysis, num_prompts=2, steps=3))
    pipe = tiny_sd_pipeline()
    result = quantize_pipeline(pipe, recipe, *CALIBRATION, spec=SPEC)
    assert E4M3 in result.block_report.precisions
    chosen = set(map(str, result.precisions.values()))
    assert result.plan.avg_weight_bits <= 8.0 + 1e-9 and result.plan.avg_act_bits <= 9.0 + 1e-9
    hybrid_db = sqnr_db(fp, _evaluate(pipe))
    # against the plainer baseline, on the same seeds: min-max W8A8 everywhere
    baseline = tiny_sd_pipeline()
    quantize_pipeline(baseline, "minmax-w8a8", *CALIBRATION, spec=SPEC)
    assert hybrid_db > sqnr_db(fp, _evaluate(baseline))
    from brevitas_ldm.checkpoint.folder import load_quantized
    from brevitas_ldm.report import write_report

    write_report(tmp_path / "report.md", {"model": "tiny", "num_samples": 4, "steps": 3, "seed": 0}, result, {},
                 "test")
    report = (tmp_path / "report.md").read_text()
    assert "menu float, w8a16, e4m3, w8a8, w4a8" in report and report.count("e4m3") > 2   # the block table's column
    import json

    folder = result.save(tmp_path / "q")
    saved = json.loads((folder / "unet" / "config.json").read_text())["quantization_config"]["precisions"]
    assert set(saved.values()) == chosen            # the format name is what the folder records
    reloaded = tiny_sd_pipeline()
    load_quantized(reloaded, tmp_path / "q")
    assert read_precisions(get_denoiser(reloaded)) == result.precisions          # e4m3 layers come back as e4m3
    print(f"hybrid-fp8 plan: {sorted(chosen)}; {hybrid_db:.2f} dB")


def test_fp8_e4m3_runs_the_main_job_and_deploys_on_scaled_mm():
    fp = _evaluate(tiny_sd_pipeline())
    pipe = tiny_sd_pipeline()
    result = quantize_pipeline(pipe, "fp8-e4m3", *CALIBRATION, spec=SPEC)
    assert set(result.precisions.values()) == {E4M3}
    fake_db = sqnr_db(fp, _evaluate(pipe))
    assert 10.0 < fake_db < 80.0
    deployment = deploy(pipe)
    assert deployment.kernels == {"fp8": len(result.precisions)}
    assert sqnr_db(fp, _evaluate(pipe)) == pytest.approx(fake_db, abs=2.0)


def test_exporters_take_fp8_where_they_can_and_name_the_format_where_they_cannot(tmp_path):
    from brevitas_ldm.export import export_denoiser

    pipe = tiny_sd_pipeline()
    quantize_pipeline(pipe, "fp8-e4m3", *CALIBRATION, spec=SPEC)
    denoiser = get_denoiser(pipe)
    inputs = denoiser_inputs(denoiser, batch=1)
    with pytest.raises(BrevitasLDMError, match="FP8 QuantizeLinear \\(opset 19\\)"):
        export_denoiser(denoiser, inputs, tmp_path / "a.onnx", fmt="onnx-qcdq", opset=17)
    with pytest.raises(BrevitasLDMError, match="FP8 quantization, which Brevitas' torch-qcdq export does not"):
        export_denoiser(denoiser, inputs, tmp_path / "a.pt", fmt="torch-qcdq")
