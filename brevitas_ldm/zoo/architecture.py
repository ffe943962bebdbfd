"""Configurations of the embedded models' components: the real diffusers / transformers classes, scaled down
(tiny-sd-digits' sizes by default; tiny-sd-fashion's are in :mod:`brevitas_ldm.zoo.train`).

The UNet keeps Stable Diffusion's structure (cross-attention down and up blocks, a cross-attention mid block,
skip connections, a sinusoidal time embedding with an MLP) because that structure is what the paper's block
sensitivity analysis is about; only widths and depth are small enough for 2 CPU cores.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

LATENT_CHANNELS = 4
LATENT_SIZE = 8
TEXT_HIDDEN = 64


def build_vae(block_out_channels: tuple[int, ...] = (16, 32, 32)) -> AutoencoderKL:
    """32x32 RGB <-> 4x8x8 latents (two downsamplings); tiny-sd-digits' widths by default."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=block_out_channels,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=32,
    )


def build_text_encoder(vocab_size: int, bos_token_id: int, eos_token_id: int, num_layers: int = 2) -> CLIPTextModel:
    """A small CLIP text transformer (two layers for tiny-sd-digits) over the project's own vocabulary."""
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=4 * TEXT_HIDDEN,
        projection_dim=TEXT_HIDDEN,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        max_position_embeddings=16,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )
    return CLIPTextModel(config)


def build_unet(block_out_channels: tuple[int, ...] = (48, 64, 96), attention_head_dim: int = 4,
               layers_per_block: int = 1) -> UNet2DConditionModel:
    """SD-1.5's block pattern at three resolution levels (8x8, 4x4, 2x2), cross-attention at 8x8 and 4x4 and in
    the mid block; tiny-sd-digits' widths by default."""
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=attention_head_dim,
        norm_num_groups=16,
    )


def build_scheduler() -> DDIMScheduler:
    """SD's noise schedule (scaled-linear betas, epsilon prediction), sampled with DDIM."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
