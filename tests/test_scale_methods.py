"""Every scale method a recipe can name lowers a layer's quantization error against naive min-max, and stays right
on every path a quantized layer takes (inference mode with cached weights, the analysis bank, the checkpoint).

``scale_method = "mse"`` for weights used to give -11 to -19 dB on tiny-sd-digits: Brevitas initialises an MSE weight
scale on the quantizer's first forward, and ``quant_inference_mode`` never makes that forward.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn
from brevitas.graph.calibrate import calibration_mode

from brevitas_ldm.checkpoint.folder import STATE_FILE, save_denoiser
from brevitas_ldm.errors import RecipeError
from brevitas_ldm.quant.probes import split_twin
from brevitas_ldm.quant.quantize import (
    fast_inference,
    initialise_weight_scales,
    quant_layers,
    quantize_denoiser,
)
from brevitas_ldm.recipe import (
    ACT_SCALE_METHODS,
    WEIGHT_SCALE_METHODS,
    Recipe,
    get_recipe,
)
from brevitas_ldm.sqnr import sqnr_db


def _recipe(weights: str = "minmax", activations: str = "minmax", name: str = "minmax-w4a8") -> Recipe:
    base = get_recipe(name)
    return dataclasses.replace(base, name=f"{name}-{weights}-{activations}",
                               weights=dataclasses.replace(base.weights, scale_method=weights),
                               activations=dataclasses.replace(base.activations, scale_method=activations))


def _heavy_tailed_layer(seed: int = 0) -> nn.Sequential:
    """A Linear whose weights have Student-t tails, as trained layers' do: a few large values per channel."""
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(256, 64)
    with torch.no_grad():
        normal = torch.randn(64, 256, generator=generator)
        chi = torch.randn(64, 256, 3, generator=generator).pow(2).mean(-1)
        layer.weight.copy_(0.05 * normal / chi.sqrt())        # Student-t, 3 degrees of freedom
        layer.bias.copy_(0.1 * torch.randn(64, generator=generator))
    return nn.Sequential(layer)


