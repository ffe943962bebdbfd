"""Integer storage that onnxruntime's x86 kernels compute exactly on every CPU kind.

onnxruntime runs a quantized product as ``uint8 activations x int8 weights`` (U8S8) or ``uint8 x uint8`` (U8U8),
signed activations being shifted to uint8 first. With VNNI (``vpdpbusd``) or AMX, U8S8 sums straight into 32
bits and is exact. On AVX2 (and AVX-512 without VNNI) U8S8 uses ``vpmaddubsw``, which adds each *pair* of
``u8 x s8`` products into a saturating int16: ``255 x 127 x 2 = 64770`` does not fit, so large activations meeting
large weights are clipped and the file is no longer the model that was measured (measured on an AVX2-only EPYC:
23.8 dB against torch instead of 37.7 dB). U8U8 widens both operands to 16 bits (``vpmaddwd``) and is exact on
every kind, and so is U8S8 whenever every weight lies in ``[-64, 64]`` (``255 x 64 x 2 = 32640 < 32767``).

So :func:`store_for_x86` rewrites each quantized weight that could overflow (some ``|q| > 64``: every 8-bit
min-max weight, since its largest value maps to 127) from int8 to uint8 with the zero point moved by +128. The
dequantized values, ``(q + 128 - (z + 128)) s = (q - z) s``, are bit-for-bit the same, so the file still describes
the measured model exactly, but the only kernels onnxruntime can pick for it are exact ones. Weights that are
already safe (4-bit to 7-bit weights) stay int8 and keep the fast U8S8 kernel everywhere. Signed 8-bit activations
are stored as uint8 the same way (``q + 128``, ``z + 128``), the form onnxruntime's x86 kernels consume natively.

This is onnxruntime's own ``session.x64quantprecision`` rewrite (``Avx2WeightS8ToU8Transformer``), done in the
file instead of at session start, so it does not depend on a session option a deployment may not set.
``weight_storage="int8"`` skips it: smaller kernels' speed on VNNI CPUs, refused by the verifier elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from brevitas_ldm.export.onnx_graph import OnnxGraph

#: Weight storages :func:`brevitas_ldm.export.export_denoiser` accepts.
WEIGHT_STORAGES = ("portable", "int8")
#: Largest ``|q|`` of an int8 weight that onnxruntime's AVX2 U8S8 kernel multiplies without int16 saturation.
U8S8_SAFE_MAGNITUDE = 64


@dataclass(frozen=True)
class StorageReport:
    """What :func:`store_for_x86` changed: weights moved to uint8, weights left int8 (safe), activations moved."""

    weights_uint8: int
    weights_int8_safe: int
    activations_uint8: int


def int8_weight_is_safe(values: np.ndarray) -> bool:
    """Whether onnxruntime's U8S8 kernels multiply these int8 weights exactly on every x86 kind."""
    return values.size == 0 or int(np.abs(values.astype(np.int16)).max()) <= U8S8_SAFE_MAGNITUDE


def to_uint8(values: np.ndarray) -> np.ndarray:
    """int8 storage -> uint8 storage with the same dequantized values (zero points move the same way)."""
    return (values.astype(np.int16) + 128).astype(np.uint8)


def store_for_x86(model: onnx.ModelProto) -> StorageReport:
    """Rewrite ``model`` in place so every integer kernel onnxruntime can choose for it is exact (see module doc)."""
    graph = OnnxGraph(model)
    weights_uint8 = weights_safe = 0
    converted: dict[tuple[str, str], tuple[str, str]] = {}
    for dq in graph.nodes("DequantizeLinear"):
        source, clip = _through_clip(graph, dq.input[0])
        values = graph.constant(source)
        zero_point = graph.constant(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        if values is None or values.dtype != np.int8 or zero_point is None or zero_point.dtype != np.int8:
            continue
        key = (dq.input[0], dq.input[2])
        if key not in converted:
            if clip is not None:
                low, high = _clip_bounds(graph, clip)
                values = np.clip(values, low, high).astype(np.int8)
            if int8_weight_is_safe(values):
                converted[key] = (graph.add_constant(values, f"{source}_int8"), dq.input[2])
                weights_safe += 1
            else:
                converted[key] = (graph.add_constant(to_uint8(values), f"{source}_uint8"),
                                  graph.add_constant(to_uint8(zero_point), f"{dq.input[2]}_uint8"))
                weights_uint8 += 1
        dq.input[0], dq.input[2] = converted[key]
    activations = sum(_activation_to_uint8(graph, q) for q in graph.nodes("QuantizeLinear"))
    graph.remove_unused()
    return StorageReport(weights_uint8, weights_safe, activations)


def _through_clip(graph: OnnxGraph, name: str) -> tuple[str, onnx.NodeProto | None]:
    node = graph.producer.get(name)
    if node is not None and node.op_type == "Clip":
        return node.input[0], node
    return name, None


def _clip_bounds(graph: OnnxGraph, clip: onnx.NodeProto) -> tuple[int, int]:
    """The integer range an int8 ``Clip`` keeps (its missing bounds are the int8 range's)."""
    def bound(index: int, default: int) -> int:
        value = graph.constant(clip.input[index]) if len(clip.input) > index and clip.input[index] else None
        return default if value is None else int(value)

    return bound(1, -128), bound(2, 127)


def _activation_to_uint8(graph: OnnxGraph, quantize: onnx.NodeProto) -> int:
    """Move one int8 activation Q -> (Clip) -> DQ chain to uint8; 1 if it was moved, 0 if left as it was."""
    if len(quantize.input) < 3 or not quantize.input[2]:
        return 0
    zero_point = graph.constant(quantize.input[2])
    if zero_point is None or zero_point.dtype != np.int8:
        return 0
    clips, dequantizers = [], []
    for consumer in graph.consumers(quantize.output[0]):
        if consumer.op_type == "Clip" and consumer.input[0] == quantize.output[0]:
            clips.append(consumer)
            chain = graph.consumers(consumer.output[0])
        else:
            chain = [consumer]
        for node in chain:
            if node.op_type != "DequantizeLinear" or node.domain != "" or node.input[0] not in (
                    quantize.output[0], consumer.output[0]):
                return 0
            dequantizers.append(node)
    new_zero_point = graph.add_constant(to_uint8(zero_point), f"{quantize.input[2]}_uint8")
    quantize.input[2] = new_zero_point
    for clip in clips:
        low, high = _clip_bounds(graph, clip)
        while len(clip.input) < 3:
            clip.input.append("")
        clip.input[1] = graph.add_constant(np.array(low + 128, np.uint8), f"{clip.name or 'clip'}_min_uint8")
        clip.input[2] = graph.add_constant(np.array(high + 128, np.uint8), f"{clip.name or 'clip'}_max_uint8")
    for dq in dequantizers:
        dq.input[2] = new_zero_point
    return 1
