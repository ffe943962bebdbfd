"""One place that runs the sampler and tells hooks which sampling step each denoiser call belongs to.

Every measurement in brevitas-ldm (calibration, the global and local SQNR analyses, evaluation) needs to know,
for a denoiser call, its sampling step index and timestep. Diffusers pipelines do not pass that to the denoiser,
so :class:`StepTracker` infers it from the timestep sequence (decreasing within a run, jumping up at a new run,
repeated for split classifier-free-guidance calls), and :class:`denoiser_step_hook` exposes
``(step, timestep, inputs, output)`` of every call to a callback without changing the output.

:func:`generate` runs a pipeline deterministically: one ``torch.Generator`` per sample, seeded by that sample's
seed, so a sample's result does not depend on the batch it was drawn in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from brevitas_ldm.errors import BrevitasLDMError, ModelError

TIMESTEP_KEYS = ("timestep", "t", "timesteps")


def get_denoiser(pipe: Any) -> nn.Module:
    """The pipeline's denoiser: ``pipe.unet`` (UNet pipelines) or ``pipe.transformer`` (DiT-style pipelines)."""
    return getattr(pipe, denoiser_component(pipe))


def denoiser_component(pipe: Any) -> str:
    """The name of the pipeline component that denoises (``unet`` or ``transformer``)."""
    for attr in ("unet", "transformer"):
        if isinstance(getattr(pipe, attr, None), nn.Module):
            return attr
    raise ModelError(f"{type(pipe).__name__} has neither a .unet nor a .transformer: pass a diffusers pipeline "
                     f"with a denoiser, e.g. StableDiffusionPipeline or DiTPipeline")


def num_train_timesteps(pipe: Any) -> int:
    """The scheduler's number of training timesteps (T; t = T - 1 is maximum noise), 1000 when it has none."""
    config = getattr(getattr(pipe, "scheduler", None), "config", None) or {}
    value = config.get("num_train_timesteps") if hasattr(config, "get") else getattr(config, "num_train_timesteps", None)
    return int(value) if value is not None else 1000


def set_denoiser(pipe: Any, denoiser: nn.Module) -> None:
    attr = "unet" if isinstance(getattr(pipe, "unet", None), nn.Module) else "transformer"
    setattr(pipe, attr, denoiser)


def find_timestep(args: tuple, kwargs: dict) -> tuple[str | int, Any]:
    """Where the timestep sits in a denoiser call (kwarg name or positional index) and its value."""
    for key in TIMESTEP_KEYS:
        if key in kwargs:
            return key, kwargs[key]
    if len(args) >= 2:
        return 1, args[1]
    raise BrevitasLDMError("the denoiser was called without a timestep: brevitas-ldm handles diffusers denoisers "
                           "called as denoiser(sample, timestep, ...)")


def timestep_value(timestep: Any) -> float:
    if isinstance(timestep, torch.Tensor):
        return float(timestep.flatten()[0].item()) if timestep.numel() else math.nan
    return float(timestep)


