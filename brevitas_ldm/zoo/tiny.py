"""Tiny random-weight instances of the real diffusers classes the product supports, for tests and benchmarks.

Seeded so every test run builds the same weights. Each is small enough for a CPU test but keeps its class's
real structure (cross-attention, class conditioning, patch embedding).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiTTransformer2DModel,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from brevitas_ldm.zoo.tokenizer import write_tokenizer_files


def tiny_sd_unet(seed: int = 0) -> UNet2DConditionModel:
    """SD-like: cross-attention down/up blocks, a cross-attention mid block, 2 resolution levels."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=16).eval()


def tiny_class_unet(seed: int = 0) -> UNet2DModel:
    """LDM-style class-conditional UNet2DModel."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=16, num_class_embeds=10, attention_head_dim=8).eval()


def tiny_dit(seed: int = 0) -> DiTTransformer2DModel:
    """DiT with adaLN-zero class conditioning (weights randomised so adaLN is not the identity)."""
    torch.manual_seed(seed)
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                  num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10).eval()
    return randomise_zero_parameters(model)


@torch.no_grad()
def randomise_zero_parameters(model: torch.nn.Module, std: float = 0.02) -> torch.nn.Module:
    """Draw every all-zero parameter from N(0, std) (adaLN-zero and adaLN-single start at zero, which would make a
    random-weight transformer's modulation the identity and its output zero); the global seed decides the draw."""
    for param in model.parameters():
        if param.abs().sum() == 0:
            param.normal_(0, std)
    return model


def denoiser_inputs(model, batch: int = 4, seed: int = 1) -> dict:
    """Deterministic inputs for one denoiser call of ``model``."""
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, 8, 8, generator=gen)
    timestep = torch.randint(0, 1000, (batch,), generator=gen)
    if isinstance(model, UNet2DConditionModel):
        hidden = torch.randn(batch, 6, model.config.cross_attention_dim, generator=gen)
        return {"sample": sample, "timestep": timestep, "encoder_hidden_states": hidden}
    labels = torch.randint(0, 10, (batch,), generator=gen)
    if isinstance(model, UNet2DModel):
        return {"sample": sample, "timestep": timestep, "class_labels": labels}
    return {"hidden_states": sample, "timestep": timestep, "class_labels": labels}


def tiny_sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A complete random-weight StableDiffusionPipeline (for pipelines other than the embedded model)."""
    torch.manual_seed(seed)
    unet = tiny_sd_unet(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=16).eval()
    return sd_pipeline_around(unet, vae, hidden_size=32, intermediate_size=64, heads=2, max_positions=16)


def sd_pipeline_around(unet: UNet2DConditionModel, vae: AutoencoderKL, hidden_size: int, intermediate_size: int,
                       heads: int, max_positions: int) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline around ``unet`` and ``vae``: the project's own CLIP tokenizer files, a one-layer
    random CLIP text encoder of ``hidden_size`` (the UNet's cross-attention width) and SD's DDIM scheduler."""
    with tempfile.TemporaryDirectory() as tmp:
        vocab_size = write_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    vocab = tokenizer.get_vocab()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        projection_dim=hidden_size, num_hidden_layers=1, num_attention_heads=heads,
        max_position_embeddings=max_positions, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])).eval()
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
