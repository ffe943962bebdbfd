"""The QAT loop: replay recorded denoiser calls on the quantized denoiser and regress onto the float outputs.

Gradients reach the float weights, biases and activation scales through Brevitas' own fake quantization
(straight-through rounding; the calibrated scales are ``nn.Parameter``s, so they learn LSQ-style). The denoiser
stays in eval mode: Brevitas' activation quantizers would go back to collecting statistics in train mode, and
diffusion denoisers have no batch norm or dropout that training mode would change. Only the parameters the
recipe's ``qat.learnable`` names get gradients; everything else is frozen and stays bit-identical.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from brevitas_ldm.denoiser.sampling import first_tensor
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.quant.quantize import initialise_weight_scales, quant_layers
from brevitas_ldm.recipe import QAT
from brevitas_ldm.training.adapters import attach_adapters
from brevitas_ldm.training.distillation_set import DistillationCall, DistillationSet


@dataclass
class TrainableParameters:
    """What one QAT run trains, by kind (the optimizer's parameter groups)."""

    weights: list[nn.Parameter] = field(default_factory=list)
    biases: list[nn.Parameter] = field(default_factory=list)
    act_scales: list[nn.Parameter] = field(default_factory=list)

    def count(self) -> int:
        return sum(p.numel() for group in (self.weights, self.biases, self.act_scales) for p in group)


def select_trainable(denoiser: nn.Module, settings: QAT, seed: int) -> TrainableParameters:
    """Freeze the denoiser, then unfreeze what ``settings.learnable`` names on its quant layers (attaching the
    low-rank adapters first when ``settings.adapter_rank > 0``)."""
    layers = quant_layers(denoiser)
    if not layers:
        raise BrevitasLDMError("the denoiser has no quant layers to train: quantize it first (brevitas-ldm qat does)")
    initialise_weight_scales(denoiser)     # an MSE weight scale is set by its first forward; do it before training
    for param in denoiser.parameters():
        param.requires_grad_(False)
    chosen = TrainableParameters()
    if "weights" in settings.learnable:
        if settings.adapter_rank:
            chosen.weights = attach_adapters(layers, settings.adapter_rank, seed)
        else:
            chosen.weights = [layers[name].weight for name in sorted(layers)]
    if "biases" in settings.learnable:
        chosen.biases = [layers[name].bias for name in sorted(layers) if layers[name].bias is not None]
    if "act_scales" in settings.learnable:
        for name in sorted(layers):
            for proxy in (layers[name].input_quant, layers[name].output_quant):
                if proxy.is_quant_enabled:
                    chosen.act_scales += list(proxy.parameters())
    for group in (chosen.weights, chosen.biases, chosen.act_scales):
        for param in group:
            param.requires_grad_(True)
    if not chosen.count():
        raise BrevitasLDMError(f"qat.learnable = {list(settings.learnable)} selects nothing on this model (no "
                               f"quantized activations or biases): add \"weights\" to qat.learnable")
    return chosen


@dataclass
class TrainingLog:
    """Loss of every step, and what the run cost."""

    losses: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0
    denoiser_calls: int = 0

    def mean_loss(self, first: bool, window: int = 50) -> float:
        part = self.losses[:window] if first else self.losses[-window:]
        return sum(part) / len(part) if part else float("nan")


def call_loss(denoiser: nn.Module, call: DistillationCall) -> torch.Tensor:
    """Mean squared error of the denoiser's output on a recorded call against the float output (the QAT loss)."""
    return torch.nn.functional.mse_loss(first_tensor(denoiser(*call.args, **call.kwargs)).float(),
                                        call.target.float())


@torch.no_grad()
def mean_distillation_loss(denoiser: nn.Module, data: DistillationSet, every: int = 1) -> float:
    """:func:`call_loss` averaged over every ``every``-th recorded call."""
    losses = [call_loss(denoiser, call).item() for call in data.calls[::every]]
    return sum(losses) / len(losses)


def distil(denoiser: nn.Module, data: DistillationSet, settings: QAT, trainable: TrainableParameters, seed: int,
           progress: bool = False) -> TrainingLog:
    """Train ``trainable`` for ``settings.steps`` steps, one recorded call per step, drawn with
    ``settings.timestep_sampling`` from a generator seeded with ``seed``; the denoiser is left frozen again."""
    steps = settings.steps
    if not len(data):
        raise BrevitasLDMError("nothing to distil from: the float run recorded no denoiser calls")
    groups = [{"params": params, "lr": lr} for params, lr in (
        (trainable.weights + trainable.biases, float(settings.learning_rate)),
        (trainable.act_scales, float(settings.scale_learning_rate))) if params]
    optimizer = torch.optim.Adam(groups)
    generator = torch.Generator().manual_seed(seed)
    order = torch.multinomial(data.step_probabilities(settings.timestep_sampling), steps, replacement=True,
                              generator=generator).tolist()
    log = TrainingLog()
    denoiser.eval()
    start = time.perf_counter()
    bar = tqdm(order, desc="QAT", disable=not progress, leave=False)
    try:
        for index in bar:
            with torch.enable_grad():
                loss = call_loss(denoiser, data.calls[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            log.losses.append(float(loss.item()))
            log.denoiser_calls += 1
            if log.denoiser_calls % 10 == 0:
                bar.set_postfix(loss=f"{log.mean_loss(first=False, window=10):.4g}")
    finally:
        bar.close()
        for group in (trainable.weights, trainable.biases, trainable.act_scales):
            for param in group:
                param.requires_grad_(False)
        log.wall_time_s = time.perf_counter() - start
    return log
