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

import copy
import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from brevitas_ldm.errors import BrevitasLDMError, ModelError
from brevitas_ldm.limits import MAX_STEPS

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
    value = (config.get("num_train_timesteps") if hasattr(config, "get")
             else getattr(config, "num_train_timesteps", None))
    return int(value) if value is not None else 1000


def is_flow_matching(pipe: Any) -> bool:
    """Whether the pipeline's scheduler is a flow-matching one (SD3, Flux: ``FlowMatch*Scheduler``).

    Their runs start at sigma = 1, the maximum noise, whatever the step count, and their denoisers see the
    timestep in pipeline-specific units (SD3 1000 * sigma, Flux sigma), so maximum-noise calibration keeps the first
    step's own timestep there instead of substituting T - 1.
    """
    return type(getattr(pipe, "scheduler", None)).__name__.startswith("FlowMatch")


def max_noise_timestep(pipe: Any) -> int | None:
    """The timestep single-step calibration evaluates the denoiser at: T - 1 for DDPM/DDIM- and Karras/Euler-style
    schedulers (sigma_max is the sigma of t = T - 1; their first step's timestep depends on the step count and
    spacing), None for flow matching, whose first step is already sigma = 1 (:func:`is_flow_matching`)."""
    return None if is_flow_matching(pipe) else num_train_timesteps(pipe) - 1


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


def replace_argument(args: tuple, kwargs: dict, where: str | int, value: Any) -> tuple[tuple, dict]:
    """A denoiser call's arguments with the one at ``where`` (a keyword or a position) replaced by ``value``."""
    if isinstance(where, str):
        return args, {**kwargs, where: value}
    return args[:where] + (value,) + args[where + 1:], kwargs


def timestep_like(old: Any, value: float) -> Any:
    """``value`` as a timestep argument of the same kind as ``old`` (tensor dtype and shape, or Python type)."""
    return torch.full_like(old, value) if isinstance(old, torch.Tensor) else type(old)(value)


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

#: The class id DiTPipeline passes as the unconditional ("null") label when its guidance scale is above 1.
DIT_NULL_CLASS = 1000


def check_spec(pipe: Any, spec: SamplingSpec, steps_flag: str = "--steps") -> None:
    """Refuse, before any sampling, a spec the pipeline would fail on part-way: more steps than its scheduler can
    space over its training timesteps (``steps_flag`` names where the count came from, a flag or a recipe key),
    and classifier-free guidance on a class-conditional pipeline whose denoiser has no embedding for the null class
    its pipeline passes."""
    steps, limit = spec.num_inference_steps, num_train_timesteps(pipe)
    scheduler = getattr(pipe, "scheduler", None)
    if steps > MAX_STEPS:
        raise BrevitasLDMError(f"{steps_flag} {steps:,} is more than the {MAX_STEPS:,} sampling steps any run takes: "
                               f"pass {steps_flag} {min(limit, MAX_STEPS)} or fewer")
    if steps > limit and hasattr(scheduler, "set_timesteps"):
        try:      # the scheduler's own rule, on a copy: some (flow matching) space any number of steps
            copy.deepcopy(scheduler).set_timesteps(steps)
        except Exception:
            raise BrevitasLDMError(f"{steps_flag} {steps} is more than the {limit} training timesteps "
                                   f"{type(scheduler).__name__} samples from: pass {steps_flag} {limit} or "
                                   f"fewer") from None
    if spec.guidance_scale > 1 and "class_labels" in _call_parameters(pipe):
        tables = [m.embedding_table for m in get_denoiser(pipe).modules()
                  if isinstance(getattr(m, "embedding_table", None), nn.Embedding)]
        if tables and tables[0].num_embeddings <= DIT_NULL_CLASS:
            raise BrevitasLDMError(f"{type(pipe).__name__} samples guidance > 1 with class {DIT_NULL_CLASS} as its "
                                   f"unconditional label, but this {type(get_denoiser(pipe)).__name__} embeds only "
                                   f"{tables[0].num_embeddings} classes: pass --guidance-scale 1 (no classifier-free "
                                   f"guidance)")


def _call_parameters(pipe: Any) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(type(pipe).__call__).parameters


