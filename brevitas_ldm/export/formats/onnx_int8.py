"""``onnx-int8``: the ``onnx-qcdq`` file with every 8-bit Conv/Linear lowered to onnxruntime's integer kernels
(ConvInteger, MatMulIntegerToFloat; :mod:`brevitas_ldm.export.integer_kernels`), the same model exactly."""

from __future__ import annotations

from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.export.formats._onnx import OnnxruntimeFormat
from brevitas_ldm.registry import EXPORT_FORMATS


class OnnxInt8(OnnxruntimeFormat):
    name = "onnx-int8"
    integer_kernels = True

    def check_weight_storage(self, weight_storage: str) -> None:
        super().check_weight_storage(weight_storage)
        if weight_storage != "portable":
            raise BrevitasLDMError("onnx-int8 needs weight_storage='portable' (--weight-storage portable; "
                                   "onnxruntime's integer conv kernel is fast only on uint8 weights): drop it or "
                                   "export onnx-qcdq")


EXPORT_FORMATS.register(OnnxInt8())
