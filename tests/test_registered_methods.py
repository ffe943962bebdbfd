"""A new calibration mode, plan method, export format and deployment runtime, each registered from this test module
(no library file edited), run through a recipe, the command line and the report: the method families are
registries."""

import json

import pytest
from cli_args import FAST, one_line_error

from brevitas_ldm.analysis.block_report import BlockReport
from brevitas_ldm.cli import main
from brevitas_ldm.errors import RecipeError
from brevitas_ldm.export.formats._onnx import OnnxruntimeFormat
from brevitas_ldm.planning.plan_methods.base import PlanMethod
from brevitas_ldm.planning.planners import top_k_plan, upgrade_gain
from brevitas_ldm.precision import Precision
from brevitas_ldm.quant.calibration import multi_step_calibration
from brevitas_ldm.quant.calibration_modes.base import CalibrationMode
from brevitas_ldm.recipe import Recipe
from brevitas_ldm.registry import CALIBRATION_MODES, EXPORT_FORMATS, PLAN_METHODS, RUNTIMES
from brevitas_ldm.runtimes.torch_runtime import TorchRuntime


class NoisierHalf(CalibrationMode):
    """Activation statistics from the first (noisier) half of the sampling steps; the rest run in float."""

    name = "test_noisier_half"
    report_note = " (test mode: the noisier half of the steps)"

    def context(self, denoiser, recipe, num_inference_steps, max_noise, bias_correction):
        steps = range(max(1, num_inference_steps // 2))
        return multi_step_calibration(denoiser, steps=steps, bias_correction=bias_correction)


class LeastSensitive(PlanMethod):
    """``plan.top_k`` blocks that gain the least from ``plan.high_precision`` get it (a deliberately bad rule)."""

    name = "test_least_sensitive"

    def validate(self, rule) -> None:
        if rule.top_k < 1:
            raise RecipeError("plan.method = \"test_least_sensitive\" needs plan.top_k >= 1")

    def choose(self, report, rule, default, menu):
        return top_k_plan(report, rule.top_k, rule.high_precision, default, least=True)


class PlainQcdq(OnnxruntimeFormat):
    """The QCDQ file as Brevitas writes it plus the portable weight storage, none of the other graph passes."""

    name = "test-plain-qcdq"

    def write(self, denoiser, example_inputs, path, opset, weight_storage, features):
        import onnx

        from brevitas_ldm.export.exporters import brevitas_export, export_onnx_qcdq_file
        from brevitas_ldm.export.x86_storage import store_for_x86

        def write_file(wrapper, names, tensors, tmp):
            export_onnx_qcdq_file(wrapper, names, tensors, tmp, opset, wide=max(features["act_bits"]) > 8, fp8=False)
            model = onnx.load(str(tmp))
            store_for_x86(model)
            onnx.save(model, str(tmp))

        return brevitas_export(self, denoiser, example_inputs, path, write_file)


class TorchWithoutInt8Pack(TorchRuntime):
    """The torch runtime without ``torch._weight_int8pack_mm`` (a runtime is its transform class)."""

    name = "test-torch-no-int8pack"

    def __init__(self, **options):
        super().__init__(**{**options, "int8pack": False})


@pytest.fixture(scope="module")
def registered():
    methods = [(CALIBRATION_MODES, NoisierHalf()), (PLAN_METHODS, LeastSensitive()), (EXPORT_FORMATS, PlainQcdq()),
               (RUNTIMES, TorchWithoutInt8Pack)]
    for registry, method in methods:
        registry.register(method)
    yield
    for registry, method in methods:
        registry.unregister(method.name)


RECIPE = """
name = "test-registered"
[calibration]
mode = "test_noisier_half"
[analysis]
global = true
progressive = false
num_prompts = 1
[plan]
method = "test_least_sensitive"
menu = ["w8a8", "w8a16"]
high_precision = "w8a16"
top_k = 1
"""


def test_registered_names_are_recipe_values_and_refusals_list_them(registered, tmp_path, capsys):
    recipe = Recipe.from_toml(RECIPE)
    assert (recipe.calibration.mode, recipe.plan.method) == ("test_noisier_half", "test_least_sensitive")
    with pytest.raises(RecipeError, match="plan.method = \"test_least_sensitive\" needs plan.top_k >= 1"):
        Recipe.from_toml(RECIPE.replace("top_k = 1", "top_k = 0"))
    with pytest.raises(RecipeError, match="calibration.mode = 'nope' is not allowed: choose one of all_steps, "
                                          "single_step, test_noisier_half, uniform_steps"):
        Recipe.from_toml(RECIPE.replace("test_noisier_half", "nope"))
    with pytest.raises(RecipeError, match="test_least_sensitive, threshold"):
        Recipe.from_toml(RECIPE.replace("method = \"test_least_sensitive\"", "method = \"nope\""))
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE)
    assert main(["recipes", "show", str(path)]) == 0
    assert "test_noisier_half" in capsys.readouterr().out
    # a registered name is taken once; the registry says so in one line
    with pytest.raises(RecipeError, match="already registered"):
        CALIBRATION_MODES.register(NoisierHalf())


def test_registered_methods_run_through_the_main_job_and_the_export(registered, sd_dir, tmp_path, capsys):
    recipe_path = tmp_path / "recipe.toml"
    recipe_path.write_text(RECIPE)
    out = tmp_path / "run"
    assert main(["quantize", "--model", str(sd_dir), "--recipe", str(recipe_path), "--out", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # the new mode's context runs every one of the 3 steps of the one calibration batch (it observes the first)
    assert metrics["denoiser_calls"]["calibration"] == 3
    report = (out / "report.md").read_text()
    assert "Calibration: `test_noisier_half` (test mode: the noisier half of the steps)" in report
    assert "Chosen by `test_least_sensitive`" in report
    # the plan is the new rule's: the one block that gains least from w8a16 gets it, every other stays w8a8
    plan = json.loads((out / "plan.json").read_text())
    assert plan["method"] == "top_k_least"
    analysis = BlockReport.load(out / "analysis")
    w8a8, w8a16 = Precision(8, 8), Precision(8, 16)
    least = min(analysis.block_names, key=lambda name: upgrade_gain(analysis, name, w8a8, w8a16))
    assert {name for name, p in plan["precisions"].items() if p == "w8a16"} == {least}
    assert sum(p == "w8a8" for p in plan["precisions"].values()) == len(analysis.block_names) - 1

    export_out = tmp_path / "export"
    assert main(["export", "--model", str(sd_dir), "--checkpoint", str(out / "checkpoint"), "--format",
                 "test-plain-qcdq", "--out", str(export_out), "--min-sqnr-db", "20"]) == 0
    summary = json.loads((export_out / "export.json").read_text())
    assert summary["format"] == "test-plain-qcdq" and (export_out / "denoiser.onnx").is_file()
    assert summary["verification"]["sqnr_db"] >= 20.0 and summary["weight_storage"] == "portable"
    assert sum(summary["kernels"]["float"].values()) + sum(summary["kernels"]["integer"].values()) > 0
    deployed = tmp_path / "deployed"
    assert main(["deploy", "--model", str(sd_dir), "--checkpoint", str(out / "checkpoint"), "--runtime",
                 "test-torch-no-int8pack", "--min-sqnr-db", "20", "--rounds", "1", "--out", str(deployed)]) == 0
    deployment = json.loads((deployed / "deploy.json").read_text())
    assert deployment["sqnr_vs_fake_quant_db"] >= 20.0 and sum(deployment["kernels"].values()) > 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:     # argparse's own refusal lists the registered formats
        main(["export", "--model", str(sd_dir), "--checkpoint", str(out / "checkpoint"), "--format", "tflite",
              "--out", str(tmp_path / "x")])
    assert exit.value.code == 2 and "'test-plain-qcdq'" in capsys.readouterr().err
    # a format without an FP32 twin refuses --float-baseline before loading anything
    one_line_error(capsys, ["export", "--model", str(sd_dir), "--checkpoint", str(out / "checkpoint"), "--format",
                            "torch-qcdq", "--float-baseline", "--out", str(tmp_path / "y")],
                   "--float-baseline has no FP32 twin for --format torch-qcdq")


def test_the_calibration_mode_observes_what_it_says(registered, sd_dir):
    """The mode is the registry's object: its context observes the first half of the steps and runs them all."""
    from brevitas_ldm.denoiser.loading import load_pipeline
    from brevitas_ldm.denoiser.sampling import SamplingSpec
    from brevitas_ldm.quant.calibration import calibrate_pipeline
    from brevitas_ldm.quant.quantize import quantize_denoiser

    pipe = load_pipeline(str(sd_dir))
    recipe = Recipe.from_toml(RECIPE)
    quantize_denoiser(pipe.unet, recipe)
    context = calibrate_pipeline(pipe, recipe, ["a", "b"], [0, 1], SamplingSpec(num_inference_steps=4, batch_size=2))
    assert (context.calls, context.observed_calls) == (4, 2)
