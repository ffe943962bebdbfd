"""Would quantizing the attention products (QK^T, AV) speed up the SD-shaped UNet in onnxruntime on CPU?

Times one activation x activation ``MatMul`` at the attention shapes of the half-width SD-1.5 UNet of
``benchmarks/deployment.py`` (8 heads; 1024 tokens with head dim 20, 256 tokens with head dim 40) in three forms,
each as its own small ONNX graph run with :func:`brevitas_ldm.export.session_options`:

* float ``MatMul``;
* ``Q -> DQ`` on both inputs ``-> MatMul`` (onnxruntime fuses it into ``MatMulIntegerToFloat``);
* the same followed by ``Q -> DQ`` on the output (fused into ``QLinearMatMul``).

Prints the median latency of each form relative to the float one and the kernels onnxruntime chose.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from brevitas_ldm.export import cpu_info, integer_kernel_counts, session_options  # noqa: E402

SHAPES = {"QK^T, 1024 tokens": ([8, 1024, 20], [8, 20, 1024]), "AV, 1024 tokens": ([8, 1024, 1024], [8, 1024, 20]),
          "QK^T, 256 tokens": ([8, 256, 40], [8, 40, 256]), "AV, 256 tokens": ([8, 256, 256], [8, 256, 40])}
FORMS = ("float", "int8 inputs", "int8 inputs and output")


def product_graph(form: str, shape_a: list[int], shape_b: list[int]) -> bytes:
    nodes, a, b = [], "a", "b"
    initializers = [helper.make_tensor("scale", TensorProto.FLOAT, [], [0.02]),
                    helper.make_tensor("zero", TensorProto.UINT8, [], [128])]
    if form != "float":
        for name in ("a", "b"):
            nodes += [helper.make_node("QuantizeLinear", [name, "scale", "zero"], [f"q{name}"]),
                      helper.make_node("DequantizeLinear", [f"q{name}", "scale", "zero"], [f"d{name}"])]
        a, b = "da", "db"
    output = "product" if form == "int8 inputs and output" else "y"
    nodes.append(helper.make_node("MatMul", [a, b], [output]))
    if form == "int8 inputs and output":
        nodes += [helper.make_node("QuantizeLinear", ["product", "scale", "zero"], ["qy"]),
                  helper.make_node("DequantizeLinear", ["qy", "scale", "zero"], ["y"])]
    graph = helper.make_graph(nodes, "product", [helper.make_tensor_value_info("a", TensorProto.FLOAT, shape_a),
                                                 helper.make_tensor_value_info("b", TensorProto.FLOAT, shape_b)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return model.SerializeToString()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print(f"CPU: {cpu_info().describe()}; onnx {onnx.__version__}")
    print("| product | threads | " + " | ".join(f"{f} / float" for f in FORMS[1:]) + " | kernels |")
    print("|---|---:|" + "---:|" * (len(FORMS) - 1) + "---|")
    for label, (shape_a, shape_b) in SHAPES.items():
        feeds = {"a": rng.standard_normal(shape_a, dtype=np.float32),
                 "b": rng.standard_normal(shape_b, dtype=np.float32)}
        for threads in args.threads:
            median_ms, kernels = {}, []
            for form in FORMS:
                graph = product_graph(form, shape_a, shape_b)
                session = ort.InferenceSession(graph, session_options(threads), providers=["CPUExecutionProvider"])
                for _ in range(3):
                    session.run(None, feeds)
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    session.run(None, feeds)
                    times.append(time.perf_counter() - start)
                median_ms[form] = statistics.median(times) * 1e3
                if form != "float" and threads == args.threads[0]:
                    with tempfile.TemporaryDirectory() as tmp:
                        path = Path(tmp) / "product.onnx"
                        path.write_bytes(graph)
                        kernels.append(", ".join(integer_kernel_counts(path)["integer"]))
            ratios = " | ".join(f"{median_ms[f] / median_ms['float']:.2f}" for f in FORMS[1:])
            print(f"| {label} | {threads} | {ratios} | {'; '.join(kernels)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
