"""A small editable view of an ONNX graph for the project's own graph passes.

The passes (:mod:`.x86_storage`, :mod:`.integer_kernels`) read constants behind Q/DQ nodes, add initializers and
rewire inputs; this view keeps the producer map and the constant table in one place and removes what a pass left
unused, so neither pass walks ``model.graph`` by hand. Only the main graph is rewritten; names that subgraphs
(``If``/``Loop`` bodies) read from the outer scope count as used.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper


class OnnxGraph:
    """Producers, constants and name-unique initializers of ``model.graph``; edits go straight into ``model``."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self._taken = {init.name for init in self.graph.initializer}
        self._taken |= {out for node in self.graph.node for out in node.output}
        self._taken |= {value.name for value in self.graph.input}
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the producer map and the constant table after nodes were added or removed."""
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.initializers = {init.name: init for init in self.graph.initializer}

    def nodes(self, *op_types: str, domain: str = "") -> Iterator[onnx.NodeProto]:
        """Main-graph nodes of the given op types in ``domain`` (a snapshot: safe to edit while iterating)."""
        return iter([node for node in self.graph.node if node.op_type in op_types and node.domain == domain])

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or ``Constant`` node output, or None when ``name`` is computed."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    return numpy_helper.to_array(attribute.t)
        return None

    def add_constant(self, value: np.ndarray, hint: str) -> str:
        """Add ``value`` as a new initializer named after ``hint`` and return its (unique) name."""
        name = self.unique_name(hint)
        tensor = numpy_helper.from_array(np.asarray(value), name)
        self.graph.initializer.append(tensor)
        self.initializers[name] = tensor
        return name

    def unique_name(self, hint: str) -> str:
        """A tensor or node name not used anywhere in the graph yet."""
        name, index = hint, 0
        while name in self._taken:
            index += 1
            name = f"{hint}_{index}"
        self._taken.add(name)
        return name

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return [node for node in self.graph.node if name in node.input]

    def remove_unused(self) -> int:
        """Drop nodes whose outputs nothing reads and initializers nothing reads; returns how many nodes went."""
        outputs = {value.name for value in self.graph.output}
        removed = 0
        while True:
            used = outputs | _subgraph_reads(self.graph)
            for node in self.graph.node:
                used.update(node.input)
            dead = [node for node in self.graph.node if not any(out in used for out in node.output if out)]
            if not dead:
                break
            for node in dead:
                self.graph.node.remove(node)
            removed += len(dead)
        used = outputs | _subgraph_reads(self.graph)
        for node in self.graph.node:
            used.update(node.input)
        for init in [init for init in self.graph.initializer if init.name not in used]:
            self.graph.initializer.remove(init)
        self.refresh()
        return removed


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Every name read by nodes inside subgraphs of ``graph``'s nodes (outer-scope reads included)."""
    names: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            subgraphs = list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else [])
            for sub in subgraphs:
                for inner in sub.node:
                    names.update(inner.input)
                names |= _subgraph_reads(sub)
    return names
