"""Comparison metrics of a quantized pipeline against its FP twin at equal seeds and prompts.

* output SQNR: of the final latents (what the denoising trajectory produced);
* image PSNR: of the decoded images in [0, 1];
* per-step SQNR of the denoiser output along the trajectory (each step's quantized output against the FP
  output at the same step), streamed through :class:`~brevitas_ldm.sqnr.SQNRMeter` per step.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from brevitas_ldm.denoiser.sampling import denoiser_step_hook, first_tensor, get_denoiser
from brevitas_ldm.sqnr import SQNRMeter


def psnr_db(reference: torch.Tensor, test: torch.Tensor, peak: float = 1.0) -> float:
    """PSNR of images in [0, peak]; +inf when identical."""
    mse = float((reference.double() - test.double()).pow(2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(peak ** 2 / mse)


@dataclass
class TrajectoryRecorder:
    """Keeps the FP denoiser output of every (run, step) so later runs can be compared step by step.

    Only the reference outputs are stored (small: one latent-sized tensor per step and batch); the quantized
    side is streamed into per-step meters.
    """

    reference: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    meters: dict[int, SQNRMeter] = field(default_factory=lambda: defaultdict(SQNRMeter))

    def record(self, pipe, run_fn) -> None:
        def callback(step, timestep, args, kwargs, output):
            self.reference[(tracker.run, step)] = first_tensor(output).detach().clone()

        with denoiser_step_hook(get_denoiser(pipe), callback) as tracker:
            run_fn()

    def compare(self, pipe, run_fn) -> None:
        def callback(step, timestep, args, kwargs, output):
            ref = self.reference.get((tracker.run, step))
            if ref is not None:
                self.meters[step].update(ref, first_tensor(output).detach())

        with denoiser_step_hook(get_denoiser(pipe), callback) as tracker:
            run_fn()

    def per_step_db(self) -> list[float]:
        return [self.meters[s].pooled_db for s in sorted(self.meters)]
