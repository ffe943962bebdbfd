"""What the ONNX formats share: the integer-storage limits of ONNX Q/DQ files, and verification and timing in
onnxruntime against an FP32 ONNX twin."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.export.formats.base import ExportFormat


def check_integer_qdq(name: str, features: Mapping[str, Any], opset: int) -> None:
    """The limits of integer Q/DQ files (onnxruntime's and OpenVINO's): FP8 needs opset 19, weights are int8,
    activations int8 or int16."""
    fp8 = features["fp8"]
    if fp8 and opset < 19:
        raise BrevitasLDMError(f"{fp8[0]} uses FP8 quantization, which needs FP8 QuantizeLinear (opset 19): "
                               f"pass opset=19 or 20, or export with fmt='qonnx'")
    if max(features["weight_bits"], default=0) > 8:
        raise BrevitasLDMError(f"{name} stores weights as int8 but the denoiser has "
                               f"{max(features['weight_bits'])}-bit weights: export with fmt='qonnx' or "
                               f"fmt='torch-qcdq'")
    odd = sorted(b for b in features["act_bits"] if 8 < b < 16 or b > 16)
    if odd:
        raise BrevitasLDMError(f"{name} stores activations as int8 (up to 8 bits) or int16 (16 bits); the "
                               f"denoiser has {odd[0]}-bit activations: plan them as a8 or a16, or export with "
                               f"fmt='qonnx'")


class OnnxruntimeFormat(ExportFormat):
    """An ONNX file onnxruntime runs: verified there (and under ``--emulate-cpu``), its kernels counted, timed."""

    runtime = "onnxruntime"
    #: Whether every 8-bit Conv/Linear is lowered to onnxruntime's integer kernels.
    integer_kernels = False

    def check(self, features, opset) -> None:
        check_integer_qdq(self.name, features, opset)

    def write(self, denoiser, example_inputs, path, opset, weight_storage, features) -> Path:
        from brevitas_ldm.export.exporters import brevitas_export, export_onnx_qcdq_file, rewrite_for_onnxruntime

        def write_file(wrapper, names, tensors, tmp: Path) -> None:
            export_onnx_qcdq_file(wrapper, names, tensors, tmp, opset, wide=max(features["act_bits"], default=0) > 8,
                                  fp8=bool(features["fp8"]))
            rewrite_for_onnxruntime(tmp, integer_kernels=self.integer_kernels, portable=weight_storage == "portable")

        return brevitas_export(self, denoiser, example_inputs, path, write_file)

    def verify(self, summary, path, denoiser, fresh, min_sqnr_db, emulate_cpu, weight_storage) -> None:
        from brevitas_ldm.export.runtime import integer_kernel_counts, onnx_latency, verify_onnx

        summary["weight_storage"] = weight_storage
        self.record_agreement(summary, lambda emulate_cpu: verify_onnx(path, denoiser, fresh, emulate_cpu=emulate_cpu),
                              min_sqnr_db, emulate_cpu)
        summary["kernels"] = integer_kernel_counts(path)
        summary["latency"] = onnx_latency(path, fresh)

    def write_layer(self, module, example_input, path, opset) -> Path:
        from brevitas_ldm.export.exporters import export_layer_qcdq, rewrite_for_onnxruntime

        def rewrite(tmp: Path) -> None:
            rewrite_for_onnxruntime(tmp, integer_kernels=self.integer_kernels, portable=True)

        return export_layer_qcdq(module, example_input, path, opset, rewrite)

    def write_float(self, float_denoiser, float_inputs, path, opset) -> Path:
        from brevitas_ldm.export.exporters import export_float_onnx

        return export_float_onnx(float_denoiser, float_inputs, path, opset=opset)

    def runner(self, path, inputs, threads):
        from brevitas_ldm.export.runtime import OUTPUT_NAME, _feeds, _run, _session

        session = _session(path, threads)
        feeds = _feeds(session, inputs)
        _run(session, feeds, path)      # a wrong input fails here, in one line, not inside a timing loop
        return lambda: session.run([OUTPUT_NAME], feeds)

    def float_baseline(self, summary, float_denoiser, float_inputs, fresh, staging, opset) -> None:
        from brevitas_ldm.export.runtime import onnx_latency

        float_path = self.write_float(float_denoiser, float_inputs, staging / "denoiser_fp32.onnx", opset)
        summary["fp32"] = {"size_bytes": float_path.stat().st_size, "latency": onnx_latency(float_path, fresh)}
        summary["size_ratio"] = summary["size_bytes"] / summary["fp32"]["size_bytes"]
        summary["latency_ratio"] = summary["latency"]["median_ms"] / summary["fp32"]["latency"]["median_ms"]
