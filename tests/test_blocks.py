import pytest
import torch.nn as nn

from brevitas_ldm.denoiser.blocks import get_blocks, layer_to_block, quantizable_layers
from brevitas_ldm.errors import ModelError
from brevitas_ldm.zoo.tiny import tiny_class_unet, tiny_dit, tiny_sd_unet


def test_sd_unet_blocks_in_execution_order():
    unet = tiny_sd_unet()
    blocks = get_blocks(unet)
    assert [b.name for b in blocks] == ["conv_in", "time_embedding", "down_blocks.0", "down_blocks.1", "mid_block",
                                        "up_blocks.0", "up_blocks.1", "conv_out"]
    assert [b.kind for b in blocks] == ["input", "embedding", "down", "down", "mid", "up", "up", "output"]
    # Every Linear/Conv2d belongs to exactly one block; cross-attention projections are in down/mid/up blocks.
    layers = [n for n, _ in quantizable_layers(unet)]
    owners = layer_to_block(blocks)
    assert sorted(owners) == sorted(layers)
    assert owners["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"] == "down_blocks.0"
    assert sum(b.param_count for b in blocks) == sum(
        p.numel() for _, m in quantizable_layers(unet) for p in m.parameters(recurse=False))


def test_class_unet_and_dit_blocks():
    names = [b.name for b in get_blocks(tiny_class_unet())]
    assert names[:3] == ["conv_in", "time_embedding", "class_embedding"] or names[:2] == ["conv_in", "time_embedding"]
    assert names[-1] == "conv_out" and "mid_block" in names
    dit_blocks = get_blocks(tiny_dit())
    assert [b.name for b in dit_blocks] == ["pos_embed", "transformer_blocks.0", "transformer_blocks.1",
                                            "proj_out_1", "proj_out_2"]
    assert all(len(b) > 0 for b in dit_blocks)


def test_unrecognised_model_lists_children_and_explicit_blocks_work():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 3, 3))
    with pytest.raises(ModelError) as info:
        get_blocks(model)
    message = str(info.value)
    assert "0 (Conv2d), 1 (ReLU), 2 (Conv2d)" in message and "block_names=" in message
    blocks = get_blocks(model, block_names=["0", "2"])
    assert [b.name for b in blocks] == ["0", "2"]
    with pytest.raises(ModelError, match="'5' is not a sub-module"):
        get_blocks(model, block_names=["5"])
    partial = get_blocks(model, block_names=["0"])
    assert [b.name for b in partial] == ["0", "other"]  # nothing escapes the analysis
