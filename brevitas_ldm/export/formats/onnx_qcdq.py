"""``onnx-qcdq``: portable ONNX Q/DQ (Brevitas' ``export_onnx_qcdq``; int16 Q/DQ in onnxruntime's ``com.microsoft``
domain for 16-bit activations), with weights stored so every onnxruntime integer kernel is exact on every x86 kind
(``weight_storage="portable"``, :mod:`brevitas_ldm.export.x86_storage`)."""

from __future__ import annotations

from brevitas_ldm.export.formats._onnx import OnnxruntimeFormat
from brevitas_ldm.registry import EXPORT_FORMATS


class OnnxQcdq(OnnxruntimeFormat):
    name = "onnx-qcdq"
    alternative = "fmt='qonnx' (exact bit widths, not runnable in onnxruntime)"


EXPORT_FORMATS.register(OnnxQcdq())
