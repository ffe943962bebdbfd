"""The modules the torch runtime puts where Brevitas' fake-quantized layers were: codes + scales, fused kernels.

Every Linear and Conv2d becomes one matrix product ``[rows, k] x [k, n]``: a Linear's input rows as they are, a
convolution's input as the columns of its receptive fields (``unfold``, or a channels-last reshape for 1x1
convolutions with stride 1 and no padding). The kinds:

* :class:`Int8Matmul` (``"int8"``): integer weights and activations of 8 bits or fewer, 4-bit weights in an int8
  container included. The activation is quantized with its calibrated static scale and zero point (dividing, as
  Brevitas does, so ties round the same way), the product runs in ``torch._int_mm`` (int8 x int8 -> int32, exact),
  and zero points are taken out afterwards in int32 with the weight's column sums and the activation's row sums,
  so the integer result is exactly ``sum (q_x - z_x)(q_w - z_w)``. Padding of a convolution is written in code
  space (the code of 0.0 is the zero point), so the correction holds at the borders too. Only the final
  ``int32 -> float`` scaling by ``s_x s_w`` rounds: the output equals the fake-quantized layer's within float
  accumulation order.
* :class:`Fp8Matmul` (``"fp8"``): OCP e4m3 weights and activations through ``torch._scaled_mm`` (fp8 x fp8 with
  float32 accumulation; the per-tensor activation scale goes to the kernel, the per-channel weight scales are
  applied to its float32 output). Where the device has no fp8 matmul (CUDA before compute capability 8.9), or for
  e5m2 weights, the same codes run as a float product (``"fp8-dequant"``), with the same values.
* :class:`WeightOnlyMatmul` (``"weight-only"``): 8-bit-or-narrower integer weights with float or wider-than-8-bit
  activations (W8A16, W4A16, W8): the 16-bit activation quantizer is applied as the fake-quantized model applies
  it, then ``torch._weight_int8pack_mm`` (symmetric per-channel codes, where the device has it) or a product with
  the weight dequantized on the fly (which ``torch.compile`` fuses).
* :class:`DequantMatmul` (``"dequant"``): anything else a Brevitas layer can be (16-bit weights, grouped or
  dilated-with-odd-padding convolutions): the fake-quantized values, computed once, in a float product.

Codes and scales are buffers, so ``.to(device)`` moves them, but they keep their dtypes under ``.to(dtype)`` and
``.half()``: the scales stay float32 and the codes integer/fp8, so the product stays the measured one.

Under ``torch.compile`` every forward is plain tensor code (shape checks only), so dynamo traces it whole and
inductor fuses the quantize/unfold/scale epilogues around the integer matmul.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from brevitas_ldm.runtimes.codes import Fp8Codes, IntCodes

#: CUDA's int8 GEMM wants more than 16 rows and k, n multiples of 8; fp8's wants k, n multiples of 16.
INT8_ALIGN, FP8_ALIGN, CUDA_MIN_ROWS = 8, 16, 17


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class ConvGeometry:
    """How a Conv2d's input becomes matrix rows (None for a Linear layer)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @property
    def pointwise(self) -> bool:
        """A 1x1 convolution that is a per-pixel Linear layer: no unfold needed, a channels-last reshape."""
        return self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)

    @staticmethod
    def of(conv: nn.Conv2d) -> ConvGeometry | None:
        """The geometry of ``conv``, or None when it is not one matrix product of unfolded patches."""
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            return None
        def pair(v):
            return tuple(v) if isinstance(v, (tuple, list)) else (v, v)
        return ConvGeometry(pair(conv.kernel_size), pair(conv.stride), pair(conv.padding), pair(conv.dilation))


