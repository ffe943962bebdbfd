"""--lora: a LoRA is fused into the pipeline before analysis, so users quantize the model they actually run."""

import json

import pytest
import torch
from cli_args import FAST
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from brevitas_ldm.cli import main
from brevitas_ldm.denoiser.loading import load_pipeline
from brevitas_ldm.denoiser.lora import fuse_lora
from brevitas_ldm.errors import ModelError
from brevitas_ldm.zoo.families import sdxl
from brevitas_ldm.zoo.tiny import tiny_sd_pipeline


def write_lora(directory, seed=0, targets=("to_q", "to_k", "to_v", "to_out.0")):
    """A rank-4 LoRA on the tiny SD UNet's attention projections, written the way diffusers trainers write one."""
    pipe = tiny_sd_pipeline()
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(targets), init_lora_weights="gaussian"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:          # peft starts B at zero, which would make the LoRA the identity
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    StableDiffusionPipeline.save_lora_weights(str(directory), unet_lora_layers=get_peft_model_state_dict(pipe.unet),
                                              safe_serialization=True)
    return directory / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    return write_lora(tmp_path_factory.mktemp("lora"))


@torch.no_grad()
def test_fused_lora_changes_the_denoiser_and_leaves_plain_layers(sd_dir, lora_file):
    base = load_pipeline(sd_dir)
    fused = load_pipeline(sd_dir)
    info = fuse_lora(fused, lora_file)
    # 4 transformer blocks (down 1, mid 1, up 2) x 2 attentions x 4 projections: 32 weights changed, no bias.
    assert info.changed_layers == 32 and len(info.sha256) == 64
    query = fused.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert type(query) is torch.nn.Linear                     # no peft wrapper left for Brevitas to trip on
    delta = query.weight - base.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight
    assert 0 < torch.linalg.matrix_rank(delta).item() <= 4    # the fused update is the LoRA's rank-4 product


def test_quantize_with_lora_and_every_later_command_uses_the_same_lora(sd_dir, lora_file, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(sd_dir), "--lora", str(lora_file), "--recipe", "minmax-w8a8", "--out",
                 str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    assert metrics["lora"]["sha256"] == meta["lora"]["sha256"] and meta["lora"]["path"] == str(lora_file.resolve())

    # The FP reference of a later evaluate is base + the same LoRA (found from the checkpoint), so the figures of
    # quantize are reproduced exactly; without the LoRA they could not be.
    assert main(["evaluate", "--model", str(sd_dir), "--checkpoint", str(out / "checkpoint"), "--num-samples", "4",
                 "--steps", "3", "--batch-size", "4", "--out", str(tmp_path / "e")]) == 0
    evaluated = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert evaluated["quantized"]["output_sqnr_db"] == metrics["quantized"]["output_sqnr_db"]

    other = write_lora(tmp_path / "other", seed=1)
    capsys.readouterr()
    assert main(["evaluate", "--model", str(sd_dir), "--checkpoint", str(out / "checkpoint"), "--lora", str(other),
                 "--out", str(tmp_path / "e2")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not the LoRA the checkpoint was quantized with" in err
    assert not (tmp_path / "e2").exists()


def test_a_lora_that_does_not_match_the_denoiser_is_one_line(sd_dir, lora_file, tmp_path, capsys):
    with pytest.raises(ModelError, match="does not fit UNet2DConditionModel .*size mismatch"):
        fuse_lora(sdxl(), lora_file)                 # same layer names, other widths
    capsys.readouterr()
    assert main(["quantize", "--model", str(sd_dir), "--lora", str(tmp_path / "missing.safetensors"), "--recipe",
                 "minmax-w8a8", "--out", str(tmp_path / "q"), *FAST]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
