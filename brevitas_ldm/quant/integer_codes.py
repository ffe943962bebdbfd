"""A Brevitas quant layer's weight as what it is: integer (or FP8) codes, scales and zero points - and back.

A fake-quantized layer keeps a float weight and quantizes it at every call; what it computes with is
``(q - z) * s``, with ``q`` an integer code of ``bit_width`` bits, ``s`` a scale per output channel (or tensor) and
``z`` a zero point (0 when symmetric). :func:`weight_codes` reads ``q``, ``s`` and ``z`` off a layer through
Brevitas' own :class:`~brevitas.quant_tensor.IntQuantTensor` and checks that they rebuild the layer's quantized
weight bit for bit. :func:`restore_weight` goes the other way on a freshly built quant layer of the same recipe:
its weight becomes ``(q - z) * s`` and its weight quantizer's scale (and zero point) are pinned to the stored
tensors, so it quantizes that weight to the same codes and computes with the same dequantized weight, bit for bit.
(Recomputing the scale from the dequantized weight would not do: ``max|(q s)| / 127`` need not round back to
``s``.) FP8 weights (e4m3/e5m2) are stored as torch float8 values of ``w / s``.

:func:`pack_codes` / :func:`unpack_codes` store codes in the narrowest integer type: two 4-bit-or-narrower codes
per byte, int8/uint8 up to 8 bits, int16/int32 above. This module is the one place that knows how a Brevitas
weight becomes codes, so a checkpoint writer and an integer runtime can share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from brevitas.quant_tensor import FloatQuantTensor, IntQuantTensor
from torch import nn

from brevitas_ldm.errors import ModelError


@dataclass(frozen=True)
class Fp8Format:
    """An OCP fp8 format Brevitas quantizes to: its name, the torch dtype that stores it, its largest value."""

    name: str
    dtype: torch.dtype
    max_value: float


#: The fp8 formats by (exponent bits, mantissa bits): the one table storage, the torch runtime and the precision
#: reader use.
FP8_FORMATS = {(4, 3): Fp8Format("e4m3", torch.float8_e4m3fn, 448.0), (5, 2): Fp8Format("e5m2", torch.float8_e5m2,
                                                                                         57344.0)}


def fp8_format(exponent_bits: int, mantissa_bits: int, what: str) -> Fp8Format:
    """The fp8 format of a minifloat quantizer; a one-line error naming ``what`` for any other minifloat."""
    key = (int(exponent_bits), int(mantissa_bits))
    if key not in FP8_FORMATS:
        raise ModelError(f"{what} is a {key[0]}-exponent/{key[1]}-mantissa minifloat, which has no torch type: "
                         f"quantize with format = \"e4m3\" or \"e5m2\"")
    return FP8_FORMATS[key]


@dataclass
class WeightCodes:
    """One layer's quantized weight. ``codes``: integers in the layer's code range (unpacked, int32) or float8
    values; ``scale`` and ``zero_point`` broadcast against the weight (``zero_point`` None when symmetric)."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    bit_width: int
    signed: bool
    format: str = "int"        # "int", "e4m3" or "e5m2"

    def dequantize(self) -> torch.Tensor:
        """``(q - z) * s`` computed as Brevitas computes it (same operations, same dtype), so bit-identical."""
        if self.format != "int":
            return self.codes.to(self.scale.dtype) * self.scale
        values = self.codes.to(self.scale.dtype)
        zero_point = self.zero_point.to(self.scale.dtype) if self.zero_point is not None else torch.zeros(
            (), dtype=self.scale.dtype)
        return (values - zero_point) * self.scale


@torch.no_grad()
def weight_codes(layer: nn.Module, name: str = "layer") -> WeightCodes:
    """The codes, scale and zero point of ``layer``'s quantized weight, checked to rebuild it exactly."""
    quant = layer.quant_weight()
    value = quant.value.detach()
    scale = quant.scale.detach().clone()
    if isinstance(quant, IntQuantTensor):
        zero_point = quant.zero_point.detach()
        # in float64: value / scale in bfloat16 can land half a step away from its code
        codes = torch.round(value.double() / scale.double() + zero_point.double()).to(torch.int32)
        result = WeightCodes(codes, scale, zero_point.to(torch.int32).clone() if has_zero_point(layer) else None,
                             int(quant.bit_width.item()), bool(quant.signed))
    elif isinstance(quant, FloatQuantTensor):
        fmt = fp8_format(quant.exponent_bit_width, quant.mantissa_bit_width, f"layer {name!r}'s weight")
        result = WeightCodes((value.double() / scale.double()).float().to(fmt.dtype), scale, None, 8, True, fmt.name)
    else:       # pragma: no cover - a quantizer kind the recipes do not build
        raise ModelError(f"layer {name!r} has a {type(quant).__name__} weight, which cannot be stored as codes")
    if not torch.equal(result.dequantize(), value):
        raise ModelError(f"layer {name!r}: its quantized weight is not (codes - zero point) * scale exactly, so it "
                         f"cannot be stored as integers; please report this with the recipe used")
    return result


