"""``--data``: distil on noised latents of your own images instead of the float model's trajectories.

A folder of images (``.png``, ``.jpg``, ``.jpeg``, ``.webp``, ``.bmp``), each with a caption in a ``.txt`` file of
the same stem (``0001.png`` + ``0001.txt``), the layout most diffusion fine-tuning tools read. Each image is encoded
by the pipeline's VAE, noised by the pipeline's scheduler at every step of the sampling schedule (``add_noise``,
seeded), and paired with the conditioning the pipeline itself builds for the caption (captured from its first
denoiser call, so classifier-free guidance, text encoders and extra conditioning are exactly the pipeline's). The
float denoiser's output on that input is the target. DDPM-family schedulers only (epsilon or v prediction); flow
matching pipelines are refused in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from brevitas_ldm.denoiser.sampling import (
    SamplingSpec,
    find_timestep,
    first_denoiser_call,
    first_tensor,
    get_denoiser,
    is_flow_matching,
    replace_argument,
    timestep_like,
)
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.training.distillation_set import DistillationCall, DistillationSet

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_image_folder(folder: str | Path) -> list[tuple[Path, str]]:
    """(image, caption) pairs of ``folder``, sorted by file name; one error line for anything unusable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BrevitasLDMError(f"--data {folder} is not a folder: pass a folder of images with a .txt caption each")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise BrevitasLDMError(f"--data {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): add images, each "
                               f"with a caption file of the same name ending in .txt")
    pairs = []
    for image in images:
        caption = image.with_suffix(".txt")
        if not caption.is_file():
            raise BrevitasLDMError(f"--data: {image.name} has no caption file {caption.name}: write its caption there")
        try:
            text = caption.read_bytes().decode("utf-8").strip()
        except UnicodeDecodeError:
            raise BrevitasLDMError(f"--data: caption file {caption} is not UTF-8 text: save it as UTF-8") from None
        _check_image(image)
        pairs.append((image, text))
    return pairs


def _check_image(path: Path) -> None:
    """Decode ``path`` once, up front, so a truncated or corrupt image is named before the model loads."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BrevitasLDMError(f"--data: image {path} cannot be decoded ({type(exc).__name__}: "
                               f"{(str(exc).splitlines() or [''])[0]}): replace or remove it") from None


def check_data_pipeline(pipe: Any) -> None:
    """Refuse, up front, pipelines whose images cannot be noised the DDPM way by this module."""
    vae = getattr(pipe, "vae", None)
    scheduler = getattr(pipe, "scheduler", None)
    if is_flow_matching(pipe) or not hasattr(scheduler, "add_noise") or not hasattr(scheduler, "alphas_cumprod"):
        raise BrevitasLDMError(f"--data needs a DDPM-family scheduler (add_noise over alphas_cumprod); "
                               f"{type(pipe).__name__} uses {type(scheduler).__name__}: run without --data to distil "
                               f"on the float model's own trajectories")
    if not isinstance(vae, nn.Module) or not hasattr(vae, "encode") or not hasattr(getattr(vae, "config", None),
                                                                                   "scaling_factor"):
        raise BrevitasLDMError(f"--data needs a pipeline with a KL autoencoder to encode images; {type(pipe).__name__} "
                               f"has none: run without --data")


def _image_size(pipe: Any) -> int:
    denoiser = get_denoiser(pipe)
    return int(denoiser.config.sample_size) * int(getattr(pipe, "vae_scale_factor", 8))


def _load_images(paths: Sequence[Path], size: int, channels: int) -> torch.Tensor:
    from PIL import Image

    arrays = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB" if channels == 3 else "L").resize((size, size), Image.BICUBIC)
            array = np.asarray(image, dtype=np.float32) / 255.0
        arrays.append(array.reshape(size, size, channels))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) * 2.0 - 1.0


def _sample_position(kwargs: dict) -> str | int:
    """Where the latents sit in a denoiser call: the ``sample``/``hidden_states`` keyword, else the first argument."""
    return next((key for key in ("sample", "hidden_states") if key in kwargs), 0)


@torch.no_grad()
def record_image_folder(pipe: Any, folder: str | Path, spec: SamplingSpec, seed: int = 0,
                        progress: bool = False) -> DistillationSet:
    """One distillation call per image batch and sampling step: the batch's latents noised at that step's timestep."""
    check_data_pipeline(pipe)
    pairs = read_image_folder(folder)
    denoiser, vae, scheduler = get_denoiser(pipe), pipe.vae, pipe.scheduler
    size, channels = _image_size(pipe), int(vae.config.in_channels)
    scheduler.set_timesteps(spec.num_inference_steps)
    timesteps = scheduler.timesteps.clone()
    generator = torch.Generator().manual_seed(seed)
    calls: list[DistillationCall] = []
    batches = range(0, len(pairs), spec.batch_size)
    for start in tqdm(batches, desc="QAT: noised --data images", disable=not progress, leave=False):
        batch = pairs[start:start + spec.batch_size]
        pixels = _load_images([path for path, _ in batch], size, channels).to(vae.device, vae.dtype)
        latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
        captions = [caption for _, caption in batch]
        args, kwargs = first_denoiser_call(pipe, captions, list(range(len(captions))), spec, run_it=False)
        sample_at = _sample_position(kwargs)
        timestep_at, old_timestep = find_timestep(args, kwargs)
        # The pipeline's batch (both guidance halves) over the images': each image's latents go in every half.
        repeats = int((kwargs[sample_at] if isinstance(sample_at, str) else args[0]).shape[0]) // latents.shape[0]
        scheduler.set_timesteps(spec.num_inference_steps)
        for step, timestep in enumerate(timesteps):
            noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
            noisy = scheduler.scale_model_input(scheduler.add_noise(latents, noise, timestep.reshape(1)), timestep)
            call_args, call_kwargs = replace_argument(args, kwargs, sample_at, noisy.repeat(repeats, 1, 1, 1))
            call_args, call_kwargs = replace_argument(call_args, call_kwargs, timestep_at,
                                                      timestep_like(old_timestep, timestep.item()))
            target = first_tensor(denoiser(*call_args, **call_kwargs))
            calls.append(DistillationCall(step, call_args, call_kwargs, target))
    return DistillationSet(calls, spec.num_inference_steps, source=f"images in {folder}")
