"""Fold the ``If`` nodes that the TorchScript exporter emits for ``squeeze(dim)`` on a dimension it could not size.

``tensor.squeeze(1)`` only squeezes when dimension 1 has size 1, so when the exporter does not know that size it
writes ``If(Equal(Gather(Shape(x), 1), 1), then=Squeeze, else=Identity)``. PixArt's transformer ends with such a
squeeze, and onnxruntime cannot load the result: its type inference needs both branches to agree on the rank
("Node (/denoiser/If) Op (If) [TypeInferenceError] Graph attribute inferencing failed"). Only the batch axis of an
exported denoiser is dynamic, so shape inference knows the size the condition tests; this pass evaluates the
condition and splices the taken branch into the main graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Inferred tensor shapes: onnxruntime's symbolic shape inference, which knows its com.microsoft Q/DQ ops (the
    16-bit activations of a hybrid plan), else ONNX's own."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # noqa: BLE001 - any failure there leaves ONNX's inference, which never raises on unknowns
        inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    shapes = {}
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
    return values


def _dimension_test(cond: str, producers: dict[str, onnx.NodeProto], constants: dict[str, np.ndarray],
                    shapes: dict[str, list[int | None]]) -> bool | None:
    """The value of ``cond`` when it is ``Equal(Gather(Shape(x), i), c)`` with x's dimension i known, else None."""
    equal = producers.get(cond)
    if equal is None or equal.op_type != "Equal":
        return None
    for size_name, constant_name in (equal.input, tuple(reversed(equal.input))):
        gather = producers.get(size_name)
        if gather is None or gather.op_type != "Gather" or constant_name not in constants:
            continue
        shape = producers.get(gather.input[0])
        if shape is None or shape.op_type != "Shape" or gather.input[1] not in constants:
            continue
        if any(a.name in ("start", "end") for a in shape.attribute):
            continue
        dims = shapes.get(shape.input[0])
        index = int(constants[gather.input[1]].reshape(-1)[0])
        if dims is None or not -len(dims) <= index < len(dims) or dims[index] is None:
            continue
        return bool(dims[index] == int(constants[constant_name].reshape(-1)[0]))
    return None


def fold_static_shape_ifs(model: onnx.ModelProto) -> int:
    """Replace every ``If`` whose condition tests a statically known dimension by its taken branch, in place;
    returns how many were folded."""
    graph = model.graph
    shapes = _static_shapes(model)
    constants = _constants(graph)
    producers = {output: node for node in graph.node for output in node.output}
    folded = 0
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        taken = _dimension_test(node.input[0], producers, constants, shapes) if node.op_type == "If" else None
        if taken is None:
            new_nodes.append(node)
            continue
        branch = next(a.g for a in node.attribute if a.name == ("then_branch" if taken else "else_branch"))
        new_nodes.extend(branch.node)
        for branch_output, if_output in zip(branch.output, node.output):
            new_nodes.append(onnx.helper.make_node("Identity", [branch_output.name], [if_output],
                                                   name=f"{node.name}/taken_{'then' if taken else 'else'}"))
        folded += 1
    if folded:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return folded
