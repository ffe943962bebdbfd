"""Running OpenVINO IR on the CPU: verification against the torch model, integer-kernel counts, latency.

Every figure is taken with an explicit ``INFERENCE_PRECISION_HINT``. Under default hints OpenVINO runs the float
parts of a model in bf16 on CPUs with AVX-512 bf16 or AMX and in f32 elsewhere, so a default-hint figure depends on
the CPU kind; verification therefore runs at ``f32`` (the precision the torch model was measured in) and every
result records the precision it ran at. ``precision=None`` leaves OpenVINO's default (what a user gets without
hints), and the figure records the precision the plugin actually chose.

Which layers ran on integers is read from the compiled runtime model (``get_runtime_model()``): each executed node
carries ``layerType`` and ``runtimePrecision``; a ``Convolution`` or ``FullyConnected``/``MatMul`` whose runtime
precision is u8/i8 *and whose data input arrives as u8/i8* is an integer kernel (a ``FullyConnected`` reports
``i8`` for int8 weights alone too, when it decompresses them for a float input: a weight-only or 16-bit-activation
layer, which is not an integer kernel).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.export.openvino_ir import ir_size_bytes
from brevitas_ldm.export.runtime import agreement_figures
from brevitas_ldm.export.wrapper import export_signature

#: Emulated CPU kinds -> the oneDNN ISA cap that makes OpenVINO's CPU plugin pick that kind's kernels. Unlike
#: onnxruntime, OpenVINO stalls under qemu user mode; capping oneDNN's dispatch (``ONEDNN_MAX_CPU_ISA``) selects
#: the AVX2 int8 kernels (``jit_avx2_I8``, read from the runtime model's ``primitiveType``) on any newer x86 CPU.
ONEDNN_ISA_CAPS = {"Haswell": "AVX2"}
_WORKER = Path(__file__).with_name("openvino_worker.py")
#: Precisions an OpenVINO figure can be taken at (``None``: the plugin's default for this CPU).
INFERENCE_PRECISIONS = ("f32", "bf16")
#: Runtime layer types that are a model's Conv/Linear/MatMul work.
_WORK_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul", "Gemm")
_INTEGER_PRECISIONS = ("u8", "i8")
_ATTENTION_SUBGRAPH = "Subgraph"


def openvino_version() -> str:
    import openvino as ov

    return ov.__version__


def compile_ir(path: str | Path, threads: int | None = None, precision: str | None = "f32"):
    """``openvino.Core().compile_model`` for the CPU with ``threads`` inference threads and ``precision``."""
    import openvino as ov

    path = Path(path)
    if not path.is_file():
        raise BrevitasLDMError(f"OpenVINO file {path} does not exist: export it first with --format openvino")
    if precision is not None and precision not in INFERENCE_PRECISIONS:
        raise BrevitasLDMError(f"unknown OpenVINO inference precision {precision!r}: use one of "
                               f"{', '.join(INFERENCE_PRECISIONS)}, or None for the CPU's default")
    # DYNAMIC_QUANTIZATION_GROUP_SIZE 0: OpenVINO's CPU plugin may otherwise quantize the float input of a Linear
    # layer with int8 weights to int8 on the fly, replacing a plan's 16-bit/float activation by int8.
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    try:
        return ov.Core().compile_model(str(path), "CPU", config)
    except Exception as exc:  # OpenVINO raises its own exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise BrevitasLDMError(f"OpenVINO cannot compile {path.name} ({first}): re-export it with "
                               f"--format openvino") from None


def inference_precision(compiled) -> str:
    """The float precision the compiled model runs its float layers in (``f32``, ``bf16``, ``f16``)."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    return value.to_string() if hasattr(value, "to_string") else str(value)


def input_name(port, inputs: Mapping[str, Any]) -> str:
    """The name of a model input among ``inputs``: an OpenVINO input tensor can carry several names (Flux's
    timestep is both ``timestep`` and the Cast output the exporter gave it), and ``get_any_name`` picks any."""
    names = port.get_names()
    return next((name for name in sorted(names) if name in inputs), port.get_any_name())


