"""``qonnx``: ONNX with Brevitas/QONNX ``Quant`` custom ops that keep arbitrary bit widths exactly
(``export_qonnx``); onnxruntime cannot execute them (the qonnx/FINN tools can), so nothing verifies it here."""

from __future__ import annotations

from brevitas_ldm.export.formats.base import ExportFormat
from brevitas_ldm.registry import EXPORT_FORMATS


class Qonnx(ExportFormat):
    name = "qonnx"

    def write(self, denoiser, example_inputs, path, opset, weight_storage, features):
        from brevitas.export import export_qonnx

        from brevitas_ldm.export.exporters import brevitas_export, onnx_kwargs

        def write_file(wrapper, names, tensors, tmp) -> None:
            export_qonnx(wrapper, tensors, export_path=str(tmp), keep_initializers_as_inputs=False,
                         **onnx_kwargs(names, tensors, opset))

        return brevitas_export(self, denoiser, example_inputs, path, write_file)

    def float_baseline(self, summary, float_denoiser, float_inputs, fresh, staging, opset) -> None:
        """The FP32 ONNX twin, for size only (no runtime here executes the QONNX file to time it)."""
        from brevitas_ldm.export.exporters import export_float_onnx

        float_path = export_float_onnx(float_denoiser, float_inputs, staging / "denoiser_fp32.onnx", opset=opset)
        summary["fp32"] = {"size_bytes": float_path.stat().st_size}


EXPORT_FORMATS.register(Qonnx())
