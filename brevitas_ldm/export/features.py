"""What a quantized denoiser holds that an exporter must handle, and which formats can take it.

Checked before any export starts, so a format that cannot represent the model fails with a one-line error naming
the format to use instead, not deep inside a trace.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from brevitas_ldm.errors import BrevitasLDMError, CalibrationError, ModelError
from brevitas_ldm.quant.quantize import proxy_bits

#: ``onnx-int8`` is ``onnx-qcdq`` lowered to onnxruntime integer kernels (:mod:`.integer_kernels`); ``openvino`` is
#: the QCDQ graph as OpenVINO IR in the form its low-precision transformations run on integers (:mod:`.openvino_ir`).
EXPORT_FORMATS = ("onnx-qcdq", "onnx-int8", "openvino", "torch-qcdq", "qonnx")
#: Formats written as ONNX files that onnxruntime runs (and :func:`verify_onnx` checks).
ONNXRUNTIME_FORMATS = ("onnx-qcdq", "onnx-int8")
#: Highest opset of torch's TorchScript ONNX exporter (``torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET``).
MAX_OPSET = 20
#: Per-channel QuantizeLinear/DequantizeLinear need opset 13.
MIN_OPSET = 13

def layer_proxies(denoiser: nn.Module):
    """(layer name, input-quant proxy, weight-quant proxy) of every Brevitas quant layer."""
    from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer

    for name, module in denoiser.named_modules():
        if isinstance(module, QuantWeightBiasInputOutputLayer):
            yield name, module.input_quant, module.weight_quant


def quant_features(denoiser: nn.Module) -> dict[str, Any]:
    """What an exporter must handle: bit widths, signedness, float (FP8) formats, calibration state."""
    from brevitas.core.scaling.standalone import ParameterFromRuntimeStatsScaling
    from brevitas.proxy import (
        ActFloatQuantProxyFromInjector,
        WeightFloatQuantProxyFromInjector,
    )

    features = {"layers": 0, "act_bits": set(), "weight_bits": set(), "fp8": [], "unsigned_wide_act": [],
                "uncalibrated": []}
    for name, act, weight in layer_proxies(denoiser):
        features["layers"] += 1
        if act.is_quant_enabled:
            bits = proxy_bits(act)
            features["act_bits"].add(bits)
            if isinstance(act, ActFloatQuantProxyFromInjector):
                features["fp8"].append(name)
            elif bits > 8 and not act.is_signed:
                features["unsigned_wide_act"].append(name)
            stats = [m for m in act.modules() if isinstance(m, ParameterFromRuntimeStatsScaling)]
            if stats and all(m.counter == 0 for m in stats):
                features["uncalibrated"].append(name)
        if weight.is_quant_enabled:
            features["weight_bits"].add(proxy_bits(weight))
            if isinstance(weight, WeightFloatQuantProxyFromInjector) and name not in features["fp8"]:
                features["fp8"].append(name)
    return features


def check_exportable(denoiser: nn.Module, fmt: str, opset: int) -> dict[str, Any]:
    if fmt not in EXPORT_FORMATS:
        raise BrevitasLDMError(f"unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    if fmt != "torch-qcdq" and not MIN_OPSET <= opset <= MAX_OPSET:
        raise BrevitasLDMError(f"opset {opset} is not available for {fmt}: the TorchScript ONNX exporter supports "
                               f"opsets {MIN_OPSET}-{MAX_OPSET}; pass opset=17")
    features = quant_features(denoiser)
    if features["layers"] == 0:
        raise ModelError(f"{type(denoiser).__name__} has no Brevitas quant layers: quantize it with "
                         f"brevitas_ldm.quant.quantize.quantize_denoiser first, or use export_float_onnx for the "
                         f"FP32 model")
    fp8 = features["fp8"]
    if fmt == "openvino" and fp8:
        raise BrevitasLDMError(f"{fp8[0]} uses FP8 quantization, which the openvino export does not write (OpenVINO "
                               f"reads FP8 Q/DQ only as float): export with fmt='onnx-qcdq' and opset=19")
    if fmt in ONNXRUNTIME_FORMATS or fmt == "openvino":
        if fp8 and opset < 19:
            raise BrevitasLDMError(f"{fp8[0]} uses FP8 quantization, which needs FP8 QuantizeLinear (opset 19): "
                                   f"pass opset=19 or 20, or export with fmt='qonnx'")
        if max(features["weight_bits"], default=0) > 8:
            raise BrevitasLDMError(f"{fmt} stores weights as int8 but the denoiser has "
                                   f"{max(features['weight_bits'])}-bit weights: export with fmt='qonnx' or "
                                   f"fmt='torch-qcdq'")
        odd = sorted(b for b in features["act_bits"] if 8 < b < 16 or b > 16)
        if odd:
            raise BrevitasLDMError(f"{fmt} stores activations as int8 (up to 8 bits) or int16 (16 bits); the "
                                   f"denoiser has {odd[0]}-bit activations: plan them as a8 or a16, or export with "
                                   f"fmt='qonnx'")
    elif fmt == "torch-qcdq":
        if fp8:
            raise BrevitasLDMError(f"{fp8[0]} uses FP8 quantization, which Brevitas' torch-qcdq export does not "
                                   f"support (torch has no FP8 quantize ops): use fmt='onnx-qcdq' with opset=19 "
                                   f"or fmt='qonnx'")
        if features["unsigned_wide_act"]:
            raise BrevitasLDMError(f"{features['unsigned_wide_act'][0]} has unsigned activations above 8 bits, "
                                   f"which torch-qcdq cannot store (torch only has quint8): use fmt='onnx-qcdq' or "
                                   f"symmetric activations")
    if features["uncalibrated"]:
        raise CalibrationError(f"activation quantizers of {features['uncalibrated'][0]} (and "
                               f"{len(features['uncalibrated']) - 1} more) were never calibrated: run the denoiser "
                               f"inside single_step_calibration/multi_step_calibration before exporting")
    return features


