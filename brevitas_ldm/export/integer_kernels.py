"""Lower quantized Conv/MatMul/Gemm layers of a QCDQ file to onnxruntime integer kernels (``onnx-int8``).

Brevitas' QCDQ file quantizes each layer's *input* and weight; the layer's output stays float. onnxruntime fuses
``DQ(x), DQ(w) -> Conv -> Q`` into QLinearConv only when the output is quantized too, so the Convs of a QCDQ file
run in fp32 on dequantized tensors (slower than the FP32 file), and its own fusion of ``DQ -> MatMul`` into
``MatMulIntegerToFloat`` is blocked wherever CommonSubexpressionElimination merges the identical q/k/v input Q/DQ,
and never happens for a Gemm with a float bias.

This pass writes the integer form directly, with no new quantization point, so the file stays exactly the
fake-quantized model the analysis measured (``conv(DQ(x), DQ(w)) + b`` and ``acc_int32 * s_x s_w + b`` differ
only in float summation order):

* ``Conv(DQ(x), DQ(w), b)`` -> ``ConvInteger(x_q, w_q) -> Cast -> Mul(s_x s_w) -> Add(b)``; a conv whose output
  the recipe requantizes (``[deploy] requantize_conv_outputs``) is left for onnxruntime's own QLinearConv fusion.
  onnxruntime runs ConvInteger fast only as ``uint8 x uint8`` (measured: 56 ms for u8s8 against 12 ms for u8u8 on a
  320-channel 3x3 conv), so conv weights are stored as uint8 (exact on every x86 kind, see :mod:`.x86_storage`).
* ``MatMul(DQ(x), Transpose(DQ(w)))`` and ``Gemm(DQ(x), DQ(w), b)`` -> ``com.microsoft.MatMulIntegerToFloat``
  (per-column weight scales, bias fused for Gemm), one per layer even where q/k/v share one quantized input.

Layers whose input is not an 8-bit quantized tensor (float or 16-bit activations in a hybrid plan, weight-only
layers) are left as they are and stay correct. :func:`lower_to_integer_kernels` expects a file already passed
through :func:`~brevitas_ldm.export.x86_storage.store_for_x86`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from brevitas_ldm.export.onnx_graph import OnnxGraph
from brevitas_ldm.export.x86_storage import int8_weight_is_safe, to_uint8

MS_DOMAIN = "com.microsoft"
#: onnxruntime ops that compute a layer on integers (what ``export.json`` counts after onnxruntime's optimizer).
INTEGER_KERNELS = ("QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
                   "DynamicQuantizeMatMul", "QAttention")


@dataclass
class LoweringReport:
    """Layers the pass lowered, by integer op, and the ones it left in float with the reason."""

    lowered: dict[str, int] = field(default_factory=dict)
    left_float: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _QuantizedInput:
    tensor: str        # the uint8 tensor the DequantizeLinear reads
    scale: np.ndarray  # scalar
    scale_name: str
    zero_point_name: str


@dataclass(frozen=True)
class _QuantizedWeight:
    values: np.ndarray       # output channel first: [N, K] for matmuls, [N, C/g, kh, kw] for convs
    scale: np.ndarray        # [N] or scalar
    zero_point: np.ndarray   # [N] or scalar, same dtype as values


def lower_to_integer_kernels(model: onnx.ModelProto) -> LoweringReport:
    """Rewrite every 8-bit quantized Conv/MatMul/Gemm of ``model`` into an integer kernel, in place."""
    graph = OnnxGraph(model)
    report = LoweringReport()
    for node in graph.nodes("Conv", "MatMul", "Gemm"):
        if node.op_type == "Conv" and _fused_by_onnxruntime(graph, node):
            report.left_float[node.name] = "requantized output: onnxruntime fuses it into QLinearConv"
            continue
        quantized_input = _quantized_input(graph, node.input[0])
        weight = _quantized_weight(graph, node)
        reason = _why_not(node, quantized_input, weight)
        if reason:
            report.left_float[node.name] = reason
            continue
        op = _lower_conv(graph, node, quantized_input, weight) if node.op_type == "Conv" else \
            _lower_matmul(graph, node, quantized_input, weight)
        report.lowered[op] = report.lowered.get(op, 0) + 1
        graph.graph.node.remove(node)
    if report.lowered.get("MatMulIntegerToFloat") and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    graph.remove_unused()
    return report


def _fused_by_onnxruntime(graph: OnnxGraph, conv: onnx.NodeProto) -> bool:
    """``DQ(x), DQ(w), DQ(int32 b) -> Conv -> Q``: a requantized conv (``[deploy] requantize_conv_outputs``) that
    onnxruntime's QDQ optimizer turns into QLinearConv by itself, a faster kernel than ConvInteger."""
    consumers = graph.consumers(conv.output[0])
    return bool(consumers) and all(c.op_type == "QuantizeLinear" for c in consumers)


def _why_not(node: onnx.NodeProto, quantized_input: _QuantizedInput | None,
             weight: _QuantizedWeight | None) -> str:
    if quantized_input is None:
        return "input is not an 8-bit quantized tensor (float or 16-bit activation, or weight-only)"
    if weight is None:
        return "weight is not a constant 8-bit quantized tensor"
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm" and (attributes.get("transA", 0) or attributes.get("alpha", 1.0) != 1.0
                                   or attributes.get("beta", 1.0) != 1.0):
        return "Gemm with transA, alpha or beta"
    if node.op_type == "Conv" and np.unique(weight.zero_point).size > 1:
        return "per-channel weight zero points (ConvInteger takes one)"
    return ""