def has_zero_point(layer: nn.Module) -> bool:
    """Whether ``layer``'s weight quantizer computes a zero point (asymmetric) rather than Brevitas' constant 0."""
    impl = getattr(layer.weight_quant.tensor_quant, "zero_point_impl", None)
    return impl is not None and type(impl).__name__ not in ("ZeroZeroPoint", "StatelessBuffer")


class StoredScale(nn.Module):
    """A weight quantizer's scale, pinned to the stored tensor (takes the place of Brevitas' ``scaling_impl``;
    keeps its restriction modules, which Brevitas' inference handlers read)."""

    def __init__(self, scale: torch.Tensor, original: nn.Module) -> None:
        super().__init__()
        self.register_buffer("value", scale.detach().clone())
        for attribute in ("restrict_clamp_scaling", "restrict_clamp_threshold"):
            inner = getattr(original, attribute, None) or getattr(getattr(original, "stats_scaling_impl", None),
                                                                 attribute, None)
            if inner is not None:
                setattr(self, attribute, inner)

    def forward(self, x: torch.Tensor, threshold: torch.Tensor | None = None) -> torch.Tensor:
        return self.value


class StoredZeroPoint(nn.Module):
    """A weight quantizer's zero point, pinned to the stored tensor (Brevitas' ``zero_point_impl``)."""

    def __init__(self, zero_point: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", zero_point.detach().clone())

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None,
                bit_width: torch.Tensor | None = None) -> torch.Tensor:
        return self.value


@torch.no_grad()
def restore_weight(layer: nn.Module, codes: WeightCodes, name: str = "layer") -> None:
    """Make the freshly built quant ``layer`` compute with ``codes``: weight = dequantized codes, scale and zero
    point pinned. Refused when the layer's quantizer is another kind (bits, sign, format) than the codes'."""
    proxy = layer.weight_quant
    tensor_quant = proxy.tensor_quant
    if tensor_quant is None or not proxy.is_quant_enabled:
        raise ModelError(f"layer {name!r} is not weight-quantized in the rebuilt model but the file stores codes "
                         f"for it")
    is_int = hasattr(tensor_quant, "int_quant")
    if is_int != (codes.format == "int"):
        raise ModelError(f"layer {name!r} stores {codes.format} codes but the recipe builds a "
                         f"{'integer' if is_int else 'float'} weight quantizer for it")
    if is_int:
        bits = int(tensor_quant.msb_clamp_bit_width_impl().item())
        low = int(tensor_quant.int_quant.min_int(torch.tensor(float(bits))).item())
        high = int(tensor_quant.int_quant.max_int(torch.tensor(float(bits))).item())
        if bits != codes.bit_width or codes.codes.numel() and not (low <= int(codes.codes.min()) and
                                                                     int(codes.codes.max()) <= high):
            raise ModelError(f"layer {name!r} stores {codes.bit_width}-bit codes that do not fit its rebuilt "
                             f"{bits}-bit quantizer ({low}..{high})")
    dtype = layer.weight.dtype
    weight = codes.dequantize().to(dtype)
    if tuple(weight.shape) != tuple(layer.weight.shape):
        raise ModelError(f"layer {name!r} stores a weight of shape {tuple(weight.shape)} where the model has "
                         f"{tuple(layer.weight.shape)}")
    if has_zero_point(layer) != (codes.zero_point is not None):
        raise ModelError(f"layer {name!r} stores {'a' if codes.zero_point is not None else 'no'} zero point but the "
                         f"recipe builds a{'n a' if codes.zero_point is None else ' '}symmetric weight quantizer")
    layer.weight.data.copy_(weight)
    tensor_quant.scaling_impl = StoredScale(codes.scale.to(dtype), tensor_quant.scaling_impl)
    if codes.zero_point is not None:
        tensor_quant.zero_point_impl = StoredZeroPoint(codes.zero_point.to(dtype))
    if hasattr(proxy, "_cached_weight"):
        proxy._cached_weight = None


def code_dtype(bit_width: int, signed: bool) -> torch.dtype:
    """The narrowest torch integer type that holds one code (before packing)."""
    if bit_width <= 8:
        return torch.int8 if signed else torch.uint8
    if bit_width < 16 or (bit_width == 16 and signed):
        return torch.int16
    return torch.int32


def packs(bit_width: int) -> bool:
    """Whether codes of ``bit_width`` bits are stored two per byte."""
    return bit_width <= 4


