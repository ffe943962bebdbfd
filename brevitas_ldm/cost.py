"""What a job will cost, said before its first denoiser call: calls per phase, wall time, peak memory.

Every phase's call count comes from the phase object that runs it (:mod:`brevitas_ldm.job`), which asks the
object that does the work (``BlockSensitivity.planned_calls``, ``LayerSensitivity.planned_calls``,
``SmoothQuantStep.planned_calls``, ``calibration_calls``, ``sampling_calls`` for GPTQ's float runs), so the plan
cannot drift from what runs; a test checks each priced phase against the calls counted while it ran. This module
prices those rows. Wall time is priced from one timed FP call and one timed fake-quantized call
of the real denoiser on the real pipeline inputs, scaled linearly with the batch, plus what a phase does besides
its calls (GPTQ's rounding); peak memory adds the denoiser copies the largest phase holds (one per precision the
global analysis measures) to what the process holds now.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from brevitas_ldm.denoiser.blocks import quantizable_layers
from brevitas_ldm.denoiser.sampling import SamplingSpec, get_denoiser
from brevitas_ldm.export.wrapper import first_call_inputs, nested_inputs
from brevitas_ldm.process.ranks import current_ranks, peak_rss_bytes
from brevitas_ldm.quant.quantize import fast_inference, quantize_denoiser
from brevitas_ldm.recipe import Recipe

#: GPTQ's work besides the denoiser calls, single-threaded, per weight column of the quantizable layers: the
#: column-by-column rounding (a Python loop with one Brevitas quantizer call per column), and accumulating each
#: layer's Hessian, per calibration sample. Measured on tiny-sd-digits (30,724 columns, 16 samples over 20 steps):
#: 16.2 s of rounding and 8.1 s of Hessian hooks on an AMD EPYC, one thread.
GPTQ_ROUNDING_S_PER_COLUMN = 5.3e-4
GPTQ_HESSIAN_S_PER_COLUMN_SAMPLE = 8.2e-7


@dataclass(frozen=True)
class Phase:
    """One phase of a job: how many denoiser calls, of which kind, at which batch size."""

    name: str
    calls: int
    quantized: bool          # fake-quantized calls (priced at the timed quantized call) or FP ones
    batch_size: int          # samples per call; the price scales linearly from the timed call's batch
    at_most: bool = False    # an upper bound (e.g. SmoothQuant on layers the local analysis has yet to pick)
    copies: int = 0          # extra denoiser copies the phase holds in memory
    extra_s: float = 0.0     # work besides the calls (GPTQ's column-by-column rounding), priced separately


@dataclass(frozen=True)
class CallTiming:
    """One timed FP call and one timed fake-quantized call of the denoiser, and the memory they showed."""

    batch_size: int
    fp_s: float
    quantized_s: float
    resident_bytes: int      # what the process holds after loading the model
    call_peak_bytes: int     # how far one call raised the process' high-water mark above that
    denoiser_bytes: int      # parameters + buffers of one denoiser copy
    threads: int             # torch intra-op threads the calls ran with


@dataclass
class WorkEstimate:
    """The plan of work :func:`estimate_quantize_job` / :func:`estimate_analysis_job` print before the work."""

    phases: list[Phase]
    timing: CallTiming
    notes: list[str] = field(default_factory=list)

    def phase_seconds(self, phase: Phase) -> float:
        per_call = self.timing.quantized_s if phase.quantized else self.timing.fp_s
        return phase.calls * per_call * phase.batch_size / self.timing.batch_size + phase.extra_s

    @property
    def total_calls(self) -> int:
        return sum(p.calls for p in self.phases)

    @property
    def total_seconds(self) -> float:
        return sum(self.phase_seconds(p) for p in self.phases)

    @property
    def peak_bytes(self) -> int:
        copies = max((p.copies for p in self.phases), default=0)
        return self.timing.resident_bytes + copies * self.timing.denoiser_bytes + self.timing.call_peak_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"phases": [{**dataclasses.asdict(p), "estimated_s": self.phase_seconds(p)} for p in self.phases],
                "total_calls": self.total_calls, "estimated_s": self.total_seconds,
                "estimated_peak_bytes": self.peak_bytes, "timing": dataclasses.asdict(self.timing),
                "notes": list(self.notes)}

    def lines(self) -> list[str]:
        width = max(len(p.name) for p in self.phases)
        out = [f"plan of work ({self.total_calls} denoiser calls; one call of batch {self.timing.batch_size} on "
               f"{self.timing.threads} thread(s) took {self.timing.fp_s * 1e3:.0f} ms FP, "
               f"{self.timing.quantized_s * 1e3:.0f} ms fake-quantized):"]
        for p in self.phases:
            bound = " (at most)" if p.at_most else ""
            out.append(f"  {p.name:<{width}}  {p.calls:>6} calls  ~{_duration(self.phase_seconds(p))}{bound}")
        out.append(f"  {'total':<{width}}  {self.total_calls:>6} calls  ~{_duration(self.total_seconds)}, "
                   f"peak memory ~{self.peak_bytes / 2**30:.1f} GiB")
        out += [f"  note: {note}" for note in self.notes]
        return out


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


@torch.no_grad()
def time_denoiser_calls(pipe: Any, recipe: Recipe, conditions: Sequence[Any], seeds: Sequence[int],
                        spec: SamplingSpec) -> CallTiming:
    """Time one FP and one fake-quantized denoiser call on the inputs the pipeline gives its first step (batch
    ``len(conditions)``); the quantized copy is uncalibrated, which changes no cost, and is dropped afterwards."""
    denoiser = get_denoiser(pipe)
    inputs = nested_inputs(first_call_inputs(pipe, list(conditions), list(seeds), spec))
    resident = _resident_bytes()
    high_water = peak_rss_bytes()
    start = time.perf_counter()
    denoiser(**inputs)
    fp_s = time.perf_counter() - start
    call_peak = max(0, peak_rss_bytes() - max(high_water, resident))
    quantized = quantize_denoiser(copy.deepcopy(denoiser), recipe).eval()
    with fast_inference(quantized):
        quantized(**inputs)                       # the first call caches the quantized weights
        start = time.perf_counter()
        quantized(**inputs)
        quantized_s = time.perf_counter() - start
    del quantized
    tensors = list(denoiser.parameters()) + list(denoiser.buffers())
    return CallTiming(batch_size=len(conditions), fp_s=fp_s, quantized_s=quantized_s, resident_bytes=resident,
                      call_peak_bytes=call_peak,
                      denoiser_bytes=sum(t.numel() * t.element_size() for t in tensors),
                      threads=torch.get_num_threads())


def gptq_extra_seconds(denoiser: Any, samples: int) -> float:
    """What GPTQ costs besides its float calls, when its Hessians see ``samples`` samples (calls x batch): Brevitas
    rounds one weight column of each layer at a time, and the Hessian hooks' work grows with columns and samples."""
    columns = sum(layer.weight[0].numel() for _, layer in quantizable_layers(denoiser))
    return columns * (GPTQ_ROUNDING_S_PER_COLUMN + samples * GPTQ_HESSIAN_S_PER_COLUMN_SAMPLE)


def rank_sampling_calls(num_samples: int, spec: SamplingSpec) -> int:
    """Denoiser calls this process makes sampling ``num_samples`` when the batches are split across the ranks of a
    distributed job (:func:`~brevitas_ldm.denoiser.trajectory.fp_reference`, ``measure``): all of them alone."""
    batches = math.ceil(num_samples / spec.batch_size)
    return spec.num_inference_steps * len(current_ranks().round_robin(batches))


def estimate(pipe: Any, recipe: Recipe, phases: list[Phase], conditions: Sequence[Any], seeds: Sequence[int],
             spec: SamplingSpec, notes: Sequence[str] = ()) -> WorkEstimate:
    """Price ``phases`` from one timed call of batch ``min(len(conditions), spec.batch_size)``."""
    batch = max(1, min(len(conditions), spec.batch_size))
    timing = time_denoiser_calls(pipe, recipe, list(conditions)[:batch], list(seeds)[:batch], spec)
    return WorkEstimate(phases=phases, timing=timing, notes=list(notes))
