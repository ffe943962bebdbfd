"""Deployment path: export a quantized denoiser through Brevitas and check the file in onnxruntime.

Three formats, all written by Brevitas' own export managers:

* ``onnx-qcdq`` (:func:`brevitas.export.export_onnx_qcdq`): ONNX where every quantized layer input is
  ``QuantizeLinear -> (Clip) -> DequantizeLinear`` and every quantized weight an int8 initializer followed by
  ``(Clip ->) DequantizeLinear``; standard ONNX ops only (8-bit files). This is the deployment format.
* ``torch-qcdq`` (:func:`brevitas.export.export_torch_qcdq`): a TorchScript trace with the same Q/DQ structure in
  torch ops; load with ``torch.jit.load`` and call with positional tensors.
* ``qonnx`` (:func:`brevitas.export.export_qonnx`): ONNX with Brevitas/QONNX ``Quant`` custom ops that keep
  arbitrary bit widths exactly; onnxruntime cannot execute them (the ``qonnx``/FINN tools can).

Why the pieces below exist:

* Diffusers denoisers take keyword inputs and return dataclasses; the exporters trace positional tensors and
  need a tensor output, so :class:`DenoiserForExport` puts a positional front on the denoiser. Its inputs keep
  the diffusers names (``sample``/``hidden_states``, ``timestep``, ``encoder_hidden_states``/``class_labels``)
  so a runtime feeds the ONNX file with the same dictionary it would pass to the torch denoiser.
* torch >= 2.9 defaults ``torch.onnx.export`` to the dynamo exporter, which needs ``onnxscript`` (not installed
  here) and which Brevitas' QCDQ dynamo manager supports only partly; the TorchScript exporter
  (``dynamo=False``) works for all three formats and is used throughout. It stops at opset 20.
* Brevitas keeps initializers as graph inputs by default; that blocks onnxruntime's constant folding (and
  floods its log), so exports pass ``keep_initializers_as_inputs=False``.
* Mixed precision is preserved by construction: float layers are plain torch layers (no quant proxy, hence no
  Q/DQ), 8-bit layers get int8 Q/DQ. 16-bit activations: Brevitas' standard QCDQ handler refuses bit widths
  above 8, and ONNX has int16 ``QuantizeLinear`` only from opset 21, which the TorchScript exporter cannot emit;
  converting the file to opset 21 with ``onnx.version_converter`` produces a model that onnxruntime 1.32
  rejects at session creation (its QDQ Gemm optimizer inserts a Q node with mismatched
  ``output_dtype``/zero-point types). So a denoiser with 16-bit activations is exported with an extended Brevitas
  activation handler that emits int16 Q/DQ (unsigned 16-bit as int16 with a shifted zero point, since the
  exporter cannot write uint16), and those nodes are put in onnxruntime's ``com.microsoft`` domain, whose
  QuantizeLinear/DequantizeLinear accept 16-bit types at any opset (the same choice onnxruntime's own
  quantization tool makes for 16-bit QDQ below opset 21). Such a file needs onnxruntime; 8-bit-only files are
  plain ONNX. Activation widths 9-15 have no exact QCDQ form here (they would need an int16 Clip): use ``qonnx``.
* onnxruntime itself can undo mixed precision: by default it turns ``DequantizeLinear(int8 weight) -> MatMul``
  with a float (or 16-bit) activation into ``MatMulNBits``, which quantizes the activation to int8 on the fly.
  :func:`session_options` switches that off; see there.
* Every file is written atomically: exported to a temporary file in the destination folder, then renamed, so a
  failed export never leaves a partial file behind.

The exported model is checked against the fake-quantized torch denoiser by :func:`verify_onnx` (SQNR in dB).
Quantization itself is reproduced exactly (same scales, zero points, round-half-even); the two differ only where
a float rounding difference upstream (onnxruntime's kernels sum in another order; ~1e-7 relative) moves a value
across a rounding boundary, a one-LSB flip that then propagates through the network. Samples without a flip
match to ~130 dB; how far a flip spreads depends on how sensitive the model is to quantization noise.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from brevitas_ldm.errors import BrevitasLDMError, CalibrationError, ModelError
from brevitas_ldm.sampling import first_tensor
from brevitas_ldm.sqnr import sqnr_db

EXPORT_FORMATS = ("onnx-qcdq", "torch-qcdq", "qonnx")
#: Highest opset of torch's TorchScript ONNX exporter (``torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET``).
MAX_OPSET = 20
#: Per-channel QuantizeLinear/DequantizeLinear need opset 13.
MIN_OPSET = 13
#: Name of the exported graph's output tensor.
OUTPUT_NAME = "denoiser_output"
#: onnxruntime's contrib-op domain, whose QuantizeLinear/DequantizeLinear accept int16/uint16 below opset 21.
MS_DOMAIN = "com.microsoft"

_SAMPLE_KEYS = ("sample", "hidden_states")
_REQUIRED_INPUTS = {
    "UNet2DConditionModel": ("sample", "timestep", "encoder_hidden_states"),
    "UNet2DModel": ("sample", "timestep"),
    "DiTTransformer2DModel": ("hidden_states", "timestep", "class_labels"),
}


# -- the positional front ----------------------------------------------------------------------------------------

class DenoiserForExport(nn.Module):
    """``denoiser(**dict(zip(input_names, tensors)), return_dict=False)[0]`` as a positional-tensor module.

    Exporters trace ``module(*tensors)`` and need a tensor output; diffusers denoisers take keywords and return a
    dataclass. The wrapped denoiser is shared, not copied, so Brevitas' export mode reaches its quant proxies.
    """

    def __init__(self, denoiser: nn.Module, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.input_names = tuple(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        output = self.denoiser(**dict(zip(self.input_names, inputs)), return_dict=False)
        return output[0]


def export_signature(denoiser: nn.Module,
                     example_inputs: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[torch.Tensor, ...]]:
    """Input names (sample first, timestep second, the rest in the given order) and the matching tensors."""
    if not isinstance(example_inputs, Mapping) or not example_inputs:
        raise ModelError("example_inputs must be a non-empty dict of the denoiser's keyword tensors, e.g. "
                         "{'sample': ..., 'timestep': ..., 'encoder_hidden_states': ...}")
    inputs = {k: v for k, v in example_inputs.items() if v is not None}
    for key, value in inputs.items():
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"example input {key!r} is a {type(value).__name__}, not a tensor: pass every denoiser "
                             f"input as a torch.Tensor (e.g. timestep=torch.tensor([999]))")
    required = _REQUIRED_INPUTS.get(type(denoiser).__name__)
    if type(denoiser).__name__ == "UNet2DModel" and _class_conditional(denoiser):
        required = required + ("class_labels",)
    if required is None:
        sample = next((k for k in _SAMPLE_KEYS if k in inputs), None)
        required = (sample or "sample", "timestep")
    missing = [k for k in required if k not in inputs]
    if missing:
        raise ModelError(f"example_inputs for {type(denoiser).__name__} lack {', '.join(missing)}: pass "
                         f"{', '.join(required)} as keyword tensors")
    names = tuple(required[:2]) + tuple(k for k in inputs if k not in required[:2])
    return names, tuple(inputs[k] for k in names)


def call_inputs(denoiser: nn.Module, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensor inputs of one observed denoiser call (e.g. from ``denoiser_step_hook``) as keyword tensors.

    Pipelines call ``unet(latents, t, encoder_hidden_states=...)`` with positional and keyword arguments mixed;
    binding them to the forward signature gives the named dict that :func:`export_denoiser`, :func:`verify_onnx`
    and :func:`onnx_latency` take. Non-tensor and None arguments are dropped; tensors are detached copies.
    """
    import inspect

    try:
        bound = inspect.signature(denoiser.forward).bind(*args, **kwargs)
    except TypeError as exc:
        raise ModelError(f"cannot match this call to {type(denoiser).__name__}.forward ({exc}): pass the args and "
                         f"kwargs of one real denoiser call") from None
    return {k: v.detach().clone() for k, v in bound.arguments.items() if isinstance(v, torch.Tensor)}


