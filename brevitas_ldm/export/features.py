"""What a quantized denoiser holds that an exporter must handle, and which formats can take it.

Checked before any export starts, so a format that cannot represent the model fails with a one-line error naming
the format to use instead, not deep inside a trace.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from brevitas_ldm.errors import BrevitasLDMError, CalibrationError, ModelError
from brevitas_ldm.quant.quantize import proxy_bits
from brevitas_ldm.registry import EXPORT_FORMATS

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
    """What the denoiser holds (:func:`quant_features`), after refusing what the registered format ``fmt`` (or any
    format) cannot export: an opset out of range, no quant layers, uncalibrated activations."""
    export_format = EXPORT_FORMATS.get(str(fmt).lower(), "fmt")
    if export_format.uses_opset and not MIN_OPSET <= opset <= MAX_OPSET:
        raise BrevitasLDMError(f"opset {opset} is not available for {export_format.name}: the TorchScript ONNX "
                               f"exporter supports opsets {MIN_OPSET}-{MAX_OPSET}; pass opset=17")
    features = quant_features(denoiser)
    if features["layers"] == 0:
        raise ModelError(f"{type(denoiser).__name__} has no Brevitas quant layers: quantize it with "
                         f"brevitas_ldm.quant.quantize.quantize_denoiser first, or use export_float_onnx for the "
                         f"FP32 model")
    export_format.check(features, opset)
    if features["uncalibrated"]:
        raise CalibrationError(f"activation quantizers of {features['uncalibrated'][0]} (and "
                               f"{len(features['uncalibrated']) - 1} more) were never calibrated: run the denoiser "
                               f"inside single_step_calibration/multi_step_calibration before exporting")
    return features
