"""The torch runtime (``brevitas_ldm.runtimes``): fused integer/fp8 kernels that compute the fake-quantized model.

Exactness is checked where it is a property of the kernels: every kernel against its Brevitas layer, on the input
that layer sees in the real model (> 100 dB: the integer product is exact, only the float32 scaling rounds). At
the model's output two float orders differ by more: a value whose ``x / s`` lands within float rounding of a
rounding tie flips one code, and a random-weight network amplifies the flip; the float32 fake-quantized model and
the same model in float64 differ by ~35 dB on the tiny SD UNet, while the int8 runtime agrees with the float64 one
at ~146 dB (its products are exact). Which flips happen depends on the CPU's float kernels, so model-level checks
assert what holds on any CPU: the runtime is as far from the float model as the fake-quantized model is.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from calibrated import quantized
from torch import nn

from brevitas_ldm.denoiser.sampling import (
    SamplingSpec,
    first_denoiser_call,
    get_denoiser,
    map_tensors,
)
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.quant.calibration import calibrate_pipeline
from brevitas_ldm.quant.quantize import quant_layers, quantize_denoiser
from brevitas_ldm.recipe import get_recipe
from brevitas_ldm.runtimes import TorchRuntime, deploy
from brevitas_ldm.runtimes.kernels import Int8Matmul
from brevitas_ldm.sqnr import sqnr_db
from brevitas_ldm.zoo.families import FAMILIES
from brevitas_ldm.zoo.tiny import denoiser_inputs, tiny_sd_unet

PROMPTS = ["a handwritten digit seven", "digit two"]


def _output(value) -> torch.Tensor:
    return (value.sample if hasattr(value, "sample") else value[0]).float()


@torch.no_grad()
def _run(model: nn.Module, args, kwargs, dtype=torch.float32) -> torch.Tensor:
    def cast(t):
        return (t.to(dtype) if t.is_floating_point() else t)
    return _output(model(*map_tensors(args, cast), **map_tensors(kwargs, cast)))


def _quantized_pipeline(family: str, recipe_name: str):
    pipe = FAMILIES[family](0)
    spec = SamplingSpec(num_inference_steps=2, batch_size=2)
    args, kwargs = first_denoiser_call(pipe, PROMPTS, [1, 2], spec, run_it=False)
    denoiser = get_denoiser(pipe)
    float_out = _run(denoiser, args, kwargs)
    recipe = get_recipe(recipe_name)
    quantize_denoiser(denoiser, recipe)
    calibrate_pipeline(pipe, recipe, PROMPTS, [3, 4], spec)
    denoiser.eval()
    return pipe, denoiser, args, kwargs, float_out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_int8_runtime_is_the_fake_quantized_denoiser_of_every_family(family):
    pipe, denoiser, args, kwargs, float_out = _quantized_pipeline(family, "minmax-w8a8")
    seen = _layer_inputs(denoiser, args, kwargs)
    fake = _run(denoiser, args, kwargs)
    runtime = TorchRuntime()
    with torch.no_grad():
        worst = min(sqnr_db(layer(seen[name]), runtime.kernel_for(layer, name)(seen[name]))
                    for name, layer in quant_layers(denoiser).items())
    assert worst > 100.0                  # every layer of the family, on the input it sees in the pipeline: exact
    layers = len(quant_layers(denoiser))
    deployment = deploy(pipe, runtime="torch")
    assert deployment.denoiser is denoiser and deployment.kernels == {"int8": layers}     # every layer: _int_mm
    assert sum(isinstance(m, Int8Matmul) for m in denoiser.modules()) == layers and not quant_layers(denoiser)
    runtime_out = _run(denoiser, args, kwargs)
    # The model: as far from float as the fake-quantized one (rounding flips of float32 aside, see module doc).
    assert sqnr_db(float_out, runtime_out) == pytest.approx(sqnr_db(float_out, fake), abs=2.0)


def _layer_inputs(model: nn.Module, args, kwargs: dict) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    def keep(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            seen.setdefault(name, args[0].detach().clone())
        return hook

    hooks = [layer.register_forward_pre_hook(keep(name)) for name, layer in quant_layers(model).items()]
    with torch.no_grad():
        model(*args, **kwargs)
    for hook in hooks:
        hook.remove()
    return seen


def _tiny(recipe_name: str, plan=None, recipe=None) -> nn.Module:
    model = tiny_sd_unet()
    if recipe is None:
        return quantized(model, recipe_name, plan).eval()
    from brevitas_ldm.quant.calibration import multi_step_calibration

    quantize_denoiser(model, recipe, plan)
    with multi_step_calibration(model):
        for seed in range(3):
            model(**denoiser_inputs(model, batch=4, seed=10 + seed))
    return model.eval()


def _compare(model: nn.Module) -> tuple[dict[str, int], float, float]:
    """Deploy ``model`` (a quantized ``tiny_sd_unet()``); (kernel counts, how far the runtime is from float minus
    how far the fake-quantized model is (dB), worst layer: each kernel against its Brevitas layer on the input that
    layer saw, dB)."""
    inputs = denoiser_inputs(model, batch=2, seed=99)
    with torch.no_grad():
        float_out = tiny_sd_unet()(**inputs).sample
    seen = _layer_inputs(model, (), inputs)
    runtime = TorchRuntime()
    with torch.no_grad():
        worst = min(sqnr_db(layer(seen[name]), runtime.kernel_for(layer, name)(seen[name]))
                    for name, layer in quant_layers(model).items())
        fake = model(**inputs).sample
        kernels = deploy(model).kernels
        runtime_out = model(**inputs).sample
    return kernels, sqnr_db(float_out, runtime_out) - sqnr_db(float_out, fake), worst


def test_w4a8_runs_through_int_mm_with_4_bit_codes_in_int8():
    model = _tiny("minmax-w4a8")
    codes = {int(layer.quant_weight().int().abs().max()) for layer in quant_layers(model).values()}
    assert max(codes) <= 8                                            # 4-bit codes: |q| <= 8 in an int8 container
    kernels, float_gap, worst = _compare(model)
    assert kernels == {"int8": 83} and worst > 100.0 and abs(float_gap) < 2.0


def test_asymmetric_weights_and_activations_are_exact_through_the_zero_point_correction():
    recipe = get_recipe("minmax-w8a8")
    recipe = recipe.replace(weights=dataclasses.replace(recipe.weights, symmetric=False),
                            activations=dataclasses.replace(recipe.activations, symmetric=False))
    model = _tiny("", recipe=recipe)
    points = {float(layer.input_quant.zero_point().detach()) for layer in quant_layers(model).values()}
    assert len(points) > 5                                            # real, different zero points
    kernels, float_gap, worst = _compare(model)
    assert worst > 100.0                                              # every layer, border padding included
    # (float32 rounds x / s + z near 255 coarser than float64, so the float64 model flips codes here: no 60 dB)
    assert kernels == {"int8": 83} and abs(float_gap) < 2.0


def test_smoothquant_layers_are_deployed_inside_their_wrappers():
    from brevitas_ldm.compat import EqualizedModule
    from brevitas_ldm.quant.calibration import multi_step_calibration
    from brevitas_ldm.quant.smoothquant import SmoothQuantStep
    from brevitas_ldm.runtimes.kernels import Smoothed

    model = tiny_sd_unet()

    def calibrate(denoiser: nn.Module) -> None:
        with torch.no_grad():
            for seed in range(2):
                denoiser(**denoiser_inputs(denoiser, batch=2, seed=seed))

    SmoothQuantStep(None, alpha=0.5).apply(model, calibrate)                    # every Linear/Conv2d wrapped
    assert sum(isinstance(m, EqualizedModule) for m in model.modules()) == 83
    quantize_denoiser(model, get_recipe("minmax-w8a8"))
    with torch.no_grad(), multi_step_calibration(model):
        for seed in range(3):
            model(**denoiser_inputs(model, batch=4, seed=10 + seed))
    model.eval()
    kernels, float_gap, worst = _compare(model)
    assert sum(isinstance(m, Smoothed) for m in model.modules()) == 83
    assert not any(isinstance(m, EqualizedModule) for m in model.modules())
    # The smoothing scale is a float32 multiply before each quantizer, where float64 rounds differently and flips
    # codes: every layer is exact, and the model is as far from float as the fake-quantized one.
    assert kernels == {"int8": 83} and worst > 100.0 and abs(float_gap) < 2.0


def test_weight_only_layers_use_the_weight_only_kernel():
    model = _tiny("minmax-w8a8", plan={"down_blocks.0": "w8a16", "up_blocks.1": "w4", "conv_out": "float"})
    kernels, float_gap, worst = _compare(model)
    assert kernels["weight-only"] > 20 and kernels["float"] == 1 and kernels["int8"] > 20
    assert worst > 100.0 and abs(float_gap) < 2.0


def test_fp8_e4m3_runs_through_scaled_mm():
    recipe = get_recipe("minmax-w8a8")
    recipe = recipe.replace(weights=dataclasses.replace(recipe.weights, format="e4m3"),
                            activations=dataclasses.replace(recipe.activations, format="e4m3"))
    model = _tiny("", recipe=recipe)
    kernels, float_gap, worst = _compare(model)
    # torch 2.13's CPU build has _scaled_mm for e4m3 (the test fails loudly if a build drops it)
    assert kernels == {"fp8": 83} and worst > 100.0 and abs(float_gap) < 2.0


def test_fp8_without_scaled_mm_runs_the_same_codes_as_a_float_product():
    recipe = get_recipe("minmax-w8a8")
    recipe = recipe.replace(weights=dataclasses.replace(recipe.weights, format="e4m3"),
                            activations=dataclasses.replace(recipe.activations, format="e4m3"))
    model = _tiny("", recipe=recipe)
    inputs = denoiser_inputs(model, batch=2, seed=99)
    fused, plain = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        assert deploy(fused).kernels == {"fp8": 83}
        deployment = deploy(plain, fp8_fused=False)
        assert deployment.kernels == {"fp8-dequant": 83} and "float product" in deployment.notes[0]
        fused_out, plain_out, fake = fused(**inputs).sample, plain(**inputs).sample, model(**inputs).sample
        float_out = tiny_sd_unet()(**inputs).sample
    # the same codes either way, so the same distance from float (to rounding flips of the float accumulation)
    assert abs(sqnr_db(float_out, fused_out) - sqnr_db(float_out, plain_out)) < 2.0
    assert abs(sqnr_db(float_out, plain_out) - sqnr_db(float_out, fake)) < 2.0


def test_deploy_refuses_a_model_without_quant_layers_and_an_unknown_runtime():
    with pytest.raises(BrevitasLDMError, match="no Brevitas quant layers: quantize and calibrate it first"):
        deploy(tiny_sd_unet())
    with pytest.raises(BrevitasLDMError, match="runtime = 'tensorrt' is not allowed: choose one of torch"):
        deploy(tiny_sd_unet(), runtime="tensorrt")


def test_codes_and_scales_keep_their_dtypes_when_the_model_is_cast():
    model = _tiny("minmax-w8a8")
    deploy(model)
    model.to(torch.bfloat16)
    kernel = next(m for m in model.modules() if isinstance(m, Int8Matmul))
    assert kernel.weight.dtype == torch.int8 and kernel.weight_scale.dtype == torch.float32
    assert kernel.act_scale.dtype == torch.float32
    out = model(**{k: v.to(torch.bfloat16) if v.is_floating_point() else v
                   for k, v in denoiser_inputs(model, batch=2, seed=99).items()}).sample
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


class _TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.proj = nn.Linear(16, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.silu(self.conv(x))
        return self.proj(h.flatten(2).transpose(1, 2))


@pytest.mark.slow
def test_the_runtime_compiles_with_torch_compile():
    torch.manual_seed(0)
    model = _TwoLayers()
    recipe = get_recipe("minmax-w8a8")
    recipe = recipe.replace(activations=dataclasses.replace(recipe.activations, symmetric=False))
    quantize_denoiser(model, recipe)
    from brevitas.graph.calibrate import calibration_mode
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad(), calibration_mode(model):
        model(x)
    model.eval()
    assert deploy(model).kernels == {"int8": 2}
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)           # fullgraph: no graph break anywhere
    assert sqnr_db(eager, compiled) > 80.0


@pytest.mark.slow
def test_deploy_command_checks_the_runtime_and_writes_its_kernels(sd_dir, tmp_path, capsys):
    import json

    from cli_args import FAST

    from brevitas_ldm.cli import main

    run = tmp_path / "q"
    assert main(["quantize", "--model", str(sd_dir), "--recipe", "minmax-w8a8", "--out", str(run), *FAST]) == 0
    out = tmp_path / "deployed"
    # a random-weight UNet: its rounding flips leave ~30 dB between any two float orders (see test_job's export)
    assert main(["deploy", "--model", str(sd_dir), "--checkpoint", str(run / "checkpoint"), "--runtime", "torch",
                 "--min-sqnr-db", "20", "--rounds", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "deploy.json").read_text())
    assert summary["kernels"] == {"int8": 83} and summary["sqnr_vs_fake_quant_db"] >= 20.0
    assert set(summary["latency"]) == {"fake_quant", "runtime"} and summary["runtime_vs_fake_quant_latency"] > 0
    assert "int8" in capsys.readouterr().out
    # refused when the bar is above what it reaches: one line, exit 2, nothing written
    assert main(["deploy", "--model", str(sd_dir), "--checkpoint", str(run / "checkpoint"), "--min-sqnr-db", "500",
                 "--out", str(tmp_path / "refused")]) == 2
    assert "--min-sqnr-db 500" in capsys.readouterr().err and not (tmp_path / "refused").exists()