def pack_codes(codes: torch.Tensor, bit_width: int, signed: bool) -> torch.Tensor:
    """Codes in their storage form: 4-bit-or-narrower ones two per uint8 (low nibble first, offset by
    ``2**(bits-1)`` when signed so each nibble is 0..15), wider ones in :func:`code_dtype`."""
    if codes.is_floating_point():
        return codes.contiguous()
    if not packs(bit_width):
        return codes.to(code_dtype(bit_width, signed)).contiguous()
    flat = codes.reshape(-1).to(torch.int32) + (8 if signed else 0)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    pairs = flat.reshape(-1, 2)
    return (pairs[:, 0] | (pairs[:, 1] << 4)).to(torch.uint8)


def unpack_codes(stored: torch.Tensor, shape: tuple[int, ...], bit_width: int, signed: bool) -> torch.Tensor:
    """The inverse of :func:`pack_codes`: int32 codes (or the float8 values) of ``shape``."""
    if stored.is_floating_point():
        return stored.reshape(shape)
    if not packs(bit_width):
        return stored.to(torch.int32).reshape(shape)
    numel = 1
    for size in shape:
        numel *= size
    values = stored.to(torch.int32)
    flat = torch.stack([values & 0xF, values >> 4], dim=1).reshape(-1)[:numel]
    return (flat - (8 if signed else 0)).reshape(shape)


def stored_bytes(codes: WeightCodes) -> int:
    """Bytes the layer's codes, scales and zero points take in storage form."""
    packed = pack_codes(codes.codes, codes.bit_width, codes.signed)
    total = packed.numel() * packed.element_size() + codes.scale.numel() * codes.scale.element_size()
    if codes.zero_point is not None:
        total += codes.zero_point.numel() * code_dtype(codes.bit_width, codes.signed).itemsize
    return total


#: Keys a quantized layer's weight takes in an integer state dict, after the layer's (internal) module name.
CODES_KEY, SCALE_KEY, ZERO_POINT_KEY, SHAPE_KEY = "weight_codes", "weight_scale", "weight_zero_point", "weight_shape"


def weight_quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Internal module name -> Brevitas layer, for every layer whose weight is quantized."""
    import brevitas.nn as qnn

    return {name: module for name, module in model.named_modules()
            if isinstance(module, (qnn.QuantLinear, qnn.QuantConv2d)) and module.weight_quant.is_quant_enabled}


@torch.no_grad()
def integer_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """``model``'s state with every quantized weight replaced by its stored codes, scale, zero point and shape
    (and its weight quantizer's own state left out: the stored scale replaces it); everything else (biases,
    norms, float layers, activation scales, SmoothQuant multipliers) as it is. Also returns the storage table:
    internal layer name -> ``{"bits", "signed", "format"}``, which :func:`layer_codes` needs to read the codes."""
    state = {key: value.detach().cpu().contiguous().clone() for key, value in model.state_dict().items()
             if isinstance(value, torch.Tensor)}
    table: dict[str, dict] = {}
    for name, layer in weight_quantized_layers(model).items():
        codes = weight_codes(layer, name)
        for key in [k for k in state if k == f"{name}.weight" or k.startswith(f"{name}.weight_quant.")]:
            del state[key]
        state[f"{name}.{CODES_KEY}"] = pack_codes(codes.codes.cpu(), codes.bit_width, codes.signed)
        state[f"{name}.{SCALE_KEY}"] = codes.scale.cpu().contiguous()
        if codes.zero_point is not None:
            state[f"{name}.{ZERO_POINT_KEY}"] = codes.zero_point.cpu().to(code_dtype(codes.bit_width,
                                                                                      codes.signed)).contiguous()
        state[f"{name}.{SHAPE_KEY}"] = torch.tensor(list(layer.weight.shape), dtype=torch.int64)
        table[name] = {"bits": codes.bit_width, "signed": codes.signed, "format": codes.format}
    return state, table


def layer_codes(state: dict[str, torch.Tensor], name: str, entry: dict) -> WeightCodes:
    """The codes of layer ``name`` in an integer state dict (``entry``: its row of the storage table);
    ``KeyError`` names a missing tensor."""
    bits, signed, fmt = int(entry["bits"]), bool(entry["signed"]), str(entry["format"])
    shape = tuple(int(v) for v in state[f"{name}.{SHAPE_KEY}"].tolist())
    codes = unpack_codes(state[f"{name}.{CODES_KEY}"], shape, bits, signed)
    zero_point = state.get(f"{name}.{ZERO_POINT_KEY}")
    return WeightCodes(codes, state[f"{name}.{SCALE_KEY}"], None if zero_point is None else zero_point.to(torch.int32),
                       bits, signed, fmt)


def is_code_key(key: str) -> bool:
    """Whether ``key`` of an integer state dict belongs to a stored weight (codes, scale, zero point, shape)."""
    return key.rpartition(".")[2] in (CODES_KEY, SCALE_KEY, ZERO_POINT_KEY, SHAPE_KEY)
