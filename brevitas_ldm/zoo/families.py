"""Tiny random-weight pipelines of every diffusers LDM family the product supports, built from diffusers' own classes.

Users arrive with SD, SDXL, SD3, Flux, PixArt, DiT, DDPM and LDM checkpoints; none can be downloaded here, so each
family gets a seeded pipeline that keeps its class's real structure (text encoders, conditioning, scheduler
family, latent packing) at a size a CPU test samples in a fraction of a second. ``save_pretrained`` writes them
like any hub checkpoint, so the CLI loads them through the same ``from_pretrained`` path a user's model takes.

Tokenizers are the project's own: the CLIP BPE files of :mod:`brevitas_ldm.zoo.tokenizer`, and for T5 a unigram
vocabulary over the same words (T5's sentencepiece model cannot be downloaded).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    LDMPipeline,
    PixArtAlphaPipeline,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UNet2DModel,
    VQModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from brevitas_ldm.zoo.tiny import (
    randomise_zero_parameters,
    sd_pipeline_around,
    tiny_sd_unet,
)
from brevitas_ldm.zoo.tokenizer import prompt_words, write_tokenizer_files

_SD_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                     num_train_timesteps=1000)


def _clip_tokenizer() -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp)


def _clip_text_encoder(tokenizer: CLIPTokenizer, hidden_size: int, projection: bool = False,
                       projection_dim: int | None = None) -> torch.nn.Module:
    vocab = tokenizer.get_vocab()
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                            projection_dim=projection_dim or hidden_size, num_hidden_layers=1, num_attention_heads=2,
                            max_position_embeddings=tokenizer.model_max_length,
                            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                            pad_token_id=vocab["<|endoftext|>"], hidden_act="gelu")
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return model.eval()


def _t5_tokenizer() -> T5Tokenizer:
    """A T5 unigram tokenizer over the prompt words (plus single letters, so any text still tokenizes)."""
    pieces = ["<pad>", "</s>", "<unk>"]
    pieces += ["\u2581" + w for w in prompt_words()]
    pieces += [c for c in "abcdefghijklmnopqrstuvwxyz0123456789"] + ["\u2581"]
    vocab = [(p, 0.0 if i < 3 else -float(i)) for i, p in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=16)


def _t5_encoder(tokenizer: T5Tokenizer, d_model: int) -> T5EncoderModel:
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1,
                      num_heads=2, relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    return T5EncoderModel(config).eval()


def _vae(latent_channels: int = 4, **config: Any) -> AutoencoderKL:
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=8, sample_size=16, **config).eval()


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


def sd_ddim(seed: int = 0) -> Any:
    """StableDiffusionPipeline, epsilon prediction, DDIM."""
    _seeded(seed)
    return sd_pipeline_around(tiny_sd_unet(seed), _vae(), hidden_size=32, intermediate_size=64, heads=2,
                              max_positions=16)


def sd_v_dpmpp(seed: int = 0) -> Any:
    """StableDiffusionPipeline, v-prediction (SD-2-style), DPM-Solver++ (2M, Karras sigmas)."""
    pipe = sd_ddim(seed)
    pipe.scheduler = DPMSolverMultistepScheduler(**_SD_SCHEDULER, prediction_type="v_prediction",
                                                 algorithm_type="dpmsolver++", use_karras_sigmas=True)
    return pipe


def sd_euler(seed: int = 0) -> Any:
    """StableDiffusionPipeline, epsilon prediction, Euler (sigma-space, init noise scaled by sigma_max)."""
    pipe = sd_ddim(seed)
    pipe.scheduler = EulerDiscreteScheduler(**_SD_SCHEDULER)
    return pipe


def sdxl(seed: int = 0) -> Any:
    """StableDiffusionXLPipeline: two CLIP encoders, text_time added conditioning, Euler."""
    _seeded(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=16).eval()
    tokenizer = _clip_tokenizer()
    pipe = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=_clip_text_encoder(tokenizer, 32), text_encoder_2=_clip_text_encoder(
            tokenizer, 32, projection=True), tokenizer=tokenizer, tokenizer_2=_clip_tokenizer(), unet=unet,
        scheduler=EulerDiscreteScheduler(**_SD_SCHEDULER, timestep_spacing="leading"),
        force_zeros_for_empty_prompt=True)
    return pipe


def sd3(seed: int = 0) -> Any:
    """StableDiffusion3Pipeline: MMDiT joint blocks, two CLIP encoders and T5, flow matching."""
    _seeded(seed)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=64,
                                        caption_projection_dim=16, pooled_projection_dim=64, out_channels=4).eval()
    tokenizer = _clip_tokenizer()
    t5_tokenizer = _t5_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=_clip_text_encoder(tokenizer, 32, projection=True), tokenizer=tokenizer,
        text_encoder_2=_clip_text_encoder(tokenizer, 32, projection=True), tokenizer_2=_clip_tokenizer(),
        text_encoder_3=_t5_encoder(t5_tokenizer, 64), tokenizer_3=t5_tokenizer)


def flux(seed: int = 0) -> Any:
    """FluxPipeline: double- and single-stream blocks, packed 2x2 latents, CLIP + T5, guidance-distilled."""
    _seeded(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=True,
                                         axes_dims_rope=(4, 4, 8)).eval()
    tokenizer = _clip_tokenizer()
    t5_tokenizer = _t5_tokenizer()
    return FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                  max_shift=1.15, base_image_seq_len=16, max_image_seq_len=256),
        vae=_vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=_clip_text_encoder(tokenizer, 32), tokenizer=tokenizer,
        text_encoder_2=_t5_encoder(t5_tokenizer, 32), tokenizer_2=t5_tokenizer)


def _pixart(pipeline_class: type, seed: int, **transformer_config: Any) -> Any:
    _seeded(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2, caption_channels=32,
        in_channels=4, cross_attention_dim=16, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, **transformer_config).eval()
    randomise_zero_parameters(transformer)
    tokenizer = _t5_tokenizer()
    return pipeline_class(tokenizer=tokenizer, text_encoder=_t5_encoder(tokenizer, 32), vae=_vae(),
                          transformer=transformer,
                          scheduler=DPMSolverMultistepScheduler(**_SD_SCHEDULER))


def pixart_alpha(seed: int = 0) -> Any:
    """PixArtAlphaPipeline: adaLN-single transformer, T5 captions, learned sigma (8 output channels), DPM-Solver."""
    return _pixart(PixArtAlphaPipeline, seed)


def pixart_sigma(seed: int = 0) -> Any:
    """PixArtSigmaPipeline: PixArt-Alpha's transformer with Sigma's interpolation scale, DPM-Solver."""
    return _pixart(PixArtSigmaPipeline, seed, interpolation_scale=None)


def dit(seed: int = 0) -> Any:
    """DiTPipeline: class-label conditioning (1000 classes as ImageNet's DiT, the first ten named), adaLN-zero
    blocks, learned sigma, DDIM."""
    _seeded(seed)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                        num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=1000).eval()
    randomise_zero_parameters(transformer)
    labels = {i: name for i, name in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven",
                                                "eight", "nine"))}
    return DiTPipeline(transformer=transformer, vae=_vae(), id2label=labels,
                       scheduler=DDIMScheduler(**_SD_SCHEDULER, clip_sample=False))


def ddpm(seed: int = 0) -> Any:
    """DDPMPipeline: a pixel-space unconditional UNet2DModel (no VAE), DDPM."""
    _seeded(seed)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=16).eval()
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))


def ldm(seed: int = 0) -> Any:
    """LDMPipeline: unconditional latent diffusion, a UNet2DModel over a VQ-VAE's latents, DDIM."""
    _seeded(seed)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=16).eval()
    vqvae = VQModel(block_out_channels=(16, 32), in_channels=3, out_channels=3, down_block_types=(
        "DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=3,
                    norm_num_groups=8, num_vq_embeddings=32, vq_embed_dim=3).eval()
    return LDMPipeline(vqvae=vqvae, unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000, clip_sample=False))


#: Family name -> builder of its tiny pipeline; the names ``docs/models.md`` and the tests use.
FAMILIES: dict[str, Callable[[int], Any]] = {
    "sd-ddim": sd_ddim, "sd-v-dpmpp": sd_v_dpmpp, "sd-euler": sd_euler, "sdxl": sdxl, "sd3": sd3, "flux": flux,
    "pixart-alpha": pixart_alpha, "pixart-sigma": pixart_sigma, "dit": dit, "ddpm": ddpm, "ldm": ldm,
}


def save_family(family: str, directory: Path, seed: int = 0) -> Path:
    """Build ``family``'s tiny pipeline and ``save_pretrained`` it into ``directory`` (returned)."""
    pipe = FAMILIES[family](seed)
    pipe.save_pretrained(str(directory), safe_serialization=True)
    return directory