def _activations(seed: int, batches: int = 8) -> list[torch.Tensor]:
    """Token inputs (256 tokens of 256 features per sample) with a few outlier features and two rare spikes per
    batch: the case percentile and MSE ranges exist for (min-max spends the whole range on two values)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        x = torch.randn(8, 256, 256, generator=generator)
        x[..., :3] *= 4.0
        flat = x.view(-1)
        spikes = torch.randint(0, flat.numel(), (2,), generator=generator)
        flat[spikes] = 80.0
        out.append(x)
    return out


def _calibrated(recipe: Recipe, seed: int = 0) -> nn.Sequential:
    model = quantize_denoiser(_heavy_tailed_layer(seed), recipe, {"0": recipe.default_precision}).eval()
    with torch.no_grad(), calibration_mode(model):
        for x in _activations(seed + 1):
            model(x)
    return model


@pytest.mark.parametrize("method", [m for m in WEIGHT_SCALE_METHODS if m != "minmax"])
def test_weight_scale_methods_lower_the_weight_error_against_minmax(method):
    fp = _heavy_tailed_layer().eval()
    weight = fp[0].weight.detach().clone()
    error_db = {}
    for name in ("minmax", method):
        model = quantize_denoiser(_heavy_tailed_layer(), _recipe(weights=name), {"0": "w4a8"}).eval()
        with torch.no_grad():
            error_db[name] = sqnr_db(weight, model[0].quant_weight().value)
    assert error_db[method] > error_db["minmax"] + 0.5, error_db       # 4-bit weights: MSE clips the tails (+0.8 dB)


@pytest.mark.parametrize("method", [m for m in ACT_SCALE_METHODS if m != "minmax"])
def test_activation_scale_methods_lower_the_activation_error_against_minmax(method):
    fp = _heavy_tailed_layer().eval()
    held_out = torch.cat(_activations(seed=7, batches=2))
    with torch.no_grad():
        reference = fp(held_out)
    error_db = {}
    for name in ("minmax", method):
        model = _calibrated(_recipe(activations=name))
        act_only = split_twin(model[0])["act"]
        with torch.no_grad():
            error_db[name] = sqnr_db(reference, act_only(held_out))
    assert error_db[method] > error_db["minmax"] + 1.0, error_db


@pytest.mark.parametrize("method", ACT_SCALE_METHODS)
@pytest.mark.parametrize("bits", [4, 8])
def test_asymmetric_activations_lower_the_error_of_one_sided_inputs(method, bits):
    """``activations.symmetric = false`` (the low-bit flagship recipes' setting): a layer fed SiLU outputs, as every
    UNet convolution after a norm + SiLU is, spends half of a symmetric grid on values that never occur; a zero
    point gives the whole grid to [-0.28, max], up to one bit of resolution."""
    fp = _heavy_tailed_layer().eval()
    generator = torch.Generator().manual_seed(5)
    inputs = [nn.functional.silu(2.0 * torch.randn(8, 256, 256, generator=generator)) for _ in range(4)]
    held_out = nn.functional.silu(2.0 * torch.randn(8, 256, 256, generator=generator))
    with torch.no_grad():
        reference = fp(held_out)
    error_db = {}
    for symmetric in (True, False):
        recipe = _recipe(activations=method)
        recipe = recipe.replace(activations=dataclasses.replace(recipe.activations, bits=bits, symmetric=symmetric))
        model = quantize_denoiser(_heavy_tailed_layer(), recipe, {"0": recipe.default_precision}).eval()
        with torch.no_grad(), calibration_mode(model):
            for x in inputs:
                model(x)
        with torch.no_grad():
            error_db[symmetric] = sqnr_db(reference, split_twin(model[0])["act"](held_out))
    assert error_db[False] > error_db[True] + 2.0, error_db     # +2.5 to +6 dB


@pytest.mark.parametrize("weights", WEIGHT_SCALE_METHODS)
@pytest.mark.parametrize("activations", ACT_SCALE_METHODS)
def test_inference_mode_gives_the_quantized_model_for_every_scale_method(weights, activations):
    """fast_inference (Brevitas' quant_inference_mode with cached weights) is the model the analysis measures."""
    model = _calibrated(_recipe(weights, activations))
    x = torch.cat(_activations(seed=11, batches=1))
    with torch.no_grad():
        plain = model(x)
    fresh = _calibrated(_recipe(weights, activations))        # the inference mode entered first, as evaluation does
    with torch.no_grad(), fast_inference(fresh):
        cached = fresh(x)
    assert torch.allclose(cached, plain, rtol=0, atol=1e-5 * plain.abs().max().item())
    assert sqnr_db(_heavy_tailed_layer().eval()(x).detach(), cached) > 5.0      # W4A8, not garbage (was < 0)


def test_an_mse_weight_scale_is_saved_and_initialised_once(tmp_path):
    model = quantize_denoiser(_heavy_tailed_layer(), _recipe(weights="mse"), {"0": "w4a8"}).eval()
    assert initialise_weight_scales(model) == 1
    assert initialise_weight_scales(model) == 0                # already set: not searched again
    fresh = quantize_denoiser(_heavy_tailed_layer(), _recipe(weights="mse"), {"0": "w4a8"}).eval()
    save_denoiser(fresh, tmp_path / "ck", recipe=_recipe(weights="mse"))      # initialises it before saving
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "ck" / STATE_FILE))
    assert torch.equal(keys["0.weight_scale"], fresh[0].quant_weight().scale)   # the searched scale, stored


