"""The ``torch`` runtime: Brevitas fake-quantized layers replaced by integer/fp8 kernels, in place.

A Brevitas transform in the usual shape (``TorchRuntime(...).apply(model)``): every calibrated ``QuantLinear`` /
``QuantConv2d`` of the denoiser, also inside SmoothQuant's ``EqualizedModule``, is read once through Brevitas'
accessors (:mod:`.codes`) and replaced by the kernel module its quantizers call for (:mod:`.kernels`); float
layers stay torch layers. The result is an ordinary ``nn.Module`` tree: ``torch.compile`` it, move it, call it
from the pipeline. Brevitas' quant proxies are gone from it, so it is the deployed model, not a model to
calibrate or export further.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import brevitas.nn as qnn
import torch
from brevitas.quant_tensor import QuantTensor
from torch import nn

from brevitas_ldm.compat import EqualizedModule
from brevitas_ldm.denoiser.names import user_facing_names
from brevitas_ldm.errors import ModelError
from brevitas_ldm.registry import RUNTIMES
from brevitas_ldm.runtimes.codes import Fp8Codes, IntCodes, static_codes, weight_codes
from brevitas_ldm.runtimes.kernels import (
    ConvGeometry,
    DequantMatmul,
    Fp8Matmul,
    Int8Matmul,
    Smoothed,
    WeightOnlyMatmul,
    scaled_mm_available,
    weight_int8pack_available,
)

QUANT_LAYERS = (qnn.QuantLinear, qnn.QuantConv2d)


@dataclass
class Deployment:
    """What :func:`~brevitas_ldm.runtimes.deploy` did: the model (as passed), its denoiser, and which kernel each
    layer got (user-facing layer name -> kernel kind: ``int8``, ``fp8``, ``fp8-dequant``, ``weight-only``,
    ``dequant``, ``float``)."""

    model: Any
    denoiser: nn.Module
    runtime: str
    layers: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def kernels(self) -> dict[str, int]:
        """Kernel kind -> how many layers use it."""
        return dict(sorted(Counter(self.layers.values()).items()))

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "kernels": self.kernels, "layers": dict(self.layers), "notes": self.notes}


def _example_input(layer: nn.Module) -> torch.Tensor:
    shape = (2, layer.in_features) if isinstance(layer, nn.Linear) else (1, layer.in_channels, 4, 4)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=generator).to(device=layer.weight.device, dtype=layer.weight.dtype)


@torch.no_grad()
def _quant_bias(layer: nn.Module, example: torch.Tensor) -> torch.Tensor | None:
    """The bias the fake-quantized layer adds (its ``bias_quant`` applied, e.g. Int32Bias at ``s_x s_w``)."""
    if layer.bias is None:
        return None
    quant_input = layer.input_quant(example)
    bias = layer.bias_quant(layer.bias, quant_input, layer.quant_weight(quant_input))
    return (bias.value if isinstance(bias, QuantTensor) else bias).detach().float()


class TorchRuntime:
    """Replace the Brevitas layers of a denoiser by fused-kernel modules (see the module docstring).

    ``fp8_fused``/``int8pack``: whether ``torch._scaled_mm`` (e4m3) and ``torch._weight_int8pack_mm`` are used; by
    default each is probed on the layers' device (``torch._scaled_mm`` runs on this torch's CPU build and on CUDA
    from compute capability 8.9; where it does not, fp8 layers run their codes as a float product and the
    deployment's notes say so)."""

    name = "torch"

    def __init__(self, fp8_fused: bool | None = None, int8pack: bool | None = None) -> None:
        self.fp8_fused, self.int8pack = fp8_fused, int8pack

    def kernel_for(self, layer: nn.Module, name: str) -> nn.Module:
        """The kernel module computing what Brevitas layer ``layer`` computes."""
        device = layer.weight.device
        if self.fp8_fused is None:
            self.fp8_fused = scaled_mm_available(device)
        if self.int8pack is None:
            self.int8pack = weight_int8pack_available(device)
        example = _example_input(layer)
        act = (static_codes(layer.input_quant, example, f"the input quantizer of {name!r}")
               if layer.input_quant.is_quant_enabled else None)
        output_quant = None
        if layer.output_quant.is_quant_enabled:
            output_quant = static_codes(layer.output_quant, layer(example), f"the output quantizer of {name!r}")
            if not isinstance(output_quant, IntCodes):
                raise ModelError(f"{name!r} has an fp8 output quantizer, which the torch runtime does not hold: "
                                 f"drop deploy.requantize_conv_outputs from the recipe")
        bias = _quant_bias(layer, example)
        conv = layer if isinstance(layer, nn.Conv2d) else None
        geometry = ConvGeometry.of(conv) if conv is not None else None
        fits_matmul = conv is None or geometry is not None
        if not layer.weight_quant.is_quant_enabled:
            return DequantMatmul(layer.weight, act, conv, bias, output_quant)
        weight = weight_codes(layer)
        if fits_matmul and isinstance(weight, IntCodes) and weight.fits_int8:
            if isinstance(act, IntCodes) and act.fits_int8:
                return Int8Matmul(weight, act, geometry, bias, output_quant)
            if act is None or (isinstance(act, IntCodes) and act.bits > 8):
                return WeightOnlyMatmul(weight, act, geometry, bias, bool(self.int8pack), output_quant)
        if fits_matmul and isinstance(weight, Fp8Codes) and isinstance(act, Fp8Codes):
            return Fp8Matmul(weight, act, geometry, bias, bool(self.fp8_fused), output_quant)
        with torch.no_grad():
            values = layer.quant_weight().value
        return DequantMatmul(values, act, conv, bias, output_quant)

    def apply(self, denoiser: nn.Module) -> dict[str, str]:
        """Replace every Brevitas layer of ``denoiser`` in place; returns user-facing name -> kernel kind."""
        to_user = user_facing_names(denoiser)
        modules = dict(denoiser.named_modules())
        replacements: dict[str, nn.Module] = {}
        kinds: dict[str, str] = {}
        for internal, module in modules.items():
            if any(internal.startswith(done + ".") for done in replacements):
                continue
            if isinstance(module, EqualizedModule) and isinstance(module.layer, QUANT_LAYERS):
                name = to_user.get(f"{internal}.layer", internal)
                kernel = self.kernel_for(module.layer, name)
                scale = module.scale
                replacements[internal] = Smoothed(scale.weight, scale.bias, scale.runtime_shape, kernel)
                kinds[name] = kernel.kind
            elif isinstance(module, QUANT_LAYERS):
                name = to_user.get(internal, internal)
                replacements[internal] = self.kernel_for(module, name)
                kinds[name] = replacements[internal].kind
            elif type(module) in (nn.Linear, nn.Conv2d):
                kinds[to_user.get(internal, internal)] = "float"
        if not any(kind != "float" for kind in kinds.values()):
            raise ModelError("the denoiser has no Brevitas quant layers: quantize and calibrate it first "
                             "(brevitas_ldm.quantize_pipeline or from_pretrained of a quantized folder)")
        for internal, replacement in replacements.items():
            replacement.train(False)
            denoiser.set_submodule(internal, replacement)
        return kinds


RUNTIMES.register(TorchRuntime)
