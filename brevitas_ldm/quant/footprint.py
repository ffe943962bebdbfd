"""What a precision plan costs: average weight bits, average activation bits, model size.

Averages are weighted the way hardware pays for them: weight bits by parameter count, activation bits by the
number of input elements each quantizable layer reads per denoiser call (measured once with hooks), float = 32.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch.nn as nn

from brevitas_ldm.denoiser.blocks import quantizable_layers
from brevitas_ldm.denoiser.names import user_facing_names
from brevitas_ldm.precision import FLOAT_BITS, Precision, mean_bits


def weight_elements(denoiser: nn.Module) -> dict[str, int]:
    return {name: module.weight.numel() for name, module in quantizable_layers(denoiser)}


@dataclass(frozen=True)
class Footprint:
    avg_weight_bits: float
    avg_act_bits: float
    size_bytes: int
    float_size_bytes: int

    def as_dict(self) -> dict[str, float | int]:
        return {"avg_weight_bits": self.avg_weight_bits, "avg_act_bits": self.avg_act_bits,
                "size_bytes": self.size_bytes}


def footprint(denoiser: nn.Module, precisions: Mapping[str, Precision], weights: Mapping[str, int],
              activations: Mapping[str, int]) -> Footprint:
    """Averages and deployed size of ``denoiser`` under ``precisions`` (layer name -> precision).

    Size: quantized weights at their bit width plus one float32 scale per output channel, every other parameter
    (biases, norms, embeddings, float layers) at 4 bytes.
    """
    avg_w, avg_a = mean_bits([(weights[n], precisions[n]) for n in weights],
                             [(activations[n], precisions[n]) for n in activations if n in precisions])

    all_params = sum(p.numel() for p in denoiser.parameters() if p.dtype.is_floating_point)
    quantized_bits = 0
    quantized_elements = 0
    to_user = user_facing_names(denoiser)  # SmoothQuant-wrapped layers are listed as "x.layer" internally
    for internal, module in quantizable_layers(denoiser):
        name = to_user.get(internal, internal)
        bits = precisions[name].weight_bits if name in precisions else None
        weight = module.weight
        if bits is not None:
            quantized_bits += weight.numel() * bits + weight.shape[0] * 32
            quantized_elements += weight.numel()
    size = int(round(quantized_bits / 8 + (all_params - quantized_elements) * 4))
    return Footprint(avg_weight_bits=avg_w, avg_act_bits=avg_a, size_bytes=size, float_size_bytes=all_params * 4)


__all__ = ["FLOAT_BITS", "Footprint", "footprint", "weight_elements"]