def class_label(pipe: Any, condition: Condition) -> int:
    """The class id a class-conditional pipeline (DiT) gets for ``condition``: an int as is; a text that names one
    of the pipeline's labels (``pipe.labels``, e.g. ImageNet's "golden retriever"), is an integer, or names a digit
    (the default prompts "a handwritten digit seven" give 7)."""
    if isinstance(condition, int):
        return condition
    text = str(condition or "").strip()
    labels = getattr(pipe, "labels", None) or {}
    if text in labels:
        return int(labels[text])
    if text.isdigit():
        return int(text)
    from brevitas_ldm.zoo.data import label_from_prompt

    digit = label_from_prompt(text)
    if digit is not None:
        return digit
    names = ", ".join(list(labels)[:3]) or "0, 1, 2"
    raise BrevitasLDMError(f"prompt {text!r} names no class of {type(pipe).__name__}, which is conditioned on class "
                           f"labels: pass --prompts with one class name or id per line (e.g. {names})")


def _pipeline_call_kwargs(pipe: Any, conditions: Sequence[Condition], spec: "SamplingSpec") -> dict[str, Any]:
    """The keyword arguments that condition ``pipe`` on ``conditions``, taken from its own call signature:
    prompts (text pipelines), class labels (DiT) or a batch size (unconditional DDPM/LDM)."""
    parameters = _call_parameters(pipe)
    if "prompt" in parameters:
        kwargs: dict[str, Any] = {"prompt": [str(c) if c is not None else "" for c in conditions]}
    elif "class_labels" in parameters:
        kwargs = {"class_labels": [class_label(pipe, c) for c in conditions]}
    elif "batch_size" in parameters:
        kwargs = {"batch_size": len(conditions)}
    else:
        raise ModelError(f"{type(pipe).__name__}.__call__ takes neither prompt, class_labels nor batch_size: "
                         f"brevitas-ldm cannot condition it; wrap it in a pipeline that takes one of them")
    if "guidance_scale" in parameters and "batch_size" not in kwargs:
        kwargs["guidance_scale"] = spec.guidance_scale
    if "use_resolution_binning" in parameters:
        # PixArt snaps the requested size to its aspect-ratio bins (1024-px ones by default); at the pipeline's
        # default square size binning changes nothing, and for small test models it would refuse the size.
        kwargs["use_resolution_binning"] = False
    return kwargs


def autoencoder(pipe: Any) -> nn.Module | None:
    """The pipeline's latent decoder (``vae``, or ``vqvae`` for LDMPipeline); None for pixel-space pipelines."""
    for attr in ("vae", "vqvae"):
        module = getattr(pipe, attr, None)
        if isinstance(module, nn.Module):
            return module
    return None


