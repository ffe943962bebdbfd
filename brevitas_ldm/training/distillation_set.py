"""What QAT learns from: denoiser calls on the float model's own sampling trajectories, with the float outputs.

Data-free by default (EfficientDM, QuEST): the float pipeline samples the calibration prompts once, and every
denoiser call it makes is kept, inputs exactly as the pipeline passed them (latents, timestep, conditioning,
the classifier-free-guidance batch) with the float output as the target. Training replays a call on the quantized
denoiser and regresses onto that target, so the set works for every diffusers family the sampler runs, without
knowing how a family conditions its denoiser. Recording happens before quantization: no float copy of the
denoiser has to stay in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from brevitas_ldm.denoiser.sampling import (
    Condition,
    SamplingSpec,
    denoiser_step_hook,
    detached,
    first_tensor,
    generate,
    get_denoiser,
)
from brevitas_ldm.errors import BrevitasLDMError


@dataclass(frozen=True)
class DistillationCall:
    """One denoiser call: its inputs as the pipeline passed them, the sampling step, and the float output."""

    step: int
    args: tuple
    kwargs: dict
    target: torch.Tensor


@dataclass
class DistillationSet:
    """Recorded denoiser calls; ``num_steps`` is the schedule length they were recorded at."""

    calls: list[DistillationCall] = field(default_factory=list)
    num_steps: int = 0
    source: str = "trajectories"

    def __len__(self) -> int:
        return len(self.calls)

    def step_probabilities(self, sampling: str) -> torch.Tensor:
        """Probability of drawing each call: ``uniform`` over the calls (so over the schedule), or ``high_noise``:
        falling linearly from the first sampling step (weight K) to the last (weight 1)."""
        if sampling == "uniform":
            weights = torch.ones(len(self.calls), dtype=torch.float64)
        elif sampling == "high_noise":
            steps = max(self.num_steps, 1 + max(call.step for call in self.calls))
            weights = torch.tensor([float(steps - call.step) for call in self.calls], dtype=torch.float64)
        else:
            raise BrevitasLDMError(f"qat.timestep_sampling = {sampling!r} is not known: choose uniform or high_noise")
        return weights / weights.sum()


@torch.no_grad()
def record_trajectories(pipe: Any, conditions: Sequence[Condition], seeds: Sequence[int], spec: SamplingSpec,
                        progress: bool = False) -> DistillationSet:
    """Sample ``conditions`` with the (float) pipeline and keep every denoiser call and its output."""
    denoiser = get_denoiser(pipe)
    calls: list[DistillationCall] = []

    def keep(step: int, timestep: float, args: tuple, kwargs: dict, output: Any) -> None:
        target = first_tensor(output)
        if target is None:
            raise BrevitasLDMError(f"{type(denoiser).__name__} returned no tensor to distil from: pass a diffusers "
                                   f"pipeline whose denoiser returns its prediction")
        calls.append(DistillationCall(step, detached(args), detached(kwargs), target.detach().clone()))

    with denoiser_step_hook(denoiser, keep):
        generate(pipe, list(conditions), list(seeds), spec, output_type="latent", progress=progress,
                 desc="QAT: float trajectories")
    return DistillationSet(calls, spec.num_inference_steps)
