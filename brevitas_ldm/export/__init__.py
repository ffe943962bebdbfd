"""Deployment path: export a quantized denoiser through Brevitas and check the file in onnxruntime.

Five formats, all written by Brevitas' own export managers, registered by name in :data:`EXPORT_FORMATS` (one module
per format in :mod:`.formats`; a new format is one new module there, or ``EXPORT_FORMATS.register`` from yours):

* ``onnx-qcdq`` (:func:`brevitas.export.export_onnx_qcdq`): ONNX where every quantized layer input is
  ``QuantizeLinear -> (Clip) -> DequantizeLinear`` and every quantized weight an integer initializer followed by
  ``DequantizeLinear``; standard ONNX ops only (8-bit files). Weights are stored so that every integer kernel
  onnxruntime can pick is exact on every x86 kind (:mod:`.x86_storage`).
* ``onnx-int8``: the same file with every 8-bit Conv/Linear lowered to onnxruntime's integer kernels
  (:mod:`.integer_kernels`), the same model exactly, and the deployment format for speed.
* ``openvino``: the ``onnx-qcdq`` graph with int8 weights as OpenVINO IR, in the form OpenVINO's low-precision
  transformations run as integer Convolution/FullyConnected kernels (:mod:`.openvino_ir`; run, verified and timed
  by :mod:`.openvino_runtime`); :func:`write_openvino_pipeline` (:mod:`.openvino_pipeline`, ``export --pipeline``)
  writes the whole StableDiffusionPipeline around it as the folder optimum-intel's ``OVDiffusionPipeline`` loads.
* ``torch-qcdq`` (:func:`brevitas.export.export_torch_qcdq`): a TorchScript trace with the same Q/DQ structure in
  torch ops; load with ``torch.jit.load`` and call with positional tensors.
* ``qonnx`` (:func:`brevitas.export.export_qonnx`): ONNX with Brevitas/QONNX ``Quant`` custom ops that keep
  arbitrary bit widths exactly; onnxruntime cannot execute them (the ``qonnx``/FINN tools can).

One concept per module: :mod:`.wrapper` (positional front, input capture), :mod:`.features` (what the model holds,
which formats take it), :mod:`.wide_qcdq` (16-bit activations), :mod:`.exporters` (writing files),
:mod:`.x86_storage` and :mod:`.integer_kernels` (the project's graph passes), :mod:`.inspection` (reading files),
:mod:`.session` (onnxruntime options), :mod:`.runtime` (running, verifying, timing), :mod:`.cpu` (which CPU a
figure comes from) and :mod:`.emulation` (running on an emulated CPU kind).
"""

from brevitas_ldm.export.cpu import CpuInfo, cpu_info
from brevitas_ldm.export.emulation import emulator_available, run_onnx_emulated
from brevitas_ldm.export.exporters import export_denoiser, export_float_onnx
from brevitas_ldm.export.features import quant_features
from brevitas_ldm.export.inspection import onnx_quant_summary, overflowing_int8_weights
from brevitas_ldm.export.integer_kernels import (
    INTEGER_KERNELS,
    lower_to_integer_kernels,
)
from brevitas_ldm.export.openvino_ir import onnx_to_openvino_ir
from brevitas_ldm.export.openvino_pipeline import write_openvino_pipeline
from brevitas_ldm.export.openvino_runtime import (
    openvino_kernel_counts,
    openvino_latency,
    verify_openvino,
)
from brevitas_ldm.export.runtime import (
    ExportMismatchError,
    check_agreement,
    integer_kernel_counts,
    onnx_latency,
    verify_onnx,
    verify_torchscript,
)
from brevitas_ldm.export.session import OUTPUT_NAME, session_options
from brevitas_ldm.export.wide_qcdq import MS_DOMAIN
from brevitas_ldm.export.wrapper import (
    DenoiserForExport,
    call_inputs,
    capture_denoiser_calls,
    export_signature,
)
from brevitas_ldm.export.x86_storage import WEIGHT_STORAGES, store_for_x86
from brevitas_ldm.registry import EXPORT_FORMATS

__all__ = ["CpuInfo", "DenoiserForExport", "EXPORT_FORMATS", "ExportMismatchError", "INTEGER_KERNELS", "MS_DOMAIN",
           "OUTPUT_NAME", "WEIGHT_STORAGES", "call_inputs",
           "capture_denoiser_calls", "check_agreement", "cpu_info", "emulator_available", "export_denoiser",
           "export_float_onnx", "export_signature", "integer_kernel_counts", "lower_to_integer_kernels",
           "onnx_latency", "onnx_quant_summary", "onnx_to_openvino_ir", "openvino_kernel_counts", "openvino_latency",
           "overflowing_int8_weights", "quant_features", "run_onnx_emulated", "session_options", "store_for_x86",
           "verify_onnx", "verify_openvino", "verify_torchscript", "write_openvino_pipeline"]
