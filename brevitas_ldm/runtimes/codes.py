"""What a calibrated Brevitas layer holds, as the integer (or fp8) codes and scales a fused kernel needs.

Everything is read through Brevitas' own accessors, not re-derived: the weight from ``layer.quant_weight()`` (an
``IntQuantTensor`` whose ``.int()`` are the codes, with ``.scale``, ``.zero_point``, ``.bit_width``, or a
``FloatQuantTensor`` whose ``.minifloat()`` are the fp8 values), the activation quantizer from one call of the
layer's calibrated ``input_quant`` proxy (scale, zero point, bit width, signedness of the ``QuantTensor`` it
returns) plus the proxy's ``is_narrow_range``. A static per-tensor activation quantizer is what the kernels
apply, so the activation ranges must be calibrated first: a proxy whose scale still depends on its input is
refused.

Integer codes are moved into the signed int8 range when they fit 8 bits (unsigned min-max weights and shifted
activations are stored ``q - 128`` with the zero point moved by the same amount), so ``torch._int_mm`` (int8 x
int8 -> int32) takes every integer layer of 8 bits or fewer, 4-bit weights included.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from brevitas.quant_tensor import FloatQuantTensor, IntQuantTensor
from torch import nn

from brevitas_ldm.errors import ModelError
from brevitas_ldm.quant.integer_codes import fp8_format


@dataclass(frozen=True)
class IntCodes:
    """``value = scale * (codes - zero_point)``; codes within ``[qmin, qmax]`` (shifted into int8 when they fit)."""

    codes: torch.Tensor | None      # weights: the codes (int8 when bits <= 8, else int32); activations: None
    scale: torch.Tensor             # weights: [out_channels] float32; activations: a 0-d float32 tensor
    zero_point: torch.Tensor        # the same shape as scale, integer-valued float32, in the shifted code space
    bits: int
    qmin: int
    qmax: int
    #: How far the codes were moved down into int8 (128 for unsigned 8-bit codes). Quantizing must round against
    #: the unshifted zero point, as Brevitas does: ``x / s + z`` is rounded to float32 before ``round()``, and
    #: adding a different ``z`` rounds differently, which flips the code of an input sitting at a tie.
    shift: int = 0

    @property
    def fits_int8(self) -> bool:
        return -128 <= self.qmin and self.qmax <= 127

    @property
    def symmetric(self) -> bool:
        return not bool(self.zero_point.ne(0).any())


@dataclass(frozen=True)
class Fp8Codes:
    """``value = scale * codes``, codes an OCP fp8 format (``e4m3``/``e5m2``), saturating at ``max_value``."""

    codes: torch.Tensor | None      # weights: [out, in...] in the fp8 dtype; activations: None
    scale: torch.Tensor
    format: str
    dtype: torch.dtype
    max_value: float


Codes = IntCodes | Fp8Codes


def _int_range(bits: int, signed: bool, narrow: bool) -> tuple[int, int]:
    if signed:
        return -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1 - int(narrow)


def _shift(qmin: int, qmax: int, bits: int) -> int:
    """How far codes move down to sit in int8: 128 for unsigned 8-bit codes, 0 when they already fit."""
    if -128 <= qmin and qmax <= 127:
        return 0
    return 128 if bits <= 8 else 0


def _fp8_format(tensor: FloatQuantTensor, what: str) -> tuple[str, torch.dtype, float]:
    fmt = fp8_format(tensor.exponent_bit_width, tensor.mantissa_bit_width, what)
    return fmt.name, fmt.dtype, fmt.max_value


def _per_channel(scale: torch.Tensor, out_channels: int) -> torch.Tensor:
    flat = scale.detach().float().reshape(-1)
    return flat.expand(out_channels).clone() if flat.numel() == 1 else flat.clone()


@torch.no_grad()
def weight_codes(layer: nn.Module) -> Codes:
    """The quantized weight of a Brevitas ``QuantLinear``/``QuantConv2d`` as codes with per-output-channel scales."""
    quant = layer.quant_weight()
    out_channels = layer.weight.shape[0]
    if isinstance(quant, IntQuantTensor):
        bits = int(quant.bit_width.item())
        signed = bool(quant.signed_t.item()) if torch.is_tensor(quant.signed_t) else bool(quant.signed)
        qmin, qmax = _int_range(bits, signed, bool(layer.weight_quant.is_narrow_range))
        shift = _shift(qmin, qmax, bits)
        codes = quant.int().to(torch.int32) - shift
        zero_point = _per_channel(quant.zero_point, out_channels) - shift
        return IntCodes(codes.to(torch.int8) if bits <= 8 else codes, _per_channel(quant.scale, out_channels),
                        zero_point, bits, qmin - shift, qmax - shift, shift)
    if isinstance(quant, FloatQuantTensor):
        name, dtype, max_value = _fp8_format(quant, "the weight quantizer")
        if bool(quant.zero_point.ne(0).any()):
            raise ModelError("an fp8 weight quantizer with a zero point cannot run in the torch runtime: quantize "
                             "with weights.symmetric = true")
        return Fp8Codes(quant.minifloat().to(dtype), _per_channel(quant.scale, out_channels), name, dtype, max_value)
    raise ModelError(f"{type(layer).__name__}'s weight quantizer returns {type(quant).__name__}, which the torch "
                     f"runtime cannot hold: quantize with an integer or fp8 recipe")


@torch.no_grad()
def static_codes(proxy: nn.Module, example: torch.Tensor, what: str) -> Codes:
    """The static per-tensor quantizer a calibrated Brevitas activation proxy applies (read from one call)."""
    if proxy.training:
        raise ModelError(f"{what} is in training mode, so its scale still follows its inputs: call model.eval() "
                         f"after calibration and before deploying")
    first = proxy(example)
    second = proxy(example * 3.0 + 1.0)
    if not torch.equal(first.scale, second.scale) or not torch.equal(first.zero_point, second.zero_point):
        raise ModelError(f"{what} has a dynamic (input-dependent) scale: the torch runtime needs the static, "
                         f"calibrated scale of a per-tensor activation quantizer; calibrate the model first")
    if first.scale.numel() != 1:
        raise ModelError(f"{what} has {first.scale.numel()} scales: the torch runtime takes per-tensor activation "
                         f"quantizers only (activations.granularity = \"per_tensor\")")
    scale = first.scale.detach().float().reshape(())
    if isinstance(first, FloatQuantTensor):
        name, dtype, max_value = _fp8_format(first, what)
        if bool(first.zero_point.ne(0).any()):
            raise ModelError(f"{what} has a zero point, which fp8 activations cannot take: quantize with "
                             f"activations.symmetric = true")
        return Fp8Codes(None, scale, name, dtype, max_value)
    if isinstance(first, IntQuantTensor):
        bits = int(first.bit_width.item())
        signed = bool(first.signed_t.item()) if torch.is_tensor(first.signed_t) else bool(first.signed)
        qmin, qmax = _int_range(bits, signed, bool(proxy.is_narrow_range))
        shift = _shift(qmin, qmax, bits)
        zero_point = first.zero_point.detach().float().reshape(())
        if not torch.equal(zero_point, zero_point.round()):
            raise ModelError(f"{what} has a fractional zero point ({float(zero_point)}), so its integer product is "
                             f"not exact: quantize with a Brevitas quantizer whose zero point is an integer")
        return IntCodes(None, scale, zero_point - shift, bits, qmin - shift, qmax - shift, shift)
    raise ModelError(f"{what} returns {type(first).__name__}, which the torch runtime cannot apply")
