"""``openvino-cpu``: the ``--format openvino`` IR in OpenVINO's CPU plugin, float layers at f32. Layers with 8-bit
or narrower integer weights and activations run as u8/i8 Convolution/FullyConnected kernels; 16-bit activations
are read as 65536-level quantization and run in float with int8 weights decompressed."""

from __future__ import annotations

from brevitas_ldm.planning.latency_targets.base import LatencyTarget
from brevitas_ldm.registry import LATENCY_TARGETS


class OpenVinoCpu(LatencyTarget):
    name = "openvino-cpu"
    export_format = "openvino"
    runtime = "openvino"


LATENCY_TARGETS.register(OpenVinoCpu())
