"""The onnxruntime session options every exported file is run with, in a module that imports neither torch nor
the rest of the package, so the emulated-CPU worker (:mod:`.emulation`) builds exactly the same session.
"""

from __future__ import annotations

import os

import onnxruntime as ort

#: Name of the exported graph's output tensor.
OUTPUT_NAME = "denoiser_output"


def session_options(threads: int | None = None):
    """The one set of onnxruntime options every model is run with (so latencies are comparable).

    All graph optimizations on, sequential execution, ``threads`` intra-op threads (default: all cores), and
    ``session.qdq_matmulnbits_accuracy_level = 1``: with its default (4), onnxruntime rewrites a
    ``DequantizeLinear(int8 weight) -> MatMul`` whose activation is *not* quantized (weight-only or 16-bit
    activation layers) into ``MatMulNBits`` that quantizes the activation to int8 on the fly, silently replacing the
    plan's 16-bit/float activation by int8 (measured: W8A16 DiT block, 47 dB instead of 138 dB vs torch). Level 1
    keeps that product in fp32. Deployments running these files should set the same entry.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = int(threads) if threads else (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return options