class _Kernel(nn.Module):
    """Shared parts: rows in, matrix product, output back in the layer's layout; bias and output quantizer."""

    kind = ""
    #: Buffers that keep their dtype when the module is cast (codes, scales); devices still follow ``.to()``.
    _fixed_dtype: tuple[str, ...] = ()

    def __init__(self, in_features: int, out_features: int, geometry: ConvGeometry | None,
                 bias: torch.Tensor | None, output_quant: IntCodes | None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.geometry = in_features, out_features, geometry
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.output_quant = output_quant
        if output_quant is not None:
            self.register_buffer("out_scale", output_quant.scale.clone())
            self.register_buffer("out_zero_point", output_quant.zero_point.clone())

    def _apply(self, fn, recurse=True):
        fixed = {name: self._buffers.pop(name) for name in self._fixed_dtype if self._buffers.get(name) is not None}
        super()._apply(fn, recurse)
        if fixed:
            device = fn(torch.zeros((), device=next(iter(fixed.values())).device)).device
            for name, tensor in fixed.items():
                self._buffers[name] = tensor.to(device)
        return self

    # -- layout -------------------------------------------------------------------------------------------------
    def rows(self, x: torch.Tensor, pad_value: float = 0.0) -> torch.Tensor:
        """``x`` (already in code space where the kernel quantizes) as ``[rows, k]``, k in the weight's order."""
        g = self.geometry
        if g is None:
            return x.reshape(-1, self.in_features)
        if g.pointwise:
            return x.permute(0, 2, 3, 1).reshape(-1, self.in_features)
        if g.padding != (0, 0):
            x = F.pad(x, (g.padding[1], g.padding[1], g.padding[0], g.padding[0]), value=pad_value)
        patches = F.unfold(x, g.kernel_size, dilation=g.dilation, stride=g.stride)     # [N, C*kh*kw, L]
        return patches.transpose(1, 2).reshape(-1, self.in_features)

    def unrows(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        if g is None:
            return out.reshape(*x.shape[:-1], self.out_features)
        height = (x.shape[2] + 2 * g.padding[0] - g.dilation[0] * (g.kernel_size[0] - 1) - 1) // g.stride[0] + 1
        width = (x.shape[3] + 2 * g.padding[1] - g.dilation[1] * (g.kernel_size[1] - 1) - 1) // g.stride[1] + 1
        return out.reshape(x.shape[0], height, width, self.out_features).permute(0, 3, 1, 2)

    def finish(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """float32 ``[rows, n]`` -> the layer's output: bias, output quantizer, layout, the input's dtype."""
        if self.bias is not None:
            out = out + self.bias
        if self.output_quant is not None:
            out = _fake_quant(out, self.out_scale, self.out_zero_point, self.output_quant)
        return self.unrows(out, x).to(x.dtype)

    def extra_repr(self) -> str:
        shape = "conv" if self.geometry is not None else "linear"
        return f"{self.kind} {shape} {self.in_features}->{self.out_features}"


def _int_codes(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
               shift: int = 0) -> torch.Tensor:
    """Brevitas' integer quantization, ``clamp(round(x / scale + zero_point))``, as float codes moved down by
    ``shift``; rounded against the unshifted zero point, so a tie rounds exactly as Brevitas rounds it."""
    codes = torch.clamp(torch.round(x.float() / scale + (zero_point + shift)), qmin + shift, qmax + shift)
    return codes - shift if shift else codes


def _fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, codes: IntCodes) -> torch.Tensor:
    """The dequantized value Brevitas' quantizer gives, ``(clamp(round(x / s + z)) - z) * s``, computed its way."""
    raw = zero_point + codes.shift
    return (torch.clamp(torch.round(x.float() / scale + raw), codes.qmin + codes.shift, codes.qmax + codes.shift)
            - raw) * scale


class Int8Matmul(_Kernel):
    kind = "int8"
    _fixed_dtype = ("weight", "weight_scale", "weight_zero_point", "column_sums", "act_scale", "act_zero_point",
                    "act_zero_code")

    def __init__(self, weight: IntCodes, act: IntCodes, geometry: ConvGeometry | None,
                 bias: torch.Tensor | None, output_quant: IntCodes | None = None) -> None:
        out_features = weight.codes.shape[0]
        matrix = weight.codes.reshape(out_features, -1).to(torch.int8)
        in_features = matrix.shape[1]
        super().__init__(in_features, out_features, geometry, bias, output_quant)
        self.k_padded, self.n_padded = _round_up(in_features, INT8_ALIGN), _round_up(out_features, INT8_ALIGN)
        padded = torch.zeros(self.n_padded, self.k_padded, dtype=torch.int8, device=matrix.device)
        padded[:out_features, :in_features] = matrix
        self.register_buffer("weight", padded)                    # [n, k]: the kernel reads it as b = weight.t()
        self.register_buffer("weight_scale", weight.scale.float().clone())
        self.register_buffer("weight_zero_point", weight.zero_point.to(torch.int32).clone())
        self.register_buffer("column_sums", matrix.to(torch.int32).sum(dim=1))
        self.register_buffer("act_scale", act.scale.float().clone())
        self.register_buffer("act_zero_point", act.zero_point.float().clone())
        self.register_buffer("act_zero_code", act.zero_point.to(torch.int32).clone())
        self.act_qmin, self.act_qmax, self.act_shift = act.qmin, act.qmax, act.shift
        self.weight_symmetric, self.act_symmetric = weight.symmetric, act.symmetric
        self.pad_code = float(act.zero_point)             # the code of 0.0: what a convolution pads with

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = _int_codes(x, self.act_scale, self.act_zero_point, self.act_qmin, self.act_qmax, self.act_shift)
        # padding in code space: the code of 0.0 is the zero point
        a = self.rows(codes, pad_value=self.pad_code).to(torch.int8)
        rows = a.shape[0]
        if self.k_padded != self.in_features:
            a = F.pad(a, (0, self.k_padded - self.in_features))
        if a.is_cuda and rows < CUDA_MIN_ROWS:
            a = F.pad(a, (0, 0, 0, CUDA_MIN_ROWS - rows))
        acc = torch._int_mm(a, self.weight.t())[:rows, :self.out_features]            # int32, exact
        if not self.act_symmetric:
            acc = acc - self.act_zero_code * self.column_sums
        if not self.weight_symmetric:
            row_sums = a[:rows].to(torch.int32).sum(dim=1, keepdim=True)
            acc = acc - row_sums * self.weight_zero_point
            if not self.act_symmetric:
                acc = acc + (self.in_features * self.act_zero_code) * self.weight_zero_point
        out = acc.float() * (self.act_scale * self.weight_scale)
        return self.finish(out, x)


def scaled_mm_available(device: torch.device) -> bool:
    """Whether ``torch._scaled_mm`` runs e4m3 x e4m3 on ``device`` (CPU builds with it, CUDA from sm 8.9)."""
    try:
        a = torch.ones(16, 16, device=device).to(torch.float8_e4m3fn)
        one = torch.ones((), device=device)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
        return True
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


class Fp8Matmul(_Kernel):
    _fixed_dtype = ("weight", "weight_scale", "act_scale")

    def __init__(self, weight: Fp8Codes, act: Fp8Codes, geometry: ConvGeometry | None, bias: torch.Tensor | None,
                 fused: bool, output_quant: IntCodes | None = None) -> None:
        out_features = weight.codes.shape[0]
        matrix = weight.codes.reshape(out_features, -1)
        super().__init__(matrix.shape[1], out_features, geometry, bias, output_quant)
        self.fused = fused and weight.format == "e4m3" and act.format == "e4m3"
        self.kind = "fp8" if self.fused else "fp8-dequant"
        self.k_padded, self.n_padded = _round_up(self.in_features, FP8_ALIGN), _round_up(out_features, FP8_ALIGN)
        padded = torch.zeros(self.n_padded, self.k_padded, dtype=weight.dtype, device=matrix.device)
        padded[:out_features, :self.in_features] = matrix
        self.register_buffer("weight", padded)
        self.register_buffer("weight_scale", weight.scale.float().clone())
        self.register_buffer("act_scale", act.scale.float().clone())
        self.register_buffer("one", torch.ones((), device=matrix.device))
        self.act_dtype, self.act_max = act.dtype, act.max_value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = torch.clamp(x.float() / self.act_scale, -self.act_max, self.act_max)
        a = self.rows(scaled).to(self.act_dtype)                   # fp8 codes, rounded to nearest even
        rows = a.shape[0]
        if self.fused:
            if self.k_padded != self.in_features:
                a = F.pad(a.float(), (0, self.k_padded - self.in_features)).to(self.act_dtype)
            out = torch._scaled_mm(a, self.weight.t(), scale_a=self.act_scale, scale_b=self.one,
                                   out_dtype=torch.float32)
            out = out[:rows, :self.out_features] * self.weight_scale
        else:
            weight = self.weight[:self.out_features, :self.in_features].float()
            out = (a.float() @ weight.t()) * (self.act_scale * self.weight_scale)
        return self.finish(out, x)


def weight_int8pack_available(device: torch.device) -> bool:
    """Whether ``torch._weight_int8pack_mm`` (float x int8 per-channel) runs on ``device``."""
    try:
        x = torch.ones(2, 8, device=device)
        torch._weight_int8pack_mm(x, torch.ones(8, 8, dtype=torch.int8, device=device), torch.ones(8, device=device))
        return True
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


class WeightOnlyMatmul(_Kernel):
    kind = "weight-only"
    _fixed_dtype = ("weight", "weight_scale", "weight_zero_point", "act_scale", "act_zero_point")

    def __init__(self, weight: IntCodes, act: IntCodes | None, geometry: ConvGeometry | None,
                 bias: torch.Tensor | None, packed: bool, output_quant: IntCodes | None = None) -> None:
        out_features = weight.codes.shape[0]
        matrix = weight.codes.reshape(out_features, -1).to(torch.int8).contiguous()
        super().__init__(matrix.shape[1], out_features, geometry, bias, output_quant)
        self.register_buffer("weight", matrix)
        self.register_buffer("weight_scale", weight.scale.float().clone())
        self.register_buffer("weight_zero_point", weight.zero_point.float().clone())
        self.packed = packed and weight.symmetric
        self.act = act
        if act is not None:
            self.register_buffer("act_scale", act.scale.float().clone())
            self.register_buffer("act_zero_point", act.zero_point.float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = x.float()
        if self.act is not None:                      # the wide (e.g. 16-bit) activation quantizer, as measured
            inputs = _fake_quant(inputs, self.act_scale, self.act_zero_point, self.act)
        a = self.rows(inputs).contiguous()
        if self.packed and a.device.type == "cpu":
            out = torch._weight_int8pack_mm(a, self.weight, self.weight_scale)
        else:
            weight = (self.weight.float() - self.weight_zero_point[:, None]) * self.weight_scale[:, None]
            out = a @ weight.t()
        return self.finish(out, x)


class DequantMatmul(_Kernel):
    """The fake-quantized values computed once: a float layer with the same weights and input quantizer."""

    kind = "dequant"
    _fixed_dtype = ("weight", "act_scale", "act_zero_point")

    def __init__(self, weight: torch.Tensor, act: IntCodes | Fp8Codes | None, conv: nn.Conv2d | None,
                 bias: torch.Tensor | None, output_quant: IntCodes | None = None) -> None:
        super().__init__(weight[0].numel(), weight.shape[0], None, bias, output_quant)
        self.register_buffer("weight", weight.detach().float().clone())
        self.conv = None if conv is None else {"stride": conv.stride, "padding": conv.padding,
                                               "dilation": conv.dilation, "groups": conv.groups}
        self.act = act
        if act is not None:
            self.register_buffer("act_scale", act.scale.float().clone())
            self.register_buffer("act_zero_point", getattr(act, "zero_point", torch.zeros(())).float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = x.float()
        if isinstance(self.act, IntCodes):
            inputs = _fake_quant(inputs, self.act_scale, self.act_zero_point, self.act)
        elif isinstance(self.act, Fp8Codes):
            scaled = torch.clamp(inputs / self.act_scale, -self.act.max_value, self.act.max_value)
            inputs = scaled.to(self.act.dtype).float() * self.act_scale
        if self.conv is not None:
            out = F.conv2d(inputs, self.weight, self.bias, **self.conv)
        else:
            out = F.linear(inputs, self.weight, self.bias)
        if self.output_quant is not None:
            out = _fake_quant(out, self.out_scale, self.out_zero_point, self.output_quant)
        return out.to(x.dtype)


class Smoothed(nn.Module):
    """A SmoothQuant layer (Brevitas ``EqualizedModule``): the per-channel input scale, then the layer's kernel.

    Brevitas' wrapper binds its arguments through ``inspect.signature`` on every call; this is the same product
    as two plain calls, which ``torch.compile`` traces."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, runtime_shape: tuple[int, ...],
                 kernel: nn.Module) -> None:
        super().__init__()
        self.register_buffer("scale", weight.detach().clone())
        self.register_buffer("shift", None if bias is None else bias.detach().clone())
        self.runtime_shape = tuple(runtime_shape)
        self.layer = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x * self.scale.view(self.runtime_shape)          # as Brevitas' ScaleBias computes it
        if self.shift is not None:
            out = out + self.shift.view(self.runtime_shape)
        return self.layer(out)
