"""The ``openvino`` export format: the Brevitas QCDQ denoiser as OpenVINO IR that OpenVINO runs on integer kernels.

OpenVINO does not run Q/DQ nodes as such. Its ONNX frontend turns each ``QuantizeLinear -> DequantizeLinear`` pair
into a ``FakeQuantize`` plus a dequantization (``Convert -> Subtract -> Multiply``), and the CPU plugin's
low-precision transformations (LPT) then move the dequantization behind the layer so the layer runs on integers.
Which layers the LPT can move it through is decided by precision restrictions the CPU plugin registers
(``transformation_pipeline.cpp``) and by the exact shape of the weight subgraph. Measured with
``compiled_model.get_runtime_model()`` (``runtimePrecision`` of every ``Convolution`` / ``FullyConnected``), on a
single Brevitas ``QuantConv2d`` and on the tiny SD UNet (33 convolutions, 50 Linear layers), OpenVINO 2026.4:

* **Brevitas' narrow-range weight Clip blocks every convolution.** Brevitas writes a signed 8-bit weight as
  ``int8 constant -> Clip(-127, 127) -> DequantizeLinear``. OpenVINO keeps the Clip as ``Maximum/Minimum`` on the
  int8 constant (the CPU plugin keeps decompression subgraphs unfolded so it can read them as compressed weights),
  and the LPT's ``ConvolutionTransformation`` only takes weights of the form ``Constant(i8) -> Convert ->
  [Subtract] -> Multiply``; it leaves the convolution in float (f32, or bf16 on a CPU with AVX-512 bf16 under
  default hints). The Linear layers are not affected because the CPU plugin runs a ``MatMul`` with a compressed
  weight as ``FullyConnected`` with its own weight-decompression path. Folding the Clip into the constant (its
  values already lie in the range, so nothing changes) lets all 33 convolutions of the tiny UNet run u8.
* **uint8 weights with zero point 128 (the onnxruntime-portable storage, :mod:`.x86_storage`) block them too**: the
  CPU plugin restricts ``Convolution``'s weight port to i8. So this format keeps Brevitas' int8 weights; with uint8
  weights the convolutions stay f32 even without the Clip (and the Linear layers run u8 x u8).
* **Signed activations are fine**: on CPUs without AMX (or AVX2-VNNI-2) the convolution's data port takes u8 only,
  and the LPT stores a signed int8 activation as u8 with a zero-point subtraction that the kernel absorbs.
* The integer-kernel lowering of ``onnx-int8`` (``ConvInteger``/``MatMulIntegerToFloat``) is not used: OpenVINO
  decomposes those ops into float arithmetic on converted integers.

* **``openvino.convert_model`` undoes most of it**: on the same folded file it leaves 32 of the 33 convolutions and
  44 of the 50 Linear layers in f32 (its offline transformations rewrite the Q/DQ weight subgraphs before the
  plugin sees them), where ``Core.read_model`` of the file, saved and compiled, runs all 33 u8 and all 50 i8.

So :func:`onnx_to_openvino_ir` takes the plain QCDQ file with int8 weights, folds the weight Clips
(:func:`fold_weight_clips`), reads it with ``openvino.Core().read_model`` and saves it with
``compress_to_fp16=False`` (the float parts stay f32, as the analysis measured them). 16-bit activations (the
``com.microsoft`` int16 Q/DQ of hybrid plans) are read by OpenVINO's ONNX frontend as 65536-level quantization and
run in float. The IR is two files, ``NAME.xml`` and ``NAME.bin``, written atomically (the ``.bin`` first).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.export.onnx_graph import OnnxGraph
from brevitas_ldm.export.x86_storage import int8_weight_is_safe
from brevitas_ldm.io import give_user_mode


def fold_weight_clips(model: onnx.ModelProto) -> int:
    """Replace every ``constant -> Clip -> DequantizeLinear`` by the clipped constant; returns how many were folded.

    The clipped values are the values the Clip would produce, so the model is unchanged; only the form differs
    (the one OpenVINO's convolution transformation recognises as a quantized weight, see the module docstring).
    """
    graph = OnnxGraph(model)
    folded: dict[str, str] = {}
    for dq in graph.nodes("DequantizeLinear"):
        clip = graph.producer.get(dq.input[0])
        if clip is None or clip.op_type != "Clip":
            continue
        values = graph.constant(clip.input[0])
        if values is None:
            continue
        if dq.input[0] not in folded:
            info = np.iinfo(values.dtype)
            low = graph.constant(clip.input[1]) if len(clip.input) > 1 and clip.input[1] else None
            high = graph.constant(clip.input[2]) if len(clip.input) > 2 and clip.input[2] else None
            clipped = np.clip(values, info.min if low is None else low, info.max if high is None else high)
            folded[dq.input[0]] = graph.add_constant(clipped.astype(values.dtype), f"{clip.input[0]}_clipped")
        dq.input[0] = folded[dq.input[0]]
    graph.remove_unused()
    return len(folded)


def onnx_to_openvino_ir(onnx_path: str | Path, xml_path: str | Path) -> Path:
    """Convert a QCDQ ONNX file (int8 weights) to OpenVINO IR at ``xml_path`` (+ ``.bin``), atomically."""
    import openvino as ov

    xml_path = Path(xml_path)
    if xml_path.suffix != ".xml":
        raise BrevitasLDMError(f"OpenVINO IR is written as NAME.xml + NAME.bin: pass a path ending in .xml, not "
                               f"{xml_path.name}")
    if xml_path.is_dir():
        raise BrevitasLDMError(f"export path {xml_path} is a directory: pass a file path such as "
                               f"{xml_path / 'denoiser.xml'}")
    model = onnx.load(str(onnx_path))
    fold_weight_clips(model)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{xml_path.stem}.", dir=xml_path.parent) as tmp:
        folded = Path(tmp) / "folded.onnx"
        onnx.save(model, str(folded))
        try:
            ov_model = ov.Core().read_model(str(folded))
        except Exception as exc:  # OpenVINO raises its own exception types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise BrevitasLDMError(f"OpenVINO cannot read the QCDQ file ({first}): export "
                                   f"--format onnx-qcdq and run it in onnxruntime instead") from None
        staged = Path(tmp) / xml_path.name
        ov.save_model(ov_model, str(staged), compress_to_fp16=False)
        for suffix in (".bin", ".xml"):       # the .xml last: a reader never finds an .xml without its weights
            give_user_mode(staged.with_suffix(suffix))
            os.replace(staged.with_suffix(suffix), xml_path.with_suffix(suffix))
    return xml_path


def ir_size_bytes(xml_path: str | Path) -> int:
    """Bytes of an IR on disk (``.xml`` + ``.bin``)."""
    xml_path = Path(xml_path)
    return sum(p.stat().st_size for p in (xml_path, xml_path.with_suffix(".bin")) if p.is_file())


def overflowing_ir_weights(path: str | Path) -> int:
    """int8 weight constants of an IR with some ``|q| > 64``: the ones AVX2 int8 kernels (no VNNI) saturate."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    count = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant" and op.get_output_element_type(0).to_string() == "i8":
            values = op.get_data()
            if values.size > 1 and not int8_weight_is_safe(values):
                count += 1
    return count
