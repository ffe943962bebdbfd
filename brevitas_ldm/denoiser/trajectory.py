"""The FP trajectory, recorded once, and any run measured against it step by step.

:func:`fp_reference` runs the float pipeline with hooks that keep the denoiser output of every (run, step) and
count every layer's input elements; :func:`measure` samples again (optionally under a configuration context,
such as a precision bank's) and streams the SQNR of the final latents and of each step's denoiser output through
:class:`~brevitas_ldm.sqnr.SQNRMeter`. Only the FP reference is kept in memory (final latents plus per-step
denoiser outputs, which are small).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from brevitas_ldm.denoiser.blocks import quantizable_layers
from brevitas_ldm.denoiser.sampling import (
    Condition,
    SamplingSpec,
    denoiser_step_hook,
    first_tensor,
    generate,
    get_denoiser,
)
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.precision import Precision
from brevitas_ldm.sqnr import SQNRMeter


class Configurable(Protocol):
    """Anything that applies a layer -> precision configuration for a ``with`` block (a precision bank)."""

    def configured(self, layer_precisions): ...


LayerPrecisions = Mapping[str, Precision]


def _sample_arg(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for value in (*args, kwargs.get("sample"), kwargs.get("hidden_states")):
        if isinstance(value, torch.Tensor):
            return value
    return None


@dataclass
class FPReference:
    """The float run every configuration is compared with: final latents and per-step denoiser outputs.

    ``outputs`` is keyed by (sampling run, step); a run is one pipeline call (one batch). ``act_elements`` is,
    per quantizable layer, the number of input elements per sample per denoiser call (what an activation-bit
    budget weighs).
    """

    conditions: list[Condition]
    seeds: list[int]
    spec: SamplingSpec
    latents: torch.Tensor
    outputs: dict[tuple[int, int], torch.Tensor]
    act_elements: dict[str, float]
    calls: int
    seconds: float

    @property
    def num_steps(self) -> int:
        return 1 + max(step for _, step in self.outputs)


@torch.no_grad()
def fp_reference(pipe: Any, conditions: Sequence[Condition], seeds: Sequence[int], spec: SamplingSpec,
                 progress: bool = False, desc: str = "FP reference") -> FPReference:
    """Run the FP pipeline once with hooks that keep the per-step denoiser outputs and count layer inputs."""
    denoiser = get_denoiser(pipe)
    outputs: dict[tuple[int, int], torch.Tensor] = {}
    elements: dict[str, int] = {}
    samples = [0]
    holder: dict[str, Any] = {}

    def on_step(step, timestep, args, kwargs, output):
        sample = _sample_arg(args, kwargs)
        samples[0] += int(sample.shape[0]) if sample is not None and sample.dim() else 1
        tensor = first_tensor(output)
        if tensor is None:
            raise BrevitasLDMError(f"{type(denoiser).__name__} returned no tensor: the analysis needs the denoiser "
                                   f"output as a tensor, a tuple or a .sample")
        outputs[(holder["tracker"].run, step)] = tensor.detach().float().clone()

    def counter(name):
        def pre_hook(module, args):
            if args and isinstance(args[0], torch.Tensor):
                elements[name] = elements.get(name, 0) + args[0].numel()
        return pre_hook

    handles = [layer.register_forward_pre_hook(counter(name)) for name, layer in quantizable_layers(denoiser)]
    start = time.perf_counter()
    try:
        with denoiser_step_hook(denoiser, on_step) as tracker:
            holder["tracker"] = tracker
            latents = generate(pipe, list(conditions), list(seeds), spec, progress=progress, desc=desc)
    finally:
        for handle in handles:
            handle.remove()
    seconds = time.perf_counter() - start
    per_sample = {name: count / max(samples[0], 1) for name, count in elements.items()}
    return FPReference(list(conditions), list(seeds), spec, latents, outputs, per_sample, len(outputs), seconds)


@dataclass
class Measurement:
    """Streamed SQNR of one configuration (final latents and the denoiser output at each step), and its latents."""

    latents: torch.Tensor
    final: SQNRMeter
    steps: list[SQNRMeter]
    calls: int
    seconds: float

    @property
    def final_db(self) -> float:
        return self.final.pooled_db

    @property
    def steps_db(self) -> list[float]:
        return [meter.pooled_db for meter in self.steps]


@torch.no_grad()
def measure(pipe: Any, reference: FPReference, bank: Configurable | None = None,
            layer_precisions: LayerPrecisions | None = None, progress: bool = False,
            desc: str = "sampling") -> Measurement:
    """Sample with ``layer_precisions`` applied from ``bank`` (a precision bank) and compare with ``reference``
    at equal seeds."""
    denoiser = get_denoiser(pipe)
    steps = [SQNRMeter() for _ in range(reference.num_steps)]
    holder: dict[str, Any] = {}
    calls = [0]

    def on_step(step, timestep, args, kwargs, output):
        key = (holder["tracker"].run, step)
        if key not in reference.outputs:
            raise BrevitasLDMError(f"denoiser call at run {key[0]}, step {step} has no FP reference: measure with "
                                   f"the prompts, seeds and sampling spec of the reference")
        tensor = first_tensor(output)
        steps[step].update(reference.outputs[key], tensor.float())
        calls[0] += 1

    layer_precisions = layer_precisions or {}
    if layer_precisions and bank is None:
        raise BrevitasLDMError("measuring a quantized configuration needs a PrecisionBank")
    start = time.perf_counter()
    with ExitStack() as stack:
        if bank is not None:
            stack.enter_context(bank.configured(layer_precisions))
        holder["tracker"] = stack.enter_context(denoiser_step_hook(denoiser, on_step))
        latents = generate(pipe, reference.conditions, reference.seeds, reference.spec, progress=progress, desc=desc)
    final = SQNRMeter().update(reference.latents, latents)
    return Measurement(latents, final, steps, calls[0], time.perf_counter() - start)