def _quantized_input(graph: OnnxGraph, name: str) -> _QuantizedInput | None:
    dq = graph.producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.domain != "" or len(dq.input) < 3:
        return None
    scale, zero_point = graph.constant(dq.input[1]), graph.constant(dq.input[2])
    if scale is None or zero_point is None or scale.size != 1 or zero_point.dtype != np.uint8:
        return None
    if graph.constant(dq.input[0]) is not None:
        return None   # a constant: that is a weight, not an activation
    return _QuantizedInput(dq.input[0], scale.astype(np.float32).reshape(()), dq.input[1], dq.input[2])


def _quantized_weight(graph: OnnxGraph, node: onnx.NodeProto) -> _QuantizedWeight | None:
    """The layer's constant quantized weight with output channels first, or None."""
    name = node.input[1]
    transposed = False
    producer = graph.producer.get(name)
    if node.op_type == "MatMul" and producer is not None and producer.op_type == "Transpose":
        perm = [a for a in producer.attribute if a.name == "perm"]
        if perm and list(perm[0].ints) != [1, 0]:
            return None
        name, transposed = producer.input[0], True
        producer = graph.producer.get(name)
    if producer is None or producer.op_type != "DequantizeLinear" or producer.domain != "" or len(producer.input) < 3:
        return None
    values, scale = graph.constant(producer.input[0]), graph.constant(producer.input[1])
    zero_point = graph.constant(producer.input[2])
    if values is None or scale is None or zero_point is None or values.dtype not in (np.int8, np.uint8):
        return None
    axis = next((a.i for a in producer.attribute if a.name == "axis"), 1)
    if node.op_type == "Conv":
        output_axis = 0
    elif node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        output_axis = 0 if trans_b else 1
    else:   # MatMul: B is [K, N]; behind a Transpose the stored tensor is [N, K]
        output_axis = 0 if transposed else 1
    if values.ndim != 2 and node.op_type != "Conv":
        return None
    if scale.size > 1 and axis % values.ndim != output_axis:
        return None   # per-channel along the reduction axis: no integer kernel takes that
    if output_axis == 1:
        values = values.T
    return _QuantizedWeight(np.ascontiguousarray(values), scale.astype(np.float32), zero_point)


def _lower_conv(graph: OnnxGraph, node: onnx.NodeProto, x: _QuantizedInput, weight: _QuantizedWeight) -> str:
    values, zero_point = weight.values, weight.zero_point.reshape(-1)[:1].reshape(())
    if values.dtype == np.int8:
        values, zero_point = to_uint8(values), to_uint8(zero_point)
    channels = values.shape[0]
    broadcast = (1, channels) + (1,) * (values.ndim - 2)
    scale = (x.scale * np.broadcast_to(weight.scale.reshape(-1), (channels,))).astype(np.float32)
    prefix = node.name or node.output[0]
    accumulator, as_float, scaled = (graph.unique_name(f"{prefix}/{part}") for part in ("acc", "acc_float", "scaled"))
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    nodes = [
        helper.make_node("ConvInteger", [x.tensor, graph.add_constant(values, f"{prefix}/weight_uint8"),
                                         x.zero_point_name, graph.add_constant(zero_point, f"{prefix}/weight_zp")],
                         [accumulator], name=f"{prefix}/ConvInteger", **attributes),
        helper.make_node("Cast", [accumulator], [as_float], name=f"{prefix}/Cast", to=onnx.TensorProto.FLOAT),
    ]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    scale_name = graph.add_constant(scale.reshape(broadcast), f"{prefix}/scale")
    if not bias:
        nodes.append(helper.make_node("Mul", [as_float, scale_name], [node.output[0]], name=f"{prefix}/Mul"))
    else:
        bias_value = graph.constant(bias)
        if bias_value is not None:
            bias_name = graph.add_constant(bias_value.astype(np.float32).reshape(broadcast), f"{prefix}/bias")
        else:
            bias_name = graph.unique_name(f"{prefix}/bias_reshaped")
            shape = graph.add_constant(np.array(broadcast, np.int64), f"{prefix}/bias_shape")
            nodes.append(helper.make_node("Reshape", [bias, shape], [bias_name], name=f"{prefix}/BiasReshape"))
        nodes.append(helper.make_node("Mul", [as_float, scale_name], [scaled], name=f"{prefix}/Mul"))
        nodes.append(helper.make_node("Add", [scaled, bias_name], [node.output[0]], name=f"{prefix}/Add"))
    _insert_before(graph, node, nodes)
    return "ConvInteger"


def _lower_matmul(graph: OnnxGraph, node: onnx.NodeProto, x: _QuantizedInput, weight: _QuantizedWeight) -> str:
    values, zero_point = weight.values, weight.zero_point
    if values.dtype == np.int8 and not int8_weight_is_safe(values):
        values, zero_point = to_uint8(values), to_uint8(zero_point)
    prefix = node.name or node.output[0]
    inputs = [x.tensor, graph.add_constant(np.ascontiguousarray(values.T), f"{prefix}/weight_kn"), x.scale_name,
              graph.add_constant(weight.scale, f"{prefix}/weight_scale"), x.zero_point_name,
              graph.add_constant(zero_point, f"{prefix}/weight_zp")]
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
        inputs.append(node.input[2])
    _insert_before(graph, node, [helper.make_node("MatMulIntegerToFloat", inputs, [node.output[0]],
                                                  name=f"{prefix}/MatMulIntegerToFloat", domain=MS_DOMAIN)])
    return "MatMulIntegerToFloat"


def _insert_before(graph: OnnxGraph, anchor: onnx.NodeProto, nodes: list[onnx.NodeProto]) -> None:
    """Insert ``nodes`` where ``anchor`` stands, keeping the node list topologically sorted."""
    position = list(graph.graph.node).index(anchor)
    for offset, node in enumerate(nodes):
        graph.graph.node.insert(position + offset, node)
