import copy

import brevitas.nn as qnn
import pytest
import torch
import torch.nn as nn
from brevitas.graph.calibrate import calibration_mode

from brevitas_ldm.errors import RecipeError
from brevitas_ldm.precision import FLOAT, Precision
from brevitas_ldm.quant.quantize import (
    quant_layers,
    quantize_denoiser,
    read_precisions,
    resolve_precisions,
)
from brevitas_ldm.recipe import Recipe, get_recipe
from brevitas_ldm.sqnr import sqnr_db
from brevitas_ldm.zoo.tiny import (
    denoiser_inputs,
    tiny_class_unet,
    tiny_dit,
    tiny_sd_unet,
)


def _calibrate(model, batches=4):
    with torch.no_grad(), calibration_mode(model):
        for seed in range(batches):
            model(**denoiser_inputs(model, seed=seed))


def test_precision_map_is_read_back_from_brevitas_proxies():
    unet = tiny_sd_unet()
    plan = {"up_blocks.1": "w4a8", "conv_in": "float", "mid_block": "w8", "time_embedding": "w8a16",
            "up_blocks.1.attentions.0.proj_in": "w6a8"}
    expected = resolve_precisions(unet, get_recipe("minmax-w8a8"), plan)
    quantize_denoiser(unet, get_recipe("minmax-w8a8"), plan)
    assert read_precisions(unet) == expected
    assert expected["up_blocks.1.attentions.0.proj_in"] == Precision(6, 8)  # layer entries win over block entries
    assert expected["up_blocks.1.resnets.0.conv1"] == Precision(4, 8)
    assert expected["mid_block.resnets.0.conv1"] == Precision(8, None)
    assert expected["down_blocks.0.resnets.0.conv1"] == Precision(8, 8)
    assert type(unet.conv_in) is nn.Conv2d  # float layers stay torch layers
    layers = quant_layers(unet)
    assert isinstance(layers["time_embedding.linear_1"], qnn.QuantLinear)
    assert int(layers["time_embedding.linear_1"].input_quant.bit_width()) == 16
    assert int(layers["up_blocks.1.resnets.0.conv1"].weight_quant.bit_width()) == 4
    assert not layers["mid_block.resnets.0.conv1"].input_quant.is_quant_enabled


def test_skip_layers_and_unknown_plan_entries():
    recipe = get_recipe("minmax-w8a8").replace(skip_layers=("conv_out", "*.attn2.to_k"))
    unet = tiny_sd_unet()
    precisions = resolve_precisions(unet, recipe)
    assert precisions["conv_out"] == FLOAT
    assert precisions["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"] == FLOAT
    assert precisions["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"] == Precision(8, 8)
    # skip_layers beats a block entry; an explicit layer entry beats skip_layers.
    ordered = resolve_precisions(unet, recipe, {"up_blocks.1": "w8a16", "down_blocks.0": "w4a8",
                                                "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": "w8"})
    assert ordered["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"] == Precision(8, None)
    assert resolve_precisions(unet, recipe.replace(skip_layers=("up_blocks.1.resnets.0.conv1",)),
                              {"up_blocks.1": "w8a16"})["up_blocks.1.resnets.0.conv1"] == FLOAT
    with pytest.raises(RecipeError, match="'up_blocks.9' names no block or quantizable layer"):
        resolve_precisions(unet, recipe, {"up_blocks.9": "w8a8"})


def test_weight_format_and_granularity_follow_the_recipe():
    recipe = Recipe.from_toml('name = "t"\n[weights]\ngranularity = "per_tensor"\nsymmetric = false\n'
                              '[activations]\nsymmetric = false\n')
    unet = quantize_denoiser(tiny_sd_unet(), recipe)
    layer = quant_layers(unet)["down_blocks.0.resnets.0.conv1"]
    assert layer.weight_quant.scale().numel() == 1
    assert layer.weight_quant.zero_point().abs().sum() > 0  # asymmetric: a non-zero zero point
    per_channel = quantize_denoiser(tiny_sd_unet(), get_recipe("minmax-w8a8"))
    scale = quant_layers(per_channel)["down_blocks.0.resnets.0.conv1"].weight_quant.scale()
    assert scale.numel() == 32  # one scale per output channel


@pytest.mark.parametrize("factory", [tiny_sd_unet, tiny_class_unet, tiny_dit], ids=["sd_unet", "class_unet", "dit"])
def test_calibrated_quantized_denoisers_keep_sqnr(factory):
    # Measured on these seeds: W8A8 26-28 dB, W4A8 12-21 dB; thresholds leave ~4 dB margin.
    fp = factory()
    inputs = denoiser_inputs(fp, batch=8, seed=99)
    with torch.no_grad():
        reference = fp(**inputs).sample
    results = {}
    for name in ("minmax-w8a8", "minmax-w4a8"):
        model = quantize_denoiser(copy.deepcopy(fp), get_recipe(name))
        _calibrate(model)
        with torch.no_grad():
            results[name] = sqnr_db(reference, model(**inputs).sample)
    assert results["minmax-w8a8"] > 22.0
    assert results["minmax-w4a8"] > 9.0
    assert results["minmax-w8a8"] > results["minmax-w4a8"] + 5.0


def test_type_precisions_make_linear_layers_weight_only():
    unet = tiny_sd_unet()
    precisions = resolve_precisions(unet, get_recipe("nncf-hybrid-w8a8"), {"up_blocks.1": "w8a16"})
    assert precisions["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"] == Precision(8, None)
    assert precisions["time_embedding.linear_1"] == Precision(8, None)
    assert precisions["down_blocks.0.resnets.0.conv1"] == Precision(8, 8)
    assert precisions["up_blocks.1.resnets.0.conv1"] == Precision(8, 16)  # block entry, a conv
    assert precisions["up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2"] == Precision(8, None)
    with pytest.raises(RecipeError, match="type_precisions key = 'Conv1d'"):
        Recipe.from_toml('name = "x"\n[type_precisions]\nConv1d = "w8"\n')