def _feeds(compiled, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    feeds = {}
    for port in compiled.inputs:
        name = input_name(port, inputs)
        if name not in inputs:
            raise BrevitasLDMError(f"input {name!r} of the OpenVINO model is missing from inputs: pass "
                                   f"{', '.join(input_name(p, inputs) for p in compiled.inputs)}")
        value = inputs[name]
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        feeds[name] = array.astype(port.get_element_type().to_dtype(), copy=False)
    return feeds


def _run(request, feeds: dict[str, np.ndarray], path: str | Path) -> np.ndarray:
    try:
        return np.array(request.infer(feeds)[0], copy=True)
    except Exception as exc:  # OpenVINO raises its own exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
        raise BrevitasLDMError(f"OpenVINO failed to run {Path(path).name} on inputs {shapes} ({first}): pass "
                               f"inputs shaped like the export's example inputs (only the batch may differ)") from None


def _named_inputs(denoiser: nn.Module, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The exported file's input names -> tensors (SDXL's nested dict flattened the way the export flattens it)."""
    names, tensors = export_signature(denoiser, inputs)
    return dict(zip(names, tensors))


def _run_emulated(path: str | Path, feeds: dict[str, np.ndarray], cpu: str, threads: int) -> np.ndarray:
    """The output of the IR on ``feeds`` with OpenVINO's kernels capped to the ``cpu`` kind (a worker process)."""
    if cpu not in ONEDNN_ISA_CAPS:
        raise BrevitasLDMError(f"cannot emulate CPU {cpu!r} for OpenVINO: use one of {', '.join(ONEDNN_ISA_CAPS)}")
    with tempfile.TemporaryDirectory(prefix="brevitas-ldm-ov-emulated-") as tmp:
        feeds_path, out_path = Path(tmp) / "feeds.npz", Path(tmp) / "out.npy"
        np.savez(feeds_path, **feeds)
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": ONEDNN_ISA_CAPS[cpu]}
        done = subprocess.run([sys.executable, str(_WORKER), str(path), str(feeds_path), str(out_path), str(threads)],
                              capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0 or not out_path.is_file():
            last = ([line for line in done.stderr.splitlines() if line] or ["no message"])[-1][:200]
            raise BrevitasLDMError(f"OpenVINO failed with its kernels capped to {cpu} ({last}): check that "
                                   f"{Path(path).name} runs natively first")
        return np.load(out_path)


def verify_openvino(path: str | Path, denoiser: nn.Module, inputs: Mapping[str, Any], threads: int | None = None,
                    precision: str | None = "f32", emulate_cpu: str | None = None) -> dict[str, Any]:
    """Run the IR in OpenVINO (CPU) and compare it with the fake-quantized torch ``denoiser``.

    Same figures as :func:`~brevitas_ldm.export.runtime.verify_onnx` (``sqnr_db``, ``max_abs_error``,
    ``quant_noise_sqnr_db``, ``cpu``) plus ``runtime`` (``"openvino"`` and its version) and
    ``inference_precision`` (what the float layers ran in). ``emulate_cpu="Haswell"`` runs it with OpenVINO's
    kernels capped to AVX2 (:data:`ONEDNN_ISA_CAPS`), whose int8 products saturate 8-bit weights above
    ``|q| = 64`` where VNNI/AMX kernels do not. Use :func:`check_agreement` for the bound.
    """
    compiled = compile_ir(path, threads, precision)
    named = _named_inputs(denoiser, inputs)
    feeds = _feeds(compiled, named)
    if emulate_cpu is None:
        raw = _run(compiled.create_infer_request(), feeds, path)
    else:
        raw = _run_emulated(path, feeds, emulate_cpu, threads or 1)
    result = agreement_figures(denoiser, named, raw, path, emulate_cpu)
    result["runtime"] = f"openvino {openvino_version()}"
    result["inference_precision"] = inference_precision(compiled) if emulate_cpu is None else "f32"
    return result


def openvino_kernel_counts(path: str | Path, threads: int | None = 1,
                           precision: str | None = "f32") -> dict[str, Any]:
    """Conv/Linear/MatMul layers of the compiled runtime model by runtime precision.

    ``{"integer": {layer type: n}, "float": {layer type: n}, "by_precision": {"Convolution u8": n, ...},
    "inference_precision": ...}``: integer layers are those OpenVINO runs in u8/i8 on u8/i8 data on this machine
    (``by_precision`` is the plugin's own ``runtimePrecision``, weight-compressed float layers included). An
    ``"Attention"`` entry counts the fused attentions whose scores run on u8/i8 (``[deploy] quantize_query_key``).
    """
    compiled = compile_ir(path, threads, precision)
    integer, floating, by_precision = Counter(), Counter(), Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        if layer != _ATTENTION_SUBGRAPH and layer not in _WORK_LAYERS:
            continue
        runtime = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
        inputs = [op.input(i).get_element_type().to_string() for i in range(min(op.get_input_size(), 2))]
        data = inputs[0] if inputs else "?"
        if layer == _ATTENTION_SUBGRAPH:
            # OpenVINO fuses an attention (MatMul, Softmax, MatMul) into one Subgraph: integer when its scores' two
            # inputs are (``[deploy] quantize_query_key``); float ones are not counted, nor are elementwise Subgraphs
            if runtime in _INTEGER_PRECISIONS and len(inputs) == 2 and set(inputs) <= set(_INTEGER_PRECISIONS):
                integer["Attention"] += 1
                by_precision[f"Attention {runtime}"] += 1
            continue
        (integer if runtime in _INTEGER_PRECISIONS and data in _INTEGER_PRECISIONS else floating)[layer] += 1
        by_precision[f"{layer} {runtime}"] += 1
    return {"integer": dict(sorted(integer.items())), "float": dict(sorted(floating.items())),
            "by_precision": dict(sorted(by_precision.items())), "inference_precision": inference_precision(compiled)}


def openvino_latency(path: str | Path, inputs: Mapping[str, Any], repeats: int = 20, warmup: int = 3,
                     threads: int | None = None, precision: str | None = "f32") -> dict[str, Any]:
    """Wall-clock milliseconds per synchronous OpenVINO call (CPU, one stream) and the IR size in bytes.

    ``inputs`` are the file's named input tensors (as :func:`verify_openvino` feeds them). Same protocol as
    :func:`~brevitas_ldm.export.runtime.onnx_latency`: ``warmup`` untimed calls (at least one), then ``repeats``
    timed ones; the median is the figure to compare.
    """
    if repeats < 1 or warmup < 0:
        raise BrevitasLDMError(f"repeats={repeats}, warmup={warmup}: need repeats >= 1 and warmup >= 0")
    compiled = compile_ir(path, threads, precision)
    request = compiled.create_infer_request()
    feeds = _feeds(compiled, inputs)
    _run(request, feeds, path)
    for _ in range(max(warmup - 1, 0)):
        request.infer(feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        request.infer(feeds)
        times.append((time.perf_counter() - start) * 1000.0)
    return {"median_ms": statistics.median(times), "mean_ms": statistics.fmean(times), "min_ms": min(times),
            "stdev_ms": statistics.stdev(times) if len(times) > 1 else 0.0, "repeats": repeats, "warmup": warmup,
            "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "inference_precision": inference_precision(compiled), "size_bytes": ir_size_bytes(path)}
