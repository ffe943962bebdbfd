"""SmoothQuant as a Brevitas layerwise activation equalization step on a float denoiser."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from brevitas.graph.calibrate import calibration_mode
from brevitas.nn.equalized_layer import EqualizedModule

from brevitas_ldm.analysis.layer_sensitivity import analyze_layers
from brevitas_ldm.denoiser.blocks import quantizable_layers
from brevitas_ldm.denoiser.names import (
    internal_name,
    is_smoothed,
    to_internal_keys,
    user_facing_name,
    user_facing_names,
)
from brevitas_ldm.errors import ModelError, RecipeError
from brevitas_ldm.quant.quantize import quant_layers, quantize_denoiser, read_precisions
from brevitas_ldm.quant.smoothquant import SmoothQuantStep, smoothing_scales
from brevitas_ldm.recipe import get_recipe
from brevitas_ldm.sqnr import sqnr_db
from brevitas_ldm.zoo.tiny import denoiser_inputs, tiny_sd_unet

RECIPE = get_recipe("sqnr-hybrid-w8a8")
PROJ_IN = "down_blocks.0.attentions.0.proj_in"  # Conv2d 1x1 after a GroupNorm
TO_OUT = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"  # Linear after attention
OUTLIER_CHANNELS = [1, 5, 9]


def outlier_unet() -> nn.Module:
    """tiny_sd_unet with 50x activation outliers in the inputs of PROJ_IN and TO_OUT, function unchanged.

    PROJ_IN: the GroupNorm's affine weight/bias of three channels x50, PROJ_IN's matching input columns /50.
    TO_OUT: attention output is linear in V per channel, so to_v's rows x50 and TO_OUT's columns /50.
    """
    unet = tiny_sd_unet()
    with torch.no_grad():
        norm = unet.get_submodule("down_blocks.0.attentions.0.norm")
        norm.weight[OUTLIER_CHANNELS] *= 50
        norm.bias[OUTLIER_CHANNELS] *= 50
        unet.get_submodule(PROJ_IN).weight[:, OUTLIER_CHANNELS] /= 50
        to_v = unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v")
        to_v.weight[OUTLIER_CHANNELS] *= 50
        unet.get_submodule(TO_OUT).weight[:, OUTLIER_CHANNELS] /= 50
    return unet


INPUTS = [denoiser_inputs(tiny_sd_unet(), batch=4, seed=s) for s in (1, 2)]


def calibrate(denoiser: nn.Module) -> None:
    """The calibration data: two batches of denoiser inputs."""
    with torch.no_grad():
        for inputs in INPUTS:
            denoiser(**inputs)


def fp_output(denoiser: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return denoiser(**INPUTS[0])[0]


def test_outlier_injection_keeps_the_function():
    assert torch.allclose(fp_output(outlier_unet()), fp_output(tiny_sd_unet()), atol=1e-5)


def test_equalization_leaves_fp_output_unchanged_and_names_user_facing():
    unet = tiny_sd_unet()
    reference = fp_output(unet)
    names_before = [n for n, _ in quantizable_layers(unet)]
    result = SmoothQuantStep(None, alpha=0.5).apply(unet, calibrate)  # every Linear/Conv2d
    assert result.layers == names_before and set(result.alphas.values()) == {0.5}
    assert result.passes == 1 and result.denoiser_calls == 2  # one pass of the calibration data
    assert sum(isinstance(m, EqualizedModule) for m in unet.modules()) == 83
    smoothed = fp_output(unet)
    assert torch.allclose(smoothed, reference, atol=1e-5, rtol=1e-4)
    assert sqnr_db(reference, smoothed) > 100
    # Brevitas renamed every layer to `<name>.layer`; the mapping gives the user-facing names back, in order
    assert list(user_facing_names(unet).values()) == names_before
    assert internal_name(unet, PROJ_IN) == PROJ_IN + ".layer" and user_facing_name(unet, PROJ_IN + ".layer") == PROJ_IN
    assert set(smoothing_scales(unet)) == set(names_before)


def test_restricted_to_selected_layers_and_quantizable_afterwards():
    unet = tiny_sd_unet()
    reference = fp_output(unet)
    result = SmoothQuantStep([PROJ_IN, TO_OUT], alpha=0.5).apply(unet, calibrate)
    assert result.layers == [PROJ_IN, TO_OUT] and result.sqnr_before_db == {}   # no recipe: nothing measured
    assert is_smoothed(unet, PROJ_IN) and is_smoothed(unet, TO_OUT)
    assert sum(isinstance(m, EqualizedModule) for m in unet.modules()) == 2
    assert isinstance(unet.get_submodule("down_blocks.0.attentions.0.proj_out"), nn.Conv2d)  # untouched
    assert torch.allclose(fp_output(unet), reference, atol=1e-5, rtol=1e-4)
    assert to_internal_keys(unet, {PROJ_IN: "w4a8", "up_blocks.1": "w8a16"}) == {PROJ_IN + ".layer": "w4a8",
                                                                                  "up_blocks.1": "w8a16"}
    # quantize_denoiser quantizes the wrapped layers and keeps taking user-facing names in its plan
    quantize_denoiser(unet, RECIPE, {PROJ_IN: "w4a8", "up_blocks.1": "w8a16"})
    assert isinstance(unet.get_submodule(PROJ_IN), EqualizedModule)
    assert type(unet.get_submodule(PROJ_IN + ".layer")).__name__ == "QuantConv2d"
    layers = quant_layers(unet)
    assert len(layers) == 83 and PROJ_IN in layers and TO_OUT in layers
    precisions = {n: p.name for n, p in read_precisions(unet).items()}
    assert precisions[PROJ_IN] == "w4a8" and precisions[TO_OUT] == "w8a8"
    assert precisions["up_blocks.1.attentions.0.proj_in"] == "w8a16"


def test_smoothquant_raises_relative_sqnr_of_outlier_layers():
    """Outlier layers gain > 15 dB; the trial SQNRs agree with the local analysis run on the real model."""
    unet = outlier_unet()
    before = analyze_layers(unet, RECIPE, calibrate, calibrate, calibration=calibration_mode,
                             modules=[PROJ_IN, TO_OUT])
    assert before[PROJ_IN].sqnr_db < 15 and before[PROJ_IN].activation_share > 0.95  # the outliers dominate
    step = SmoothQuantStep([PROJ_IN, TO_OUT], alpha_grid=(0.3, 0.5, 0.7, 0.9), recipe=RECIPE)
    result = step.apply(unet, calibrate)
    assert result.layers == [PROJ_IN, TO_OUT] and result.skipped == {}
    assert result.passes == 4  # equalize trials, calibrate trials, measure trials, apply (one distinct alpha)
    # calibrate() makes 2 calls; the plan's bound allows one equalization pass per grid alpha (4), 1 was needed
    assert result.denoiser_calls == 8 <= step.planned_calls(run_calls=2, calibration_calls=2) == 14
    for name in (PROJ_IN, TO_OUT):
        grid = result.alpha_sqnr_db[name]
        assert set(grid) == {"0.3", "0.5", "0.7", "0.9"}
        assert result.sqnr_after_db[name] == pytest.approx(max(grid.values()))
        assert result.sqnr_after_db[name] > result.sqnr_before_db[name] + 15
        assert result.sqnr_before_db[name] == pytest.approx(before[name].sqnr_db, abs=0.1)
        assert result.scale_mismatch[name] < 1e-5
    after = analyze_layers(unet, RECIPE, calibrate, calibrate, calibration=calibration_mode,
                            modules=[PROJ_IN, TO_OUT])
    assert [e.name for e in after.modules] == [PROJ_IN, TO_OUT]  # user-facing names in reports
    for name in (PROJ_IN, TO_OUT):
        assert after[name].sqnr_db == pytest.approx(result.sqnr_after_db[name], abs=0.1)
    # and the quantized denoiser's output improves with it
    reference = fp_output(outlier_unet())
    plain = quantize_denoiser(outlier_unet(), RECIPE)
    smoothed = quantize_denoiser(unet, RECIPE)
    for model in (plain, smoothed):
        with calibration_mode(model):
            calibrate(model)
    assert sqnr_db(reference, fp_output(smoothed)) > sqnr_db(reference, fp_output(plain)) + 3


def test_single_alpha_without_recipe_applies_without_measuring():
    unet = outlier_unet()
    result = SmoothQuantStep([PROJ_IN], alpha=0.7).apply(unet, calibrate)
    assert result.alphas == {PROJ_IN: 0.7} and result.sqnr_before_db == {} and result.passes == 1
    scale = smoothing_scales(unet)[PROJ_IN]
    assert scale.shape[-1] == 32 or scale.numel() == 32
    # the outlier channels are divided down the most
    assert set(scale.flatten().argsort()[:3].tolist()) == set(OUTLIER_CHANNELS)


def test_grid_leaves_a_layer_unsmoothed_when_no_alpha_helps():
    # time_embedding.linear_1 sees a smooth sinusoidal embedding: alpha = 1 moves all range into the weights and
    # costs ~1.3 dB, while PROJ_IN gains > 15 dB
    worse = "time_embedding.linear_1"
    unet = outlier_unet()
    result = SmoothQuantStep([PROJ_IN, worse], alpha_grid=(1.0,), recipe=RECIPE).apply(unet, calibrate)
    assert result.layers == [PROJ_IN] and result.alphas == {PROJ_IN: 1.0}
    assert "improves" in result.skipped[worse] and not is_smoothed(unet, worse) and is_smoothed(unet, PROJ_IN)
    assert result.alpha_sqnr_db[worse]["1"] < result.sqnr_before_db[worse]
    assert result.sqnr_after_db[worse] == result.sqnr_before_db[worse]
    kept = SmoothQuantStep([worse], alpha_grid=(1.0,), recipe=RECIPE, keep_if_worse=True).apply(outlier_unet(),
                                                                                                calibrate)
    assert kept.layers == [worse] and kept.sqnr_after_db[worse] < kept.sqnr_before_db[worse]


def test_errors_name_the_problem():
    unet = tiny_sd_unet()
    with pytest.raises(ModelError, match="not a Linear/Conv2d layer"):
        SmoothQuantStep(["down_blocks.0.attentions.0.norm"]).apply(unet, calibrate)
    with pytest.raises(ModelError, match="list of layer names"):
        SmoothQuantStep(PROJ_IN)
    with pytest.raises(RecipeError, match="needs the recipe"):
        SmoothQuantStep([PROJ_IN], alpha_grid=(0.5,))
    with pytest.raises(RecipeError, match=r"\[0, 1\]"):
        SmoothQuantStep([PROJ_IN], alpha=1.5)
    SmoothQuantStep([PROJ_IN]).apply(unet, calibrate)
    with pytest.raises(ModelError, match="already smoothed"):
        SmoothQuantStep([PROJ_IN]).apply(unet, calibrate)
    with pytest.raises(ModelError, match="saw no input"):
        SmoothQuantStep([TO_OUT]).apply(copy.deepcopy(unet), lambda d: None)
