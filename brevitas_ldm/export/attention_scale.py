"""Attention's softmax scale as a constant in the traced graph, so OpenVINO can run quantized scores on integers.

diffusers' attention processors call ``F.scaled_dot_product_attention`` without ``scale``; the ONNX exporter then
computes the default ``1/sqrt(head_dim)`` from the query's runtime shape (``Shape -> Gather -> Sqrt``) and
multiplies query and key by its square root just before the scores' MatMul. OpenVINO's low-precision
transformations move a dequantization through reshapes, transposes and constant multiplies, but not through a
product with a computed value, so 8-bit queries and keys (``[deploy] quantize_query_key``) would still meet a float
MatMul. Inside :func:`constant_attention_scale` the call gets the same scale as a Python float, which the trace
records as a constant: the same value (the head size is static), and OpenVINO's attention runs u8/i8.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.nn.functional as F


@contextlib.contextmanager
def constant_attention_scale() -> Iterator[None]:
    """``F.scaled_dot_product_attention`` with its default scale passed explicitly, for the duration (tracing)."""
    original = F.scaled_dot_product_attention

    def with_constant_scale(query, key, value, *args, scale=None, **kwargs):
        if scale is None:
            scale = float(query.shape[-1]) ** -0.5            # torch's own default, fixed at trace time
        return original(query, key, value, *args, scale=scale, **kwargs)

    F.scaled_dot_product_attention = with_constant_scale
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