def first_tensor(output: Any) -> torch.Tensor | None:
    """The main tensor of a denoiser output (a tensor, a tuple whose first item is one, or a ``.sample``)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    sample = getattr(output, "sample", None)
    return sample if isinstance(sample, torch.Tensor) else None


class StepTracker:
    """Sampling-step index of successive denoiser calls, inferred from their timesteps."""

    def __init__(self) -> None:
        self.step = -1
        self.run = -1
        self._last = math.inf

    def peek(self, timestep: Any) -> int:
        """The step :meth:`advance` will give a call at ``timestep``, without advancing (for pre-call hooks)."""
        value = timestep_value(timestep)
        if self.step < 0 or value > self._last:
            return 0
        return self.step + 1 if value < self._last else self.step

    def advance(self, timestep: Any) -> int:
        value = timestep_value(timestep)
        if self.step < 0 or value > self._last:
            self.step = 0
            self.run += 1
        elif value < self._last:
            self.step += 1
        self._last = value
        return self.step


StepCallback = Callable[[int, float, tuple, dict, Any], None]


@contextmanager
def denoiser_step_hook(denoiser: nn.Module, callback: StepCallback) -> Iterator[StepTracker]:
    """Call ``callback(step, timestep, args, kwargs, output)`` after every denoiser call; outputs are unchanged."""
    tracker = StepTracker()

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        _, timestep = find_timestep(args, kwargs)
        step = tracker.advance(timestep)
        callback(step, timestep_value(timestep), args, kwargs, output)

    handle = denoiser.register_forward_hook(hook, with_kwargs=True)
    try:
        yield tracker
    finally:
        handle.remove()


@dataclass(frozen=True)
class SamplingSpec:
    """How samples are drawn; the same spec and seeds give the same latents."""

    num_inference_steps: int = 20
    guidance_scale: float = 2.0
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.num_inference_steps < 1:
            raise BrevitasLDMError(f"--steps {self.num_inference_steps} must be at least 1")
        if self.batch_size < 1:
            raise BrevitasLDMError(f"batch size {self.batch_size} must be at least 1")


Condition = str | int | None


def _pipeline_call_kwargs(pipe: Any, conditions: Sequence[Condition]) -> dict[str, Any]:
    if hasattr(pipe, "tokenizer") and getattr(pipe, "text_encoder", None) is not None:
        return {"prompt": [c if c is not None else "" for c in conditions]}
    if all(isinstance(c, int) for c in conditions):
        return {"class_labels": list(conditions)}
    return {"batch_size": len(conditions)}


@torch.no_grad()
def generate(pipe: Any, conditions: Sequence[Condition], seeds: Sequence[int], spec: SamplingSpec = SamplingSpec(),
             output_type: str = "latent", progress: bool = False, desc: str = "sampling") -> torch.Tensor:
    """Run the pipeline on every (condition, seed) pair, in batches; return latents or images stacked.

    ``output_type="latent"`` returns the final latents (what output SQNR is measured on); ``"pt"`` returns decoded
    images in [0, 1], shape (N, C, H, W).
    """
    if len(conditions) != len(seeds):
        raise BrevitasLDMError(f"{len(conditions)} conditions but {len(seeds)} seeds: give one seed per sample")
    if len(conditions) == 0:
        raise BrevitasLDMError("nothing to sample: --num-samples must be at least 1")
    pipe.set_progress_bar_config(disable=True)
    outputs = []
    starts = range(0, len(conditions), spec.batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        batch_conditions = conditions[start:start + spec.batch_size]
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[start:start + spec.batch_size]]
        kwargs = _pipeline_call_kwargs(pipe, batch_conditions)
        if "prompt" in kwargs or "class_labels" in kwargs:
            kwargs["guidance_scale"] = spec.guidance_scale
        result = pipe(**kwargs, num_inference_steps=spec.num_inference_steps, generator=generators,
                      output_type=output_type)
        images = result.images if hasattr(result, "images") else result[0]
        if not isinstance(images, torch.Tensor):
            images = torch.as_tensor(images)
        outputs.append(images.float().cpu())
    return torch.cat(outputs)


def sampling_calls(num_samples: int, spec: SamplingSpec) -> int:
    """Denoiser calls :func:`generate` makes for ``num_samples`` samples: one per step per batch (classifier-free
    guidance runs both halves in one call)."""
    return spec.num_inference_steps * math.ceil(num_samples / spec.batch_size)


class CallCounter:
    """Counts the forward calls made to ``module`` while the context is open (what an analysis step cost)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.count = 0
        self._handle = None

    def _hook(self, *_: Any) -> None:
        self.count += 1

    def __enter__(self) -> "CallCounter":
        self._handle = self.module.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()


@contextmanager
def pipeline_denoiser(pipe: Any, denoiser: nn.Module) -> Iterator[Any]:
    """Temporarily make ``denoiser`` the pipeline's denoiser."""
    original = get_denoiser(pipe)
    set_denoiser(pipe, denoiser)
    try:
        yield pipe
    finally:
        set_denoiser(pipe, original)
