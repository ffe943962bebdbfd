"""``openvino``: OpenVINO IR (``.xml`` + ``.bin``) in the form OpenVINO's low-precision transformations run as integer
Convolution/FullyConnected kernels (:mod:`brevitas_ldm.export.openvino_ir`), verified in OpenVINO at f32 and timed
at f32 and at its default inference precision (:mod:`brevitas_ldm.export.openvino_runtime`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.export.formats._onnx import check_integer_qdq
from brevitas_ldm.export.formats.base import ExportFormat
from brevitas_ldm.registry import EXPORT_FORMATS


class OpenVino(ExportFormat):
    name = "openvino"
    suffix = "xml"
    runtime = "openvino"

    def check(self, features, opset) -> None:
        if features["fp8"]:
            raise BrevitasLDMError(f"{features['fp8'][0]} uses FP8 quantization, which the openvino export does not "
                                   f"write (OpenVINO reads FP8 Q/DQ only as float): export with fmt='onnx-qcdq' and "
                                   f"opset=19")
        check_integer_qdq(self.name, features, opset)

    def write(self, denoiser, example_inputs, path, opset, weight_storage, features) -> Path:
        """The QCDQ file with int8 weights (the only weights OpenVINO's integer convolutions take, so
        ``weight_storage`` does not apply), converted to IR; attention's scale traced as a constant
        (:mod:`~brevitas_ldm.export.attention_scale`), so 8-bit queries and keys meet an integer MatMul."""
        from brevitas_ldm.export.attention_scale import constant_attention_scale
        from brevitas_ldm.export.exporters import export_denoiser
        from brevitas_ldm.export.openvino_ir import onnx_to_openvino_ir

        with tempfile.TemporaryDirectory(prefix="brevitas-ldm-openvino-") as tmp, constant_attention_scale():
            qcdq = export_denoiser(denoiser, example_inputs, Path(tmp) / "qcdq.onnx", fmt="onnx-qcdq", opset=opset,
                                   weight_storage="int8")
            return onnx_to_openvino_ir(qcdq, path)

    def write_layer(self, module, example_input, path, opset) -> Path:
        """The layer's QCDQ file with int8 weights, converted the way :meth:`write` converts the denoiser's."""
        from brevitas_ldm.export.exporters import export_layer_qcdq
        from brevitas_ldm.export.openvino_ir import onnx_to_openvino_ir

        with tempfile.TemporaryDirectory(prefix="brevitas-ldm-openvino-layer-") as tmp:
            qcdq = export_layer_qcdq(module, example_input, Path(tmp) / "layer.onnx", opset, None)
            return onnx_to_openvino_ir(qcdq, path)

    def write_float(self, float_denoiser, float_inputs, path, opset) -> Path:
        from brevitas_ldm.export.exporters import export_float_onnx
        from brevitas_ldm.export.openvino_ir import onnx_to_openvino_ir

        with tempfile.TemporaryDirectory(prefix="brevitas-ldm-fp32-") as tmp:
            onnx_path = export_float_onnx(float_denoiser, float_inputs, Path(tmp) / "fp32.onnx", opset=opset)
            return onnx_to_openvino_ir(onnx_path, path)

    def runner(self, path, inputs, threads):
        """At f32, the precision the analysis measured (:data:`~brevitas_ldm.planning.latency_targets.base.
        LatencyTarget.inference_precision`)."""
        from brevitas_ldm.export.openvino_runtime import _feeds, _run, compile_ir

        compiled = compile_ir(path, threads, "f32")
        request = compiled.create_infer_request()
        feeds = _feeds(compiled, inputs)
        _run(request, feeds, path)
        return lambda: request.infer(feeds)

    def verify(self, summary, path, denoiser, fresh, min_sqnr_db, emulate_cpu, weight_storage) -> None:
        """Verify the IR in OpenVINO at f32 (natively and, with ``emulate_cpu``, with AVX2 kernels; refused below
        the bound on either), then count its integer kernels and time it."""
        from brevitas_ldm.export.openvino_ir import ir_size_bytes
        from brevitas_ldm.export.openvino_runtime import (
            openvino_kernel_counts,
            openvino_latency,
            openvino_version,
            verify_openvino,
        )
        from brevitas_ldm.export.wrapper import export_signature

        self.record_agreement(summary, lambda emulate_cpu: verify_openvino(path, denoiser, fresh,
                                                                           emulate_cpu=emulate_cpu),
                              min_sqnr_db, emulate_cpu)
        summary["size_bytes"] = ir_size_bytes(path)
        summary["weights_bytes"] = path.with_suffix(".bin").stat().st_size
        summary["openvino"] = openvino_version()
        summary["weight_storage"] = "int8"
        summary["kernels"] = openvino_kernel_counts(path)
        names, tensors = export_signature(denoiser, fresh)
        summary["latency"] = openvino_latency(path, dict(zip(names, tensors)))
        summary["latency_default_precision"] = openvino_latency(path, dict(zip(names, tensors)), precision=None)

    def float_baseline(self, summary, float_denoiser, float_inputs, fresh, staging, opset) -> None:
        """The FP32 denoiser as OpenVINO IR beside the quantized one, timed the same way (f32)."""
        from brevitas_ldm.export.openvino_ir import ir_size_bytes
        from brevitas_ldm.export.openvino_runtime import openvino_latency
        from brevitas_ldm.export.wrapper import export_signature

        float_path = self.write_float(float_denoiser, float_inputs, staging / "denoiser_fp32.xml", opset)
        names, tensors = export_signature(float_denoiser, fresh)
        summary["fp32"] = {"size_bytes": ir_size_bytes(float_path),
                           "weights_bytes": float_path.with_suffix(".bin").stat().st_size,
                           "latency": openvino_latency(float_path, dict(zip(names, tensors)))}
        summary["size_ratio"] = summary["size_bytes"] / summary["fp32"]["size_bytes"]
        # the .xml (the graph) is a large share of a tiny model's IR and a negligible one of a real model's
        summary["weights_ratio"] = summary["weights_bytes"] / summary["fp32"]["weights_bytes"]
        summary["latency_ratio"] = summary["latency"]["median_ms"] / summary["fp32"]["latency"]["median_ms"]

    def written(self, path, summary) -> str:
        return f"wrote {path} + .bin ({summary['size_bytes']:,} bytes)"


EXPORT_FORMATS.register(OpenVino())
