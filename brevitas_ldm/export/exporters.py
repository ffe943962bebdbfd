"""Writing a quantized denoiser through Brevitas' export managers, atomically.

* torch >= 2.9 defaults ``torch.onnx.export`` to the dynamo exporter, which needs ``onnxscript`` (not installed
  here) and which Brevitas' QCDQ dynamo manager supports only partly; the TorchScript exporter
  (``dynamo=False``) works for all formats and is used throughout. It stops at opset 20.
* Brevitas keeps initializers as graph inputs by default; that blocks onnxruntime's constant folding (and
  floods its log), so exports pass ``keep_initializers_as_inputs=False``.
* Mixed precision is preserved by construction: float layers are plain torch layers (no quant proxy, hence no
  Q/DQ), 8-bit layers get int8 Q/DQ, 16-bit activations int16 Q/DQ (:mod:`.wide_qcdq`).
* ONNX files then pass through the project's two graph passes: :mod:`.x86_storage` (always, unless
  ``weight_storage="int8"``) and, for ``onnx-int8``, :mod:`.integer_kernels`.
* Every file is written atomically: exported to a temporary file in the destination folder, then renamed, so a
  failed export never leaves a partial file behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from brevitas_ldm.compat import reset_export_state
from brevitas_ldm.errors import BrevitasLDMError, ModelError
from brevitas_ldm.export.features import (
    MAX_OPSET,
    MIN_OPSET,
    check_exportable,
    layer_proxies,
)
from brevitas_ldm.export.integer_kernels import lower_to_integer_kernels
from brevitas_ldm.export.onnx_symbolics import missing_symbolics
from brevitas_ldm.export.session import OUTPUT_NAME
from brevitas_ldm.export.static_shape_ifs import fold_static_shape_ifs
from brevitas_ldm.export.wide_qcdq import (
    WideQCDQONNXManager,
    move_wide_qdq_to_ms_domain,
)
from brevitas_ldm.export.wrapper import DenoiserForExport, export_signature
from brevitas_ldm.export.x86_storage import store_for_x86
from brevitas_ldm.io import atomic_file_path
from brevitas_ldm.registry import EXPORT_FORMATS


def _atomic_path(path: Path):
    """:func:`~brevitas_ldm.io.atomic_file_path`, refusing a directory as the export path first."""
    path = Path(path)
    if path.is_dir():
        raise BrevitasLDMError(f"export path {path} is a directory: pass a file path such as {path / 'unet.onnx'}")
    return atomic_file_path(path)


@contextmanager
def _clean_export_state(model: nn.Module):
    """Leave no Brevitas export handler or export mode behind, even when an export fails half-way."""
    try:
        yield
    finally:
        reset_export_state(model)


def onnx_kwargs(names: tuple[str, ...], tensors: tuple[torch.Tensor, ...], opset: int) -> dict[str, Any]:
    dynamic = {name: {0: "batch"} for name, t in zip(names, tensors) if t.dim() > 0}
    dynamic[OUTPUT_NAME] = {0: "batch"}
    return {"opset_version": opset, "dynamo": False, "input_names": list(names), "output_names": [OUTPUT_NAME],
            "dynamic_axes": dynamic}


def _exporter_error(export_format, exc: Exception) -> BrevitasLDMError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return BrevitasLDMError(f"Brevitas {export_format.name} export failed ({type(exc).__name__}: {first}): try "
                            f"{export_format.alternative}")


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


def check_weight_storage(fmt: str, weight_storage: str) -> None:
    """Refuse an unknown format, or a weight storage the format cannot use (the command line calls it before
    loading the model)."""
    EXPORT_FORMATS.get(str(fmt).lower(), "fmt").check_weight_storage(weight_storage)


def export_denoiser(denoiser: nn.Module, example_inputs: Mapping[str, torch.Tensor], path: str | Path,
                    fmt: str = "onnx-qcdq", opset: int = 17, weight_storage: str = "portable") -> Path:
    """Export a quantized, calibrated denoiser to ``path`` in the registered format ``fmt``; returns the path.

    ``example_inputs`` are the denoiser's keyword tensors for one call (their values only shape the trace; the
    batch dimension stays dynamic). The exported model takes the same names as positional inputs, in the order
    sample/hidden_states, timestep, then the conditioning, and returns the denoiser's output tensor.

    Formats (:data:`~brevitas_ldm.registry.EXPORT_FORMATS`, one module each in :mod:`brevitas_ldm.export.formats`):

    * ``onnx-qcdq``: int8/uint8 Q/DQ for tensors of 8 bits or fewer, nothing for float layers; 16-bit
      activations get int16 Q/DQ in onnxruntime's ``com.microsoft`` domain (standard ONNX int16 Q/DQ needs
      opset 21, which neither the TorchScript exporter nor onnxruntime's optimizer handles; see the module
      docstring). ``opset`` 13-20; FP8 (e4m3/e5m2) recipes need 19 or 20 and keep float weights with FP8 Q/DQ.
    * ``onnx-int8``: the ``onnx-qcdq`` file with every 8-bit quantized Conv/Linear lowered to onnxruntime's
      integer kernels (ConvInteger, MatMulIntegerToFloat; see :mod:`.integer_kernels`), the same model exactly.
    * ``openvino``: OpenVINO IR (``path`` ends in ``.xml``; the weights go to the ``.bin`` beside it): the
      ``onnx-qcdq`` graph with int8 weights in the form OpenVINO's low-precision transformations run as integer
      Convolution/FullyConnected kernels (see :mod:`.openvino_ir`); ``weight_storage`` does not apply (OpenVINO's
      convolution kernels take only int8 weights).
    * ``torch-qcdq``: a TorchScript file (``torch.jit.load``, positional inputs); ``opset`` is ignored.
    * ``qonnx``: QONNX ``Quant`` nodes with exact bit widths; not runnable in onnxruntime.

    ``weight_storage`` (ONNX formats): ``"portable"`` stores every 8-bit weight that could overflow onnxruntime's
    AVX2 u8s8 kernel as uint8 with a shifted zero point (same values; exact on every x86 CPU, see
    :mod:`.x86_storage`); ``"int8"`` keeps Brevitas' int8 weights, exact only on CPUs with VNNI/AMX
    (:func:`~brevitas_ldm.export.runtime.verify_onnx` refuses it elsewhere).

    Formats a model cannot use raise :class:`BrevitasLDMError` naming the format to use instead.
    """
    export_format = EXPORT_FORMATS.get(str(fmt).lower(), "fmt")
    export_format.check_weight_storage(weight_storage)
    features = check_exportable(denoiser, export_format.name, opset)
    return export_format.write(denoiser, example_inputs, Path(path), opset, weight_storage, features)


def brevitas_export(export_format, denoiser: nn.Module, example_inputs: Mapping[str, torch.Tensor],
                    path: str | Path, write_file) -> Path:
    """Run ``write_file(wrapper, names, tensors, tmp_path)`` (a Brevitas export manager call) the way every format
    needs it: the denoiser in eval mode and run once on the example inputs first, the file written to a temporary
    path renamed at the end, Brevitas' export state cleaned even on failure, and an exporter crash turned into a
    one-line error naming ``export_format.alternative``."""
    with _prepared_export(denoiser, example_inputs, path) as (wrapper, names, tensors, tmp), \
            _clean_export_state(denoiser), missing_symbolics():
        try:
            write_file(wrapper, names, tensors, tmp)
        except BrevitasLDMError:
            raise
        except (RuntimeError, AssertionError, NotImplementedError, ValueError, TypeError) as exc:
            raise _exporter_error(export_format, exc) from exc
    return Path(path)


def export_onnx_qcdq_file(wrapper: nn.Module, names, tensors, tmp: Path, opset: int, wide: bool, fp8: bool) -> None:
    import onnx

    kwargs = dict(onnx_kwargs(names, tensors, opset), keep_initializers_as_inputs=False)
    if fp8:
        # Brevitas exports FP8 weights only as float tensors followed by FP8 QuantizeLinear/DequantizeLinear.
        kwargs["export_weight_q_node"] = True
    if not wide:
        from brevitas.export import export_onnx_qcdq

        export_onnx_qcdq(wrapper, tensors, export_path=str(tmp), **kwargs)
        return
    WideQCDQONNXManager.export(wrapper, tensors, export_path=str(tmp), **kwargs)
    model = onnx.load(str(tmp))
    move_wide_qdq_to_ms_domain(model)
    onnx.save(model, str(tmp))


def export_layer_qcdq(module: nn.Module, example_input: torch.Tensor, path: str | Path, opset: int,
                      rewrite=None) -> Path:
    """One layer (``module(x)``, Brevitas-quantized or float) as a QCDQ file with the whole denoiser's options
    (16-bit activations in ``com.microsoft`` Q/DQ, dynamic batch), then ``rewrite(tmp_path)``; atomic. The latency
    table (:mod:`.latency_costs`) times layers in these files."""
    from brevitas_ldm.export.features import quant_features

    wide = max(quant_features(module)["act_bits"], default=0) > 8
    module = module.eval()
    with _atomic_path(Path(path)) as tmp, torch.no_grad(), _clean_export_state(module):
        export_onnx_qcdq_file(module, ("x",), (example_input,), tmp, opset, wide=wide, fp8=False)
        if rewrite is not None:
            rewrite(tmp)
    return Path(path)


def rewrite_for_onnxruntime(path: Path, integer_kernels: bool, portable: bool) -> None:
    """The project's graph passes on a freshly exported QCDQ file (in place, before the atomic rename)."""
    import onnx

    model = onnx.load(str(path))
    if not (fold_static_shape_ifs(model) or integer_kernels or portable):
        return
    if portable:
        store_for_x86(model)
    if integer_kernels:
        lower_to_integer_kernels(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_float_onnx(denoiser: nn.Module, example_inputs: Mapping[str, torch.Tensor], path: str | Path,
                      opset: int = 17) -> Path:
    """Export the FP32 denoiser with plain ``torch.onnx.export`` (TorchScript path), the deployment baseline.

    Same input/output names, dynamic batch axis and atomic write as :func:`export_denoiser`, so the two files
    can be run and timed with the same feeds and session options.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise BrevitasLDMError(f"opset {opset} is not available: the TorchScript ONNX exporter supports opsets "
                               f"{MIN_OPSET}-{MAX_OPSET}; pass opset=17")
    if any(True for _ in layer_proxies(denoiser)):
        raise ModelError(f"{type(denoiser).__name__} holds Brevitas quant layers: export_float_onnx needs the float "
                         f"denoiser (export it before quantize_denoiser); use export_denoiser for the quantized one")
    with _prepared_export(denoiser, example_inputs, path) as (wrapper, names, tensors, tmp), missing_symbolics():
        torch.onnx.export(wrapper, tensors, str(tmp), **onnx_kwargs(names, tensors, opset))
        import onnx

        model = onnx.load(str(tmp))
        if fold_static_shape_ifs(model):
            onnx.save(model, str(tmp))
    return Path(path)


