"""Reading exported ONNX files: which Q/DQ types they hold and which layers they quantize.

Pure ONNX (no torch, no onnxruntime session): what the file says, layer by layer, so tests and ``export.json``
can check that a plan's mixed precision survived the export.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from brevitas_ldm.export.x86_storage import int8_weight_is_safe


def tensor_types(model) -> dict[str, int]:
    """Element type of every initializer, Constant output and typed value in the graph."""
    types = {init.name: init.data_type for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            types[node.output[0]] = node.attribute[0].t.data_type
    for info in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if info.type.HasField("tensor_type"):
            types.setdefault(info.name, info.type.tensor_type.elem_type)
    return types


def qdq_type_source(node) -> str:
    """The tensor whose element type is the integer type of a Q/DQ node (its zero point)."""
    return node.input[2] if len(node.input) > 2 and node.input[2] else ""


def _type_name(elem_type: int | None) -> str:
    import onnx

    if elem_type is None or elem_type == onnx.TensorProto.UNDEFINED:
        return "unknown"
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name


_PASS_THROUGH = {"Transpose", "Reshape", "Identity", "Unsqueeze", "Squeeze", "Flatten", "Clip", "Cast"}


def onnx_quant_summary(path: str | Path) -> dict[str, Any]:
    """Count Q/DQ nodes by integer type and tell, for every Conv/MatMul/Gemm, whether its inputs are quantized.

    Returns ``{"quantize": {"int8": n, ...}, "dequantize": {...}, "nodes": [...], "layers": {...}}`` where each
    node entry is ``{"name", "op", "layer", "input", "weight"}``: ``input``/``weight`` are the integer type of the
    DequantizeLinear feeding that operand (``None`` when it is float) and ``layer`` the torch module path derived
    from the node's scope. ``layers`` maps the layer of every node with a constant weight (Linear/Conv) to
    ``{"input": ..., "weight": ...}`` so tests can check a plan's mixed precision.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    types = tensor_types(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    constants = {init.name for init in model.graph.initializer}
    constants |= {node.output[0] for node in model.graph.node if node.op_type == "Constant"}

    def qdq_type(node) -> str:
        source = qdq_type_source(node)
        if source:
            return _type_name(types.get(source))
        attr = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
        if node.op_type == "QuantizeLinear":
            return _type_name(attr or onnx.TensorProto.UINT8)
        return _type_name(types.get(node.input[0])) if node.input[0] in types else "unknown"

    def trace(tensor: str) -> tuple[str | None, bool]:
        """(integer type of the DequantizeLinear behind ``tensor`` or None, whether it is a constant)."""
        for _ in range(16):
            node = producer.get(tensor)
            if node is None:
                return None, tensor in constants
            if node.op_type == "DequantizeLinear":
                source = node.input[0]
                while source in producer and producer[source].op_type in _PASS_THROUGH | {"QuantizeLinear"}:
                    if producer[source].op_type == "QuantizeLinear":
                        return qdq_type(node), False
                    source = producer[source].input[0]
                return qdq_type(node), source in constants
            if node.op_type == "Constant":
                return None, True
            if node.op_type not in _PASS_THROUGH:
                return None, False
            tensor = node.input[0]
        return None, False

    quantize, dequantize = Counter(), Counter()
    nodes, layers = [], {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            quantize[qdq_type(node)] += 1
        elif node.op_type == "DequantizeLinear":
            dequantize[qdq_type(node)] += 1
        elif node.op_type in ("Conv", "MatMul", "Gemm"):
            input_type, _ = trace(node.input[0])
            weight_type, weight_constant = trace(node.input[1])
            layer = _layer_from_scope(node.name)
            entry = {"name": node.name, "op": node.op_type, "layer": layer, "input": input_type,
                     "weight": weight_type}
            nodes.append(entry)
            if weight_constant and layer is not None:
                layers.setdefault(layer, {"input": input_type, "weight": weight_type})
    return {"quantize": dict(quantize), "dequantize": dict(dequantize), "nodes": nodes, "layers": layers}


def _layer_from_scope(node_name: str) -> str | None:
    """``/denoiser/down_blocks.0/resnets.0/conv1/Conv`` -> ``down_blocks.0.resnets.0.conv1``."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) < 3:
        return None
    return ".".join(parts[1:-1])


def overflowing_int8_weights(path: str | Path) -> int:
    """How many constant int8 weight tensors behind a DequantizeLinear exceed ``|q| <= 64``.

    Those are the ones onnxruntime's AVX2 u8s8 kernel can saturate (see :mod:`.x86_storage`); a file written with
    the portable weight storage has none.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name: init for init in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    seen, count = set(), 0
    for node in model.graph.node:
        if node.op_type not in ("DequantizeLinear", "MatMulIntegerToFloat", "ConvInteger", "MatMulInteger"):
            continue
        source = node.input[1] if node.op_type in ("ConvInteger", "MatMulInteger", "MatMulIntegerToFloat") \
            else node.input[0]
        if source in producer and producer[source].op_type == "Clip":
            source = producer[source].input[0]
        if source in seen or source not in initializers or initializers[source].data_type != onnx.TensorProto.INT8:
            continue
        seen.add(source)
        count += int(not int8_weight_is_safe(numpy_helper.to_array(initializers[source])))
    return count
