"""``onnxruntime-cpu``: the ``--format onnx-int8`` file in onnxruntime's CPU provider. Layers with 8-bit or narrower
integer weights and activations run as ConvInteger/MatMulIntegerToFloat (QLinearConv where the recipe requantizes
conv outputs); 16-bit activations run as com.microsoft int16 Q/DQ around a float layer."""

from __future__ import annotations

from brevitas_ldm.planning.latency_targets.base import LatencyTarget
from brevitas_ldm.registry import LATENCY_TARGETS


class OnnxruntimeCpu(LatencyTarget):
    name = "onnxruntime-cpu"
    export_format = "onnx-int8"
    runtime = "onnxruntime"


LATENCY_TARGETS.register(OnnxruntimeCpu())
