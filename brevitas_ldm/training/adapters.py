"""Low-rank adapters on the quant layers' weights, trained through the weight quantizer and merged at the end.

QAT of the full weights keeps an optimizer state twice the size of the trained weights; a rank-r adapter
``W + B @ A`` on each quant layer trains ``r * (in + out)`` values per layer instead (EfficientDM's QALoRA idea).
The adapter sits *before* Brevitas' weight quantizer (a torch parametrization of ``weight``, which the quant layer
reads when it quantizes), so the scale statistics, the rounding and the straight-through gradient all see the
adapted weight, and merging (:func:`merge_adapters`) leaves exactly the weight that was trained: the merged model's
outputs equal the adapted model's.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.nn.utils import parametrize


class LowRankAdapter(nn.Module):
    """``weight -> weight + up @ down`` for a Linear or Conv weight (conv kernels flattened to (out, in * k * k)).

    ``up`` starts at zero, so the adapted layer starts as the PTQ layer; ``down`` is drawn from ``generator``.
    """

    def __init__(self, weight: torch.Tensor, rank: int, generator: torch.Generator) -> None:
        super().__init__()
        out_features = weight.shape[0]
        in_features = weight[0].numel()
        rank = min(rank, out_features, in_features)
        down = torch.randn(rank, in_features, generator=generator) / math.sqrt(in_features)
        self.down = nn.Parameter(down.to(dtype=weight.dtype, device=weight.device))
        self.up = nn.Parameter(torch.zeros(out_features, rank, dtype=weight.dtype, device=weight.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.up @ self.down).reshape(weight.shape)


def attach_adapters(layers: dict[str, nn.Module], rank: int, seed: int) -> list[nn.Parameter]:
    """A rank-``rank`` adapter on the weight of each layer (in name order, so the draws are reproducible); returns
    the adapter parameters, the only weights QAT then trains."""
    generator = torch.Generator().manual_seed(seed)
    params: list[nn.Parameter] = []
    for name in sorted(layers):
        layer = layers[name]
        adapter = LowRankAdapter(layer.weight.detach(), rank, generator)
        parametrize.register_parametrization(layer, "weight", adapter)
        params += [adapter.down, adapter.up]
    return params


def merge_adapters(model: nn.Module) -> int:
    """Fold every adapter into its layer's plain weight and remove it; returns how many were merged."""
    merged = 0
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            with torch.no_grad():
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            merged += 1
    return merged