@contextmanager
def _decoder_inputs(pipe: Any) -> Iterator[list[torch.Tensor]]:
    """Record what the pipeline's autoencoder decodes while the context is open (for pipelines that decode even
    when asked for latents: DiT, LDM)."""
    vae = autoencoder(pipe)
    recorded: list[torch.Tensor] = []
    if vae is None:
        yield recorded
        return
    original = vae.decode

    def decode(latents: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        recorded.append(latents.detach())
        return original(latents, *args, **kwargs)

    vae.decode = decode
    try:
        yield recorded
    finally:
        del vae.decode


def decoder_input(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    """The tensor the pipeline's autoencoder decodes, from the final latents the pipeline returns for
    ``output_type="latent"``: Flux-style packed latents unpacked, then the VAE's scaling, latents mean/std (SDXL
    variants) and shift (SD3, Flux) undone, as each pipeline does before decoding."""
    vae = autoencoder(pipe)
    if vae is None:
        return latents
    if latents.ndim == 3 and hasattr(pipe, "_unpack_latents"):
        tokens_per_side = math.isqrt(latents.shape[1])
        if tokens_per_side * tokens_per_side != latents.shape[1]:
            raise ModelError(f"{type(pipe).__name__} returned {latents.shape[1]} latent tokens, not a square grid: "
                             f"brevitas-ldm samples square images only")
        side = tokens_per_side * 2 * pipe.vae_scale_factor
        latents = pipe._unpack_latents(latents, side, side, pipe.vae_scale_factor)
    config = vae.config
    scaling = config.get("scaling_factor", None) or 1.0
    mean, std = config.get("latents_mean", None), config.get("latents_std", None)
    if mean is not None and std is not None:
        shape = (1, -1) + (1,) * (latents.ndim - 2)
        return latents * torch.tensor(std).view(shape).to(latents) / scaling + torch.tensor(mean).view(shape).to(
            latents)
    return latents / scaling + (config.get("shift_factor", None) or 0.0)


def _as_nchw(images: Any) -> torch.Tensor:
    """Pipelines that return images whatever ``output_type`` says (DDPM, LDM) give numpy (N, H, W, C)."""
    if isinstance(images, torch.Tensor):
        return images
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def generate(pipe: Any, conditions: Sequence[Condition], seeds: Sequence[int], spec: SamplingSpec = SamplingSpec(),
             output_type: str = "latent", progress: bool = False, desc: str = "sampling") -> torch.Tensor:
    """Run the pipeline on every (condition, seed) pair, in batches; return final latents or images, stacked.

    ``output_type="latent"`` returns what the pipeline's autoencoder decodes (:func:`decoder_input`; for
    pixel-space pipelines, the final images): the tensor output SQNR is measured on, the same whether the pipeline
    can return latents or always decodes (DiT, LDM). ``"pt"`` returns decoded images in [0, 1], (N, C, H, W).
    """
    if len(conditions) != len(seeds):
        raise BrevitasLDMError(f"{len(conditions)} conditions but {len(seeds)} seeds: give one seed per sample")
    if len(conditions) == 0:
        raise BrevitasLDMError("nothing to sample: --num-samples must be at least 1")
    check_spec(pipe, spec)
    pipe.set_progress_bar_config(disable=True)
    outputs = []
    starts = range(0, len(conditions), spec.batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        batch_conditions = conditions[start:start + spec.batch_size]
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[start:start + spec.batch_size]]
        kwargs = _pipeline_call_kwargs(pipe, batch_conditions, spec)
        with _decoder_inputs(pipe) if output_type == "latent" else nullcontext([]) as decoded:
            result = pipe(**kwargs, num_inference_steps=spec.num_inference_steps, generator=generators,
                          output_type="latent" if output_type == "latent" else "pt")
        images = result.images if hasattr(result, "images") else result[0]
        if output_type == "latent":
            images = torch.cat(decoded) if decoded else (
                decoder_input(pipe, images) if isinstance(images, torch.Tensor) else _as_nchw(images))
        else:
            images = _as_nchw(images)
        outputs.append(images.float().cpu())
    return torch.cat(outputs)


def map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with ``fn`` applied to every tensor inside (tuples, lists, dicts followed; anything else kept)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {key: map_tensors(item, fn) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(map_tensors(item, fn) for item in value)
    return value


def detached(value: Any) -> Any:
    """``value`` with every tensor inside (tuples, lists, dicts) detached and copied: later calls cannot change it."""
    return map_tensors(value, lambda tensor: tensor.detach().clone())


class _FirstCallSeen(Exception):
    """Raised from a pre-hook to stop a pipeline once its first denoiser call has been captured."""


@torch.no_grad()
def first_denoiser_call(pipe: Any, conditions: Sequence[Condition], seeds: Sequence[int], spec: SamplingSpec,
                        run_it: bool = True) -> tuple[tuple, dict]:
    """Arguments of the denoiser's first call (copied) when ``pipe`` samples ``conditions`` in one batch.

    The pipeline runs ``spec``'s step count (at least 2, because some pipelines take another path for one-step
    sampling: PixArt's expects a one-step scheduler) and is stopped before the denoiser's second call, so this costs
    one denoiser call whatever the model; with ``run_it=False`` it is stopped before the first call runs, for
    callers that only want the inputs (a call that ran leaves the model warm for whoever times the next one).
    """
    denoiser = get_denoiser(pipe)
    captured: list[tuple[tuple, dict]] = []

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if captured:
            raise _FirstCallSeen
        captured.append((detached(args), detached(kwargs)))
        if not run_it:
            raise _FirstCallSeen

    handle = denoiser.register_forward_pre_hook(pre_hook, with_kwargs=True)
    one_batch = SamplingSpec(num_inference_steps=max(2, spec.num_inference_steps), guidance_scale=spec.guidance_scale,
                             batch_size=len(conditions))
    try:
        generate(pipe, list(conditions), list(seeds), one_batch, output_type="latent")
    except _FirstCallSeen:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ModelError(f"{type(pipe).__name__} sampled without calling its denoiser: pass a diffusers pipeline "
                         f"whose __call__ runs pipe.unet or pipe.transformer")
    return captured[0]


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
