"""ONNX forms of torch ops that the TorchScript exporter lacks at the opsets the product exports (13-20).

Brevitas' ONNX exporters trace with torch's TorchScript exporter. It has no symbolic for ``aten::rms_norm`` below
opset 23 (ONNX's RMSNormalization), and recent diffusers transformers (Flux, SD3.5, HunyuanDiT) normalise queries
and keys with ``torch.nn.RMSNorm``, so their export stopped with "Exporting the operator 'aten::rms_norm' to ONNX
opset version 17 is not supported". :func:`missing_symbolics` registers the op's textbook decomposition,
``x / sqrt(mean(x^2) + eps) * weight``, for the duration of one export only, so nothing global is left behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.onnx import symbolic_helper


def _rms_norm(g, x, normalized_shape, weight, eps):
    shape = symbolic_helper._get_const(normalized_shape, "is", "normalized_shape")
    axes = list(range(-len(shape), 0))
    if symbolic_helper._is_none(eps):
        epsilon = torch.finfo(torch.float32).eps
    else:
        epsilon = symbolic_helper._get_const(eps, "f", "eps")
    squared = g.op("Mul", x, x)
    if g.opset >= 18:
        axes_input = g.op("Constant", value_t=torch.tensor(axes, dtype=torch.int64))
        mean = g.op("ReduceMean", squared, axes_input, keepdims_i=1)
    else:
        mean = g.op("ReduceMean", squared, axes_i=axes, keepdims_i=1)
    eps_constant = g.op("Constant", value_t=torch.tensor(epsilon, dtype=torch.float32))
    eps_constant = g.op("CastLike", eps_constant, x)
    normalised = g.op("Div", x, g.op("Sqrt", g.op("Add", mean, eps_constant)))
    if symbolic_helper._is_none(weight):
        return normalised
    return g.op("Mul", normalised, weight)


#: op name -> symbolic, registered for every opset the exporters accept.
_SYMBOLICS = {"aten::rms_norm": _rms_norm}
_OPSETS = range(13, 21)


@contextmanager
def missing_symbolics() -> Iterator[None]:
    """Register :data:`_SYMBOLICS` with torch's TorchScript ONNX exporter while the context is open."""
    for name, symbolic in _SYMBOLICS.items():
        for opset in _OPSETS:
            torch.onnx.register_custom_op_symbolic(name, symbolic, opset)
    try:
        yield
    finally:
        for name in _SYMBOLICS:
            for opset in _OPSETS:
                torch.onnx.unregister_custom_op_symbolic(name, opset)