def _class_conditional(unet: nn.Module) -> bool:
    config = getattr(unet, "config", None)
    return config is not None and (config.get("num_class_embeds") is not None
                                   or config.get("class_embed_type") is not None)


# -- what the quantized denoiser holds ---------------------------------------------------------------------------

def _layer_proxies(denoiser: nn.Module):
    """(layer name, input-quant proxy, weight-quant proxy) of every Brevitas quant layer."""
    from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer

    for name, module in denoiser.named_modules():
        if isinstance(module, QuantWeightBiasInputOutputLayer):
            yield name, module.input_quant, module.weight_quant


def quant_features(denoiser: nn.Module) -> dict[str, Any]:
    """What an exporter must handle: bit widths, signedness, float (FP8) formats, calibration state."""
    from brevitas.core.scaling.standalone import ParameterFromRuntimeStatsScaling
    from brevitas.proxy import ActFloatQuantProxyFromInjector, WeightFloatQuantProxyFromInjector

    features = {"layers": 0, "act_bits": set(), "weight_bits": set(), "fp8": [], "unsigned_wide_act": [],
                "uncalibrated": []}
    for name, act, weight in _layer_proxies(denoiser):
        features["layers"] += 1
        if act.is_quant_enabled:
            if isinstance(act, ActFloatQuantProxyFromInjector):
                features["fp8"].append(name)
                features["act_bits"].add(8)
            else:
                bits = int(act.bit_width().item())
                features["act_bits"].add(bits)
                if bits > 8 and not act.is_signed:
                    features["unsigned_wide_act"].append(name)
            stats = [m for m in act.modules() if isinstance(m, ParameterFromRuntimeStatsScaling)]
            if stats and all(m.counter == 0 for m in stats):
                features["uncalibrated"].append(name)
        if weight.is_quant_enabled:
            if isinstance(weight, WeightFloatQuantProxyFromInjector):
                features["weight_bits"].add(8)
                if name not in features["fp8"]:
                    features["fp8"].append(name)
            else:
                features["weight_bits"].add(int(weight.bit_width().item()))
    return features


