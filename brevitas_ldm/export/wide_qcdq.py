"""16-bit activations in ONNX QCDQ: an extended Brevitas activation handler and onnxruntime's contrib domain.

Brevitas' standard QCDQ handler refuses bit widths above 8, and ONNX has int16 ``QuantizeLinear`` only from opset
21, which the TorchScript exporter cannot emit; converting the file to opset 21 with ``onnx.version_converter``
produces a model that onnxruntime 1.32 rejects at session creation (its QDQ Gemm optimizer inserts a Q node with
mismatched ``output_dtype``/zero-point types). So a denoiser with 16-bit activations is exported with the handler
below, which emits int16 Q/DQ (unsigned 16-bit as int16 with a shifted zero point, since the exporter cannot write
uint16), and those nodes are put in onnxruntime's ``com.microsoft`` domain, whose QuantizeLinear/DequantizeLinear
accept 16-bit types at any opset (the same choice onnxruntime's own quantization tool makes for 16-bit QDQ below
opset 21). Such a file needs onnxruntime; 8-bit-only files are plain ONNX.
"""

from __future__ import annotations

import torch
from brevitas.export.onnx.standard.qcdq.handler import (
    StdQCDQCastONNXActQuantProxyHandler,
)
from brevitas.export.onnx.standard.qcdq.manager import StdQCDQONNXManager

from brevitas_ldm.export.inspection import qdq_type_source, tensor_types

#: onnxruntime's contrib-op domain, whose QuantizeLinear/DequantizeLinear accept int16/uint16 below opset 21.
MS_DOMAIN = "com.microsoft"

class WideQCDQCastONNXActQuantProxyHandler(StdQCDQCastONNXActQuantProxyHandler):
    """Brevitas' standard QCDQ activation handler, extended to 16-bit activations.

    16-bit activations get int16 storage and zero points, and no Clip (QuantizeLinear already saturates to the
    16-bit range; onnxruntime has no int16 Clip). Unsigned 16-bit activations are stored as int16 too, with the
    zero point shifted by -32768: ``(q_u - z_u) s = (q_s - z_s) s`` with ``q_s = q_u - 32768``, exactly the same
    values, because torch's TorchScript exporter cannot write uint16. Bit widths 9-15 would need a 16-bit Clip and
    are refused (see :func:`check_exportable`).
    """

    def validate(self, module):
        bits = int(module.bit_width().item())
        if bits <= 1 or 8 < bits < 16 or bits > 16:
            raise RuntimeError(f"{bits}-bit activations cannot be exported as QCDQ (8 bits or fewer, or 16)")
        if module.rounding_mode.upper() != "ROUND":
            raise RuntimeError("activation export needs round-to-nearest-even quantizers")
        if module.is_groupwise:
            raise RuntimeError("group-wise activation quantization cannot be exported as QCDQ")
        if bits == 16 and module.is_narrow_range:
            raise RuntimeError("narrow-range 16-bit activations cannot be exported as QCDQ")

    @classmethod
    def signed_dtype(cls, bit_width, is_signed):
        if bit_width is None:
            return None
        if bit_width <= 8:
            return torch.int8 if is_signed else torch.uint8
        return torch.int16

    @classmethod
    def zero_point_with_dtype(cls, signed, bit_width, zero_point):
        if bit_width <= 8:
            return super().zero_point_with_dtype(signed, bit_width, zero_point)
        if not signed:
            zero_point = zero_point - 2 ** 15
        return zero_point.type(torch.int16)

    def assert_ge_zero(self, *args):
        # Brevitas' tracing check that zero points are >= 0; shifted unsigned 16-bit zero points are negative.
        super().assert_ge_zero(*(a.float() + 2 ** 15 if isinstance(a, torch.Tensor) and a.dtype == torch.int16
                                 else a for a in args))

    @classmethod
    def int_clip_symbolic_kwargs(cls, narrow, signed, bit_width):
        if bit_width > 8:
            return None
        return super().int_clip_symbolic_kwargs(narrow, signed, bit_width)


class WideQCDQONNXManager(StdQCDQONNXManager):
    """Brevitas' standard QCDQ ONNX manager with :class:`WideQCDQCastONNXActQuantProxyHandler` for activations."""

    handlers = [WideQCDQCastONNXActQuantProxyHandler if h is StdQCDQCastONNXActQuantProxyHandler else h
                for h in StdQCDQONNXManager.handlers]


def move_wide_qdq_to_ms_domain(model) -> int:
    """Put int16/uint16 QuantizeLinear/DequantizeLinear in the com.microsoft domain; returns how many."""
    import onnx

    wide = {onnx.TensorProto.INT16, onnx.TensorProto.UINT16}
    types = tensor_types(model)
    moved = 0
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and types.get(qdq_type_source(node)) in wide:
            node.domain = MS_DOMAIN
            moved += 1
    if moved and not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    return moved