def test_the_analysis_bank_measures_mse_weights_as_quantized(sd_dir):
    """The global analysis swaps bank layers in under quant_inference_mode: they must be the quantized model."""
    from brevitas_ldm.denoiser.loading import load_pipeline
    from brevitas_ldm.denoiser.sampling import SamplingSpec, get_denoiser
    from brevitas_ldm.denoiser.trajectory import fp_reference, measure
    from brevitas_ldm.quant.calibration import calibrate_pipeline
    from brevitas_ldm.quant.precision_bank import PrecisionBank

    recipe = dataclasses.replace(_recipe(weights="mse", name="minmax-w8a8"),
                                 calibration=dataclasses.replace(get_recipe("minmax-w8a8").calibration,
                                                                 mode="single_step"))
    spec = SamplingSpec(3, 2.0, 2)
    prompts, seeds = ["a photo", "a cat"], [1, 2]
    pipe = load_pipeline(str(sd_dir))
    reference = fp_reference(pipe, prompts, seeds, spec)
    bank = PrecisionBank(pipe, recipe, prompts, seeds, spec).ensure(["w4a8"])
    layers = {name: "w4a8" for name in bank.layers[next(iter(bank.layers))]}
    in_bank = measure(pipe, reference, bank, bank.layer_precisions(layers)).final_db
    quantize_denoiser(get_denoiser(pipe), recipe, layers)
    calibrate_pipeline(pipe, recipe, prompts, seeds, spec)
    built = measure(pipe, reference).final_db
    assert in_bank == pytest.approx(built, abs=0.05)
    assert built > 5.0


def test_algorithms_a_recipe_cannot_run_are_refused_with_the_key_named():
    text = get_recipe("minmax-w8a8").to_toml().replace("[weights]\n", "[weights]\nalgorithm = \"gptq\"\n")
    with pytest.raises(RecipeError, match=r"unknown key weights\.'algorithm'"):
        Recipe.from_toml(text)
    assert quant_layers(nn.Sequential(nn.Linear(2, 2))) == {}


@pytest.mark.parametrize("weights", WEIGHT_SCALE_METHODS)
def test_inference_mode_entered_before_any_forward_quantizes_the_weights(weights):
    """Weight-only layers need no calibration, so nothing runs them before evaluation enters inference mode."""
    x = torch.cat(_activations(seed=11, batches=1))
    plain_model = quantize_denoiser(_heavy_tailed_layer(), _recipe(weights), {"0": "w4"}).eval()
    first = quantize_denoiser(_heavy_tailed_layer(), _recipe(weights), {"0": "w4"}).eval()
    with torch.no_grad():
        with fast_inference(first):
            cached = first(x)
        plain = plain_model(x)
    assert torch.equal(cached, plain)
    assert sqnr_db(_heavy_tailed_layer().eval()(x).detach(), cached) > 8.0


@pytest.mark.slow  # the main job end to end, twice
@pytest.mark.parametrize("recipe_name", ["minmax-w8a8", "smoothquant-w8a8"])
def test_evaluation_measures_mse_weights_as_quantized(sd_dir, recipe_name):
    """The main job evaluates in inference mode right after calibration (which runs with quantization off)."""
    from brevitas_ldm.denoiser.loading import load_pipeline
    from brevitas_ldm.denoiser.sampling import SamplingSpec, get_denoiser
    from brevitas_ldm.denoiser.trajectory import fp_reference, measure
    from brevitas_ldm.workflow import quantize_pipeline

    recipe = dataclasses.replace(_recipe(weights="mse", activations="mse", name=recipe_name),
                                 calibration=dataclasses.replace(get_recipe(recipe_name).calibration,
                                                                 mode="single_step"))
    spec = SamplingSpec(3, 2.0, 2)
    prompts, seeds = ["a photo", "a cat"], [1, 2]
    results = []
    for inference_mode in (True, False):
        pipe = load_pipeline(str(sd_dir))
        reference = fp_reference(pipe, prompts, seeds, spec)
        quantize_pipeline(pipe, recipe, prompts, seeds, spec)
        with fast_inference(get_denoiser(pipe)) if inference_mode else torch.no_grad():
            results.append(measure(pipe, reference).final_db)
    assert results[0] == pytest.approx(results[1], abs=0.01)
    assert results[0] > 10.0