def _check_exportable(denoiser: nn.Module, fmt: str, opset: int) -> dict[str, Any]:
    if fmt not in EXPORT_FORMATS:
        raise BrevitasLDMError(f"unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    if fmt != "torch-qcdq" and not MIN_OPSET <= opset <= MAX_OPSET:
        raise BrevitasLDMError(f"opset {opset} is not available for {fmt}: the TorchScript ONNX exporter supports "
                               f"opsets {MIN_OPSET}-{MAX_OPSET}; pass opset=17")
    features = quant_features(denoiser)
    if features["layers"] == 0:
        raise ModelError(f"{type(denoiser).__name__} has no Brevitas quant layers: quantize it with "
                         f"brevitas_ldm.quantize.quantize_denoiser first, or use export_float_onnx for the FP32 model")
    fp8 = features["fp8"]
    if fmt == "onnx-qcdq":
        if fp8 and opset < 19:
            raise BrevitasLDMError(f"{fp8[0]} uses FP8 quantization, which needs FP8 QuantizeLinear (opset 19): "
                                   f"pass opset=19 or 20, or export with fmt='qonnx'")
        if max(features["weight_bits"], default=0) > 8:
            raise BrevitasLDMError(f"onnx-qcdq stores weights as int8 but the denoiser has "
                                   f"{max(features['weight_bits'])}-bit weights: export with fmt='qonnx' or "
                                   f"fmt='torch-qcdq'")
        odd = sorted(b for b in features["act_bits"] if 8 < b < 16 or b > 16)
        if odd:
            raise BrevitasLDMError(f"onnx-qcdq stores activations as int8 (up to 8 bits) or int16 (16 bits); the "
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


# -- 16-bit activations for ONNX QCDQ ------------------------------------------------------------------------------

def _wide_qcdq_manager():
    """Brevitas' standard QCDQ ONNX manager with an activation handler that also emits 16-bit Q/DQ.

    Only the activation handler differs: 16-bit activations get int16 storage and zero points, and no Clip
    (QuantizeLinear already saturates to the 16-bit range; onnxruntime has no int16 Clip). Unsigned 16-bit
    activations are stored as int16 too, with the zero point shifted by -32768: ``(q_u - z_u) s = (q_s - z_s) s``
    with ``q_s = q_u - 32768``, exactly the same values, because torch's TorchScript exporter cannot write uint16.
    Bit widths 9-15 would need a 16-bit Clip and are refused (see :func:`_check_exportable`).
    """
    from brevitas.export.onnx.standard.qcdq.handler import StdQCDQCastONNXActQuantProxyHandler
    from brevitas.export.onnx.standard.qcdq.manager import StdQCDQONNXManager

    class WideQCDQCastONNXActQuantProxyHandler(StdQCDQCastONNXActQuantProxyHandler):

        def validate(self, module):
            bits = int(module.bit_width().item())
            if bits <= 1 or 8 < bits < 16 or bits > 16:
                raise RuntimeError(f"{bits}-bit activations cannot be exported as QCDQ (8 bits or fewer, or 16)")
            if module.rounding_mode.upper() != "ROUND":
                raise RuntimeError("activation export needs round-to-nearest-even quantizers")
            if module.is_groupwise:
                raise RuntimeError("group-wise activation quantization cannot be exported as QCDQ")
            if bits == 16 and module.is_narrow_range:
                raise RuntimeError("narrow-range 16-bit activations cannot be exported as QCDQ")

        @classmethod
        def signed_dtype(cls, bit_width, is_signed):
            if bit_width is None:
                return None
            if bit_width <= 8:
                return torch.int8 if is_signed else torch.uint8
            return torch.int16

        @classmethod
        def zero_point_with_dtype(cls, signed, bit_width, zero_point):
            if bit_width <= 8:
                return super().zero_point_with_dtype(signed, bit_width, zero_point)
            if not signed:
                zero_point = zero_point - 2 ** 15
            return zero_point.type(torch.int16)

        def assert_ge_zero(self, *args):
            # Brevitas' tracing check that zero points are >= 0; shifted unsigned 16-bit zero points are negative.
            super().assert_ge_zero(*(a.float() + 2 ** 15 if isinstance(a, torch.Tensor) and a.dtype == torch.int16
                                     else a for a in args))

        @classmethod
        def int_clip_symbolic_kwargs(cls, narrow, signed, bit_width):
            if bit_width > 8:
                return None
            return super().int_clip_symbolic_kwargs(narrow, signed, bit_width)

    class WideQCDQONNXManager(StdQCDQONNXManager):
        handlers = [WideQCDQCastONNXActQuantProxyHandler if h is StdQCDQCastONNXActQuantProxyHandler else h
                    for h in StdQCDQONNXManager.handlers]

    return WideQCDQONNXManager


def _move_wide_qdq_to_ms_domain(model) -> int:
    """Put int16/uint16 QuantizeLinear/DequantizeLinear in the com.microsoft domain; returns how many."""
    import onnx

    wide = {onnx.TensorProto.INT16, onnx.TensorProto.UINT16}
    types = _tensor_types(model)
    moved = 0
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and types.get(_qdq_type_source(node)) in wide:
            node.domain = MS_DOMAIN
            moved += 1
    if moved and not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    return moved


# -- writing files -------------------------------------------------------------------------------------------------

@contextmanager
def _atomic_path(path: Path):
    """A temporary path beside ``path``; renamed onto ``path`` if the block succeeds, deleted otherwise."""
    path = Path(path)
    if path.is_dir():
        raise BrevitasLDMError(f"export path {path} is a directory: pass a file path such as {path / 'unet.onnx'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def _clean_export_state(model: nn.Module):
    """Leave no Brevitas export handler or export mode behind, even when an export fails half-way.

    Brevitas attaches a handler to each quant proxy only if none is attached and detaches it when export mode is
    switched off; an exception in between would leave stale handlers that break the next export in another format.
    """
    try:
        yield
    finally:
        for module in model.modules():
            if hasattr(module, "export_handler") and hasattr(module, "_export_mode"):
                module._export_mode = False
                module.export_handler = None


def _onnx_kwargs(names: tuple[str, ...], tensors: tuple[torch.Tensor, ...], opset: int) -> dict[str, Any]:
    dynamic = {name: {0: "batch"} for name, t in zip(names, tensors) if t.dim() > 0}
    dynamic[OUTPUT_NAME] = {0: "batch"}
    return {"opset_version": opset, "dynamo": False, "input_names": list(names), "output_names": [OUTPUT_NAME],
            "dynamic_axes": dynamic}


def _exporter_error(fmt: str, exc: Exception) -> BrevitasLDMError:
    alternative = {"onnx-qcdq": "fmt='qonnx' (exact bit widths, not runnable in onnxruntime)",
                   "torch-qcdq": "fmt='onnx-qcdq'", "qonnx": "fmt='onnx-qcdq'"}[fmt]
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return BrevitasLDMError(f"Brevitas {fmt} export failed ({type(exc).__name__}: {first}): try {alternative}")


@contextmanager
def _prepared_export(denoiser: nn.Module, example_inputs: Mapping[str, torch.Tensor], path: str | Path):
    """Yield ``(wrapper, names, tensors, tmp_path)`` with the denoiser in eval mode; restore its mode afterwards.

    The denoiser is run once on the example inputs first, so a wrong input fails with a clear message instead of
    deep inside an exporter's trace.
    """
    names, tensors = export_signature(denoiser, example_inputs)
    training = denoiser.training
    wrapper = DenoiserForExport(denoiser, names).eval()
    try:
        try:
            with torch.no_grad():
                wrapper(*tensors)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise ModelError(f"{type(denoiser).__name__} fails on example_inputs ({type(exc).__name__}: {first}): "
                             f"pass the tensors of one real denoiser call") from exc
        with _atomic_path(Path(path)) as tmp, torch.no_grad():
            yield wrapper, names, tensors, tmp
    finally:
        denoiser.train(training)


def export_denoiser(denoiser: nn.Module, example_inputs: Mapping[str, torch.Tensor], path: str | Path,
                    fmt: str = "onnx-qcdq", opset: int = 17) -> Path:
    """Export a quantized, calibrated denoiser to ``path`` in format ``fmt``; returns the path.

    ``example_inputs`` are the denoiser's keyword tensors for one call (their values only shape the trace; the
    batch dimension stays dynamic). The exported model takes the same names as positional inputs, in the order
    sample/hidden_states, timestep, then the conditioning, and returns the denoiser's output tensor.

    * ``onnx-qcdq``: int8/uint8 Q/DQ for tensors of 8 bits or fewer, nothing for float layers; 16-bit
      activations get int16 Q/DQ in onnxruntime's ``com.microsoft`` domain (standard ONNX int16 Q/DQ needs
      opset 21, which neither the TorchScript exporter nor onnxruntime's optimizer handles; see the module
      docstring). ``opset`` 13-20; FP8 (e4m3/e5m2) recipes need 19 or 20 and keep float weights with FP8 Q/DQ.
    * ``torch-qcdq``: a TorchScript file (``torch.jit.load``, positional inputs); ``opset`` is ignored.
    * ``qonnx``: QONNX ``Quant`` nodes with exact bit widths; not runnable in onnxruntime.

    Formats a model cannot use raise :class:`BrevitasLDMError` naming the format to use instead.
    """
    fmt = str(fmt).lower()
    features = _check_exportable(denoiser, fmt, opset)
    with _prepared_export(denoiser, example_inputs, path) as (wrapper, names, tensors, tmp), \
            _clean_export_state(denoiser):
        try:
            if fmt == "onnx-qcdq":
                _export_onnx_qcdq(wrapper, names, tensors, tmp, opset, wide=max(features["act_bits"], default=0) > 8,
                                  fp8=bool(features["fp8"]))
            elif fmt == "torch-qcdq":
                from brevitas.export import export_torch_qcdq

                export_torch_qcdq(wrapper, tensors, export_path=str(tmp))
            else:
                from brevitas.export import export_qonnx

                export_qonnx(wrapper, tensors, export_path=str(tmp), keep_initializers_as_inputs=False,
                             **_onnx_kwargs(names, tensors, opset))
        except BrevitasLDMError:
            raise
        except (RuntimeError, AssertionError, NotImplementedError, ValueError, TypeError) as exc:
            raise _exporter_error(fmt, exc) from exc
    return Path(path)


def _export_onnx_qcdq(wrapper: nn.Module, names, tensors, tmp: Path, opset: int, wide: bool, fp8: bool) -> None:
    import onnx

    kwargs = dict(_onnx_kwargs(names, tensors, opset), keep_initializers_as_inputs=False)
    if fp8:
        # Brevitas exports FP8 weights only as float tensors followed by FP8 QuantizeLinear/DequantizeLinear.
        kwargs["export_weight_q_node"] = True
    if not wide:
        from brevitas.export import export_onnx_qcdq

        export_onnx_qcdq(wrapper, tensors, export_path=str(tmp), **kwargs)
        return
    _wide_qcdq_manager().export(wrapper, tensors, export_path=str(tmp), **kwargs)
    model = onnx.load(str(tmp))
    _move_wide_qdq_to_ms_domain(model)
    onnx.save(model, str(tmp))


def export_float_onnx(denoiser: nn.Module, example_inputs: Mapping[str, torch.Tensor], path: str | Path,
                      opset: int = 17) -> Path:
    """Export the FP32 denoiser with plain ``torch.onnx.export`` (TorchScript path), the deployment baseline.

    Same input/output names, dynamic batch axis and atomic write as :func:`export_denoiser`, so the two files
    can be run and timed with the same feeds and session options.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise BrevitasLDMError(f"opset {opset} is not available: the TorchScript ONNX exporter supports opsets "
                               f"{MIN_OPSET}-{MAX_OPSET}; pass opset=17")
    if any(True for _ in _layer_proxies(denoiser)):
        raise ModelError(f"{type(denoiser).__name__} holds Brevitas quant layers: export_float_onnx needs the float "
                         f"denoiser (export it before quantize_denoiser); use export_denoiser for the quantized one")
    with _prepared_export(denoiser, example_inputs, path) as (wrapper, names, tensors, tmp):
        torch.onnx.export(wrapper, tensors, str(tmp), **_onnx_kwargs(names, tensors, opset))
    return Path(path)


# -- reading ONNX files --------------------------------------------------------------------------------------------

def _tensor_types(model) -> dict[str, int]:
    """Element type of every initializer, Constant output and typed value in the graph."""
    types = {init.name: init.data_type for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            types[node.output[0]] = node.attribute[0].t.data_type
    for info in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if info.type.HasField("tensor_type"):
            types.setdefault(info.name, info.type.tensor_type.elem_type)
    return types


def _qdq_type_source(node) -> str:
    """The tensor whose element type is the integer type of a Q/DQ node (its zero point)."""
    return node.input[2] if len(node.input) > 2 and node.input[2] else ""


def _type_name(elem_type: int | None) -> str:
    import onnx

    if elem_type is None or elem_type == onnx.TensorProto.UNDEFINED:
        return "unknown"
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name


_PASS_THROUGH = {"Transpose", "Reshape", "Identity", "Unsqueeze", "Squeeze", "Flatten", "Clip", "Cast"}


def onnx_quant_summary(path: str | Path) -> dict[str, Any]:
    """Count Q/DQ nodes by integer type and tell, for every Conv/MatMul/Gemm, whether its inputs are quantized.

    Returns ``{"quantize": {"int8": n, ...}, "dequantize": {...}, "nodes": [...], "layers": {...}}`` where each
    node entry is ``{"name", "op", "layer", "input", "weight"}``: ``input``/``weight`` are the integer type of the
    DequantizeLinear feeding that operand (``None`` when it is float) and ``layer`` the torch module path derived
    from the node's scope. ``layers`` maps the layer of every node with a constant weight (Linear/Conv) to
    ``{"input": ..., "weight": ...}`` so tests can check a plan's mixed precision.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    types = _tensor_types(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    constants = {init.name for init in model.graph.initializer}
    constants |= {node.output[0] for node in model.graph.node if node.op_type == "Constant"}

    def qdq_type(node) -> str:
        source = _qdq_type_source(node)
        if source:
            return _type_name(types.get(source))
        attr = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
        if node.op_type == "QuantizeLinear":
            return _type_name(attr or onnx.TensorProto.UINT8)
        return _type_name(types.get(node.input[0])) if node.input[0] in types else "unknown"

    def trace(tensor: str) -> tuple[str | None, bool]:
        """(integer type of the DequantizeLinear behind ``tensor`` or None, whether it is a constant)."""
        for _ in range(16):
            node = producer.get(tensor)
            if node is None:
                return None, tensor in constants
            if node.op_type == "DequantizeLinear":
                source = node.input[0]
                while source in producer and producer[source].op_type in _PASS_THROUGH | {"QuantizeLinear"}:
                    if producer[source].op_type == "QuantizeLinear":
                        return qdq_type(node), False
                    source = producer[source].input[0]
                return qdq_type(node), source in constants
            if node.op_type == "Constant":
                return None, True
            if node.op_type not in _PASS_THROUGH:
                return None, False
            tensor = node.input[0]
        return None, False

    quantize, dequantize = Counter(), Counter()
    nodes, layers = [], {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            quantize[qdq_type(node)] += 1
        elif node.op_type == "DequantizeLinear":
            dequantize[qdq_type(node)] += 1
        elif node.op_type in ("Conv", "MatMul", "Gemm"):
            input_type, _ = trace(node.input[0])
            weight_type, weight_constant = trace(node.input[1])
            layer = _layer_from_scope(node.name)
            entry = {"name": node.name, "op": node.op_type, "layer": layer, "input": input_type,
                     "weight": weight_type}
            nodes.append(entry)
            if weight_constant and layer is not None:
                layers.setdefault(layer, {"input": input_type, "weight": weight_type})
    return {"quantize": dict(quantize), "dequantize": dict(dequantize), "nodes": nodes, "layers": layers}


def _layer_from_scope(node_name: str) -> str | None:
    """``/denoiser/down_blocks.0/resnets.0/conv1/Conv`` -> ``down_blocks.0.resnets.0.conv1``."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) < 3:
        return None
    return ".".join(parts[1:-1])


# -- running ONNX files --------------------------------------------------------------------------------------------

def session_options(threads: int | None = None):
    """The one set of onnxruntime options every model is run with (so latencies are comparable).

    All graph optimizations on, sequential execution, ``threads`` intra-op threads (default: all cores), and
    ``session.qdq_matmulnbits_accuracy_level = 1``: with its default (4), onnxruntime rewrites a
    ``DequantizeLinear(int8 weight) -> MatMul`` whose activation is *not* quantized (weight-only or 16-bit
    activation layers) into ``MatMulNBits`` that quantizes the activation to int8 on the fly, silently replacing the
    plan's 16-bit/float activation by int8 (measured: W8A16 DiT block, 47 dB instead of 138 dB vs torch). Level 1
    keeps that product in fp32. Deployments running these files should set the same entry.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = int(threads) if threads else (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return options


def _session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise BrevitasLDMError(f"ONNX file {path} does not exist: export it first with export_denoiser")
    try:
        return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        message = str(exc)
        if "qonnx" in message.lower() or "Quant(" in message or "custom_op" in message:
            raise BrevitasLDMError(f"{path.name} uses QONNX Quant custom ops, which onnxruntime cannot run: verify "
                                   f"the onnx-qcdq export, or execute QONNX files with the qonnx package") from None
        raise BrevitasLDMError(f"onnxruntime cannot load {path.name} ({message.splitlines()[0][:200]}): re-export "
                               f"it with export_denoiser(fmt='onnx-qcdq')") from None


_ORT_TO_NUMPY = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
                 "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _feeds(session, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    feeds = {}
    for arg in session.get_inputs():
        if arg.name not in inputs:
            raise BrevitasLDMError(f"input {arg.name!r} of the ONNX model is missing from inputs: pass "
                                   f"{', '.join(a.name for a in session.get_inputs())}")
        value = inputs[arg.name]
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        feeds[arg.name] = array.astype(_ORT_TO_NUMPY.get(arg.type, array.dtype), copy=False)
    return feeds


def _run(session, feeds: dict[str, np.ndarray], path: str | Path) -> np.ndarray:
    try:
        return session.run([OUTPUT_NAME], feeds)[0]
    except Exception as exc:  # onnxruntime raises its own exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
        raise BrevitasLDMError(f"onnxruntime failed to run {Path(path).name} on inputs {shapes} ({first}): pass "
                               f"inputs shaped like the export's example inputs (only the batch may differ)") from None


@torch.no_grad()
def _torch_reference(denoiser: nn.Module, inputs: Mapping[str, Any], quantized: bool = True) -> torch.Tensor:
    from brevitas.graph.calibrate import quantization_status_manager

    training = denoiser.training
    denoiser.eval()
    try:
        if quantized:
            return first_tensor(denoiser(**inputs)).float()
        with quantization_status_manager(denoiser, disable_act_quant=True, disable_weight_quant=True,
                                         disable_bias_quant=True, is_training=False):
            return first_tensor(denoiser(**inputs)).float()
    finally:
        denoiser.train(training)


def _compare(reference: torch.Tensor, test: torch.Tensor) -> dict[str, float]:
    if reference.shape != test.shape:
        raise BrevitasLDMError(f"exported model output has shape {tuple(test.shape)}, the torch denoiser "
                               f"{tuple(reference.shape)}: re-export with example inputs shaped like these inputs")
    return {"sqnr_db": sqnr_db(reference, test), "max_abs_error": float((reference - test).abs().max()),
            "reference_rms": float(reference.pow(2).mean().sqrt())}


def verify_onnx(path: str | Path, denoiser: nn.Module, inputs: Mapping[str, Any],
                threads: int | None = None) -> dict[str, Any]:
    """Run the ONNX file in onnxruntime (CPU) and compare it with the fake-quantized torch ``denoiser``.

    ``inputs`` are fresh keyword tensors for one denoiser call. Returns ``sqnr_db`` (ONNX vs torch; >= 30 dB
    expected), ``max_abs_error``, and ``quant_noise_sqnr_db``, the SQNR of the fake-quantized denoiser against
    the same denoiser with quantization disabled, for scale: the export mismatch should sit well below the
    quantization noise itself.
    """
    session = _session(path, threads)
    output = torch.from_numpy(_run(session, _feeds(session, inputs), path)).float()
    reference = _torch_reference(denoiser, inputs)
    result = _compare(reference, output)
    if any(True for _ in _layer_proxies(denoiser)):
        result["quant_noise_sqnr_db"] = sqnr_db(_torch_reference(denoiser, inputs, quantized=False), reference)
    result["path"] = str(path)
    return result


def verify_torchscript(path: str | Path, denoiser: nn.Module, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Load a torch-qcdq TorchScript file and compare it with the fake-quantized torch ``denoiser``."""
    path = Path(path)
    if not path.is_file():
        raise BrevitasLDMError(f"TorchScript file {path} does not exist: export it with "
                               f"export_denoiser(fmt='torch-qcdq')")
    module = torch.jit.load(str(path), map_location="cpu")
    names, tensors = export_signature(denoiser, inputs)
    with torch.no_grad():
        output = module(*tensors).float()
    result = _compare(_torch_reference(denoiser, dict(zip(names, tensors))), output)
    result["path"] = str(path)
    return result


def onnx_latency(path: str | Path, inputs: Mapping[str, Any], repeats: int = 20, warmup: int = 3,
                 threads: int | None = None) -> dict[str, Any]:
    """Wall-clock milliseconds per onnxruntime call (CPU, :func:`session_options`) and the file size in bytes.

    ``warmup`` untimed calls first (at least one, which also checks the inputs; they absorb session-level
    allocations and thread-pool start-up), then ``repeats`` timed calls; the median is the figure to compare,
    being robust to the odd preempted call.
    """
    if repeats < 1 or warmup < 0:
        raise BrevitasLDMError(f"repeats={repeats}, warmup={warmup}: need repeats >= 1 and warmup >= 0")
    session = _session(path, threads)
    feeds = _feeds(session, inputs)
    _run(session, feeds, path)
    for _ in range(max(warmup - 1, 0)):
        session.run([OUTPUT_NAME], feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run([OUTPUT_NAME], feeds)
        times.append((time.perf_counter() - start) * 1000.0)
    options = session.get_session_options()
    return {"median_ms": statistics.median(times), "mean_ms": statistics.fmean(times), "min_ms": min(times),
            "stdev_ms": statistics.stdev(times) if len(times) > 1 else 0.0, "repeats": repeats, "warmup": warmup,
            "threads": options.intra_op_num_threads, "size_bytes": Path(path).stat().st_size}
