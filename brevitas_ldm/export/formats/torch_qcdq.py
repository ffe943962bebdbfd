"""``torch-qcdq``: a TorchScript trace with Brevitas' Q/DQ structure in torch ops (``export_torch_qcdq``), loaded with
``torch.jit.load`` and called with positional tensors; verified in torch."""

from __future__ import annotations

from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.export.formats.base import ExportFormat
from brevitas_ldm.registry import EXPORT_FORMATS


class TorchQcdq(ExportFormat):
    name = "torch-qcdq"
    suffix = "pt"
    uses_opset = False

    def check(self, features, opset) -> None:
        if features["fp8"]:
            raise BrevitasLDMError(f"{features['fp8'][0]} uses FP8 quantization, which Brevitas' torch-qcdq export "
                                   f"does not support (torch has no FP8 quantize ops): use fmt='onnx-qcdq' with "
                                   f"opset=19 or fmt='qonnx'")
        if features["unsigned_wide_act"]:
            raise BrevitasLDMError(f"{features['unsigned_wide_act'][0]} has unsigned activations above 8 bits, "
                                   f"which torch-qcdq cannot store (torch only has quint8): use fmt='onnx-qcdq' or "
                                   f"symmetric activations")

    def write(self, denoiser, example_inputs, path, opset, weight_storage, features):
        from brevitas.export import export_torch_qcdq

        from brevitas_ldm.export.exporters import brevitas_export

        def write_file(wrapper, names, tensors, tmp) -> None:
            export_torch_qcdq(wrapper, tensors, export_path=str(tmp))

        return brevitas_export(self, denoiser, example_inputs, path, write_file)

    def verify(self, summary, path, denoiser, fresh, min_sqnr_db, emulate_cpu, weight_storage) -> None:
        from brevitas_ldm.export.runtime import verify_torchscript

        summary["verification"] = verify_torchscript(path, denoiser, fresh)


EXPORT_FORMATS.register(TorchQcdq())
