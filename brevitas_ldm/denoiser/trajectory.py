"""The FP trajectory, recorded once, and any run measured against it step by step.

:func:`fp_reference` runs the float pipeline with hooks that keep the denoiser output of every (run, step) and
count every layer's input elements; :func:`measure` samples again (optionally under a configuration context,
such as a precision bank's) and streams the SQNR of the final latents and of each step's denoiser output through
:class:`~brevitas_ldm.sqnr.SQNRMeter`. Only the FP reference is kept in memory (final latents plus per-step
denoiser outputs, which are small).

Both take ``ranks`` (:mod:`brevitas_ldm.process.ranks`): the pipeline batches are then dealt round-robin to the
processes of a torch.distributed job, each runs whole batches (the very calls the single process makes) and every rank
gets the whole result back, identical to the single process' (meters pool per-sample sums with ``math.fsum``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

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
from brevitas_ldm.process.ranks import Ranks, all_gather
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


def batches(conditions: Sequence[Condition], seeds: Sequence[int], spec: SamplingSpec) -> list[tuple[list, list[int]]]:
    """The pipeline calls :func:`~brevitas_ldm.denoiser.sampling.generate` makes: (conditions, seeds) per batch."""
    return [(list(conditions[start:start + spec.batch_size]), [int(s) for s in seeds[start:start + spec.batch_size]])
            for start in range(0, len(conditions), spec.batch_size)]


def _sample_batches(pipe: Any, conditions: Sequence[Condition], seeds: Sequence[int], spec: SamplingSpec,
                    ranks: Ranks | None, current: list[int], progress: bool, desc: str) -> dict[int, torch.Tensor]:
    """Sample this rank's batches (all of them without ``ranks``), one pipeline call each, as ``generate`` would;
    ``current[0]`` holds the batch being sampled for the step hooks. Returns the latents by batch index."""
    all_batches = batches(conditions, seeds, spec)
    mine = ranks.round_robin(len(all_batches)) if ranks is not None else range(len(all_batches))
    latents = {}
    for index in tqdm(mine, desc=desc, disable=not progress or len(mine) < 2, leave=False):
        current[0] = index
        latents[index] = generate(pipe, *all_batches[index], spec, desc=desc)
    return latents


@torch.no_grad()
def fp_reference(pipe: Any, conditions: Sequence[Condition], seeds: Sequence[int], spec: SamplingSpec,
                 progress: bool = False, desc: str = "FP reference", ranks: Ranks | None = None) -> FPReference:
    """Run the FP pipeline once with hooks that keep the per-step denoiser outputs and count layer inputs.

    With ``ranks`` of a distributed job, each rank samples its share of the batches and all get the whole reference.
    """
    denoiser = get_denoiser(pipe)
    outputs: dict[tuple[int, int], torch.Tensor] = {}
    elements: dict[str, int] = {}
    samples = [0]
    current = [0]   # the batch being sampled: the run index of its (run, step) keys

    def on_step(step, timestep, args, kwargs, output):
        sample = _sample_arg(args, kwargs)
        samples[0] += int(sample.shape[0]) if sample is not None and sample.dim() else 1
        tensor = first_tensor(output)
        if tensor is None:
            raise BrevitasLDMError(f"{type(denoiser).__name__} returned no tensor: the analysis needs the denoiser "
                                   f"output as a tensor, a tuple or a .sample")
        outputs[(current[0], step)] = tensor.detach().float().clone()

    def counter(name):
        def pre_hook(module, args):
            if args and isinstance(args[0], torch.Tensor):
                elements[name] = elements.get(name, 0) + args[0].numel()
        return pre_hook

    handles = [layer.register_forward_pre_hook(counter(name)) for name, layer in quantizable_layers(denoiser)]
    start = time.perf_counter()
    try:
        with denoiser_step_hook(denoiser, on_step):
            latents = _sample_batches(pipe, conditions, seeds, spec, ranks, current, progress, desc)
    finally:
        for handle in handles:
            handle.remove()
    seconds = time.perf_counter() - start
    if ranks is not None and ranks.is_distributed:
        shares = all_gather((outputs, latents, elements, samples[0], seconds), "the FP reference", ranks)
        outputs, latents, elements, samples[0] = {}, {}, {}, 0
        for share_outputs, share_latents, share_elements, share_samples, _ in shares:
            outputs.update(share_outputs)
            latents.update(share_latents)
            samples[0] += share_samples
            for name, count in share_elements.items():
                elements[name] = elements.get(name, 0) + count
        seconds = max(share[-1] for share in shares)
    per_sample = {name: count / max(samples[0], 1) for name, count in elements.items()}
    stacked = torch.cat([latents[index] for index in sorted(latents)])
    return FPReference(list(conditions), list(seeds), spec, stacked, dict(sorted(outputs.items())), per_sample,
                       len(outputs), seconds)


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
            desc: str = "sampling", ranks: Ranks | None = None) -> Measurement:
    """Sample with ``layer_precisions`` applied from ``bank`` (a precision bank) and compare with ``reference``
    at equal seeds; with ``ranks`` of a distributed job, each rank samples its share of the batches and all get the
    whole measurement."""
    denoiser = get_denoiser(pipe)
    steps = [SQNRMeter() for _ in range(reference.num_steps)]
    current = [0]
    calls = [0]

    def on_step(step, timestep, args, kwargs, output):
        key = (current[0], step)
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
        stack.enter_context(denoiser_step_hook(denoiser, on_step))
        latents = _sample_batches(pipe, reference.conditions, reference.seeds, reference.spec, ranks, current,
                                  progress, desc)
    seconds = time.perf_counter() - start
    if ranks is not None and ranks.is_distributed:
        shares = all_gather((steps, latents, calls[0], seconds), f"{desc}", ranks)
        steps = [SQNRMeter() for _ in range(reference.num_steps)]
        latents, calls[0] = {}, 0
        for share_steps, share_latents, share_calls, _ in shares:
            steps = [merged.merge(meter) for merged, meter in zip(steps, share_steps)]
            latents.update(share_latents)
            calls[0] += share_calls
        seconds = max(share[-1] for share in shares)
    stacked = torch.cat([latents[index] for index in sorted(latents)])
    final = SQNRMeter().update(reference.latents, stacked)
    return Measurement(stacked, final, steps, calls[0], seconds)
