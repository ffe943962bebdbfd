"""Running exported files: onnxruntime sessions with the project's options, agreement with torch, latency.

The exported model is checked against the fake-quantized torch denoiser by :func:`verify_onnx` (SQNR in dB).
Quantization itself is reproduced exactly (same scales, zero points, round-half-even), and the integer kernels
onnxruntime picks are exact on every x86 kind because of the weight storage :mod:`.x86_storage` chooses; the two
differ only where a float rounding difference upstream (onnxruntime's kernels sum in another order; ~1e-7
relative) moves a value across a rounding boundary, a one-LSB flip that then propagates through the network.
Samples without a flip match to ~130 dB; how far a flip spreads depends on how sensitive the model is to
quantization noise. :func:`check_agreement` turns an agreement below the bound into a one-line error.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from brevitas_ldm.denoiser.sampling import first_tensor
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.export.cpu import cpu_info
from brevitas_ldm.export.emulation import run_onnx_emulated
from brevitas_ldm.export.features import layer_proxies
from brevitas_ldm.export.inspection import overflowing_int8_weights
from brevitas_ldm.export.integer_kernels import INTEGER_KERNELS
from brevitas_ldm.export.session import OUTPUT_NAME, session_options
from brevitas_ldm.export.wrapper import export_signature, nested_inputs
from brevitas_ldm.sqnr import sqnr_db


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
def torch_reference(denoiser: nn.Module, inputs: Mapping[str, Any], quantized: bool = True) -> torch.Tensor:
    """The torch denoiser's output on the exported file's (flat) inputs: fake-quantized, or with quantization off."""
    from brevitas.graph.calibrate import quantization_status_manager

    training = denoiser.training
    denoiser.eval()
    try:
        if quantized:
            return first_tensor(denoiser(**nested_inputs(inputs))).float()
        with quantization_status_manager(denoiser, disable_act_quant=True, disable_weight_quant=True,
                                         disable_bias_quant=True, is_training=False):
            return first_tensor(denoiser(**nested_inputs(inputs))).float()
    finally:
        denoiser.train(training)


def compare_outputs(reference: torch.Tensor, test: torch.Tensor) -> dict[str, float]:
    """SQNR (dB) and largest error of a runtime's output against the torch reference."""
    if reference.shape != test.shape:
        raise BrevitasLDMError(f"exported model output has shape {tuple(test.shape)}, the torch denoiser "
                               f"{tuple(reference.shape)}: re-export with example inputs shaped like these inputs")
    return {"sqnr_db": sqnr_db(reference, test), "max_abs_error": float((reference - test).abs().max()),
            "reference_rms": float(reference.pow(2).mean().sqrt())}


def verify_onnx(path: str | Path, denoiser: nn.Module, inputs: Mapping[str, Any], threads: int | None = None,
                emulate_cpu: str | None = None) -> dict[str, Any]:
    """Run the ONNX file in onnxruntime (CPU) and compare it with the fake-quantized torch ``denoiser``.

    ``inputs`` are fresh keyword tensors for one denoiser call. Returns ``sqnr_db`` (ONNX vs torch; >= 30 dB
    expected), ``max_abs_error``, ``quant_noise_sqnr_db`` (the fake-quantized denoiser against the same denoiser
    with quantization disabled, for scale: the export mismatch should sit well below the quantization noise) and
    ``cpu`` (:func:`~brevitas_ldm.export.cpu.cpu_info`: which kernels produced the figure). ``emulate_cpu``
    (e.g. ``"Haswell"``) runs onnxruntime on that CPU kind under qemu instead (:mod:`.emulation`).
    Use :func:`check_agreement` to turn a figure below the bound into an error.
    """
    session = _session(path, threads)
    feeds = _feeds(session, inputs)
    if emulate_cpu is None:
        raw = _run(session, feeds, path)
    else:
        raw = run_onnx_emulated(path, feeds, cpu=emulate_cpu, threads=threads or 1)
    return agreement_figures(denoiser, inputs, raw, path, emulate_cpu)


def agreement_figures(denoiser: nn.Module, inputs: Mapping[str, Any], raw: Any, path: str | Path,
                      emulate_cpu: str | None) -> dict[str, Any]:
    """What every runtime's check reports of its output ``raw`` (a numpy array) against the torch ``denoiser``:
    :func:`compare_outputs`, the model's own quantization noise for scale, the CPU that ran it and the file."""
    output = torch.from_numpy(raw).float()
    reference = torch_reference(denoiser, inputs)
    result = compare_outputs(reference, output)
    if any(True for _ in layer_proxies(denoiser)):
        result["quant_noise_sqnr_db"] = sqnr_db(torch_reference(denoiser, inputs, quantized=False), reference)
    result["cpu"] = cpu_info(emulated=emulate_cpu).to_dict()
    result["path"] = str(path)
    return result


class ExportMismatchError(BrevitasLDMError):
    """The exported file, run on this CPU, is not the model that was measured."""


#: An agreement within this many dB of the model's own quantization noise (vs its float twin) is "as loud": the
#: rounding flips a runtime's float summation order moves are then amplified exactly like the quantization noise.
NOISE_FLOOR_MARGIN_DB = 6.0


def check_agreement(result: Mapping[str, Any], min_sqnr_db: float = 30.0) -> None:
    """Raise :class:`ExportMismatchError` (one line: figure, CPU, cause, fix) if ``result`` is below the bound.

    ``result`` is what :func:`verify_onnx` or :func:`~brevitas_ldm.export.openvino_runtime.verify_openvino`
    returned. The usual cause on a CPU without VNNI is int8 weight storage that onnxruntime's AVX2 u8s8 kernel
    saturates; that is diagnosed from the file itself. When the disagreement is about as loud as the model's own
    quantization noise (random weights, very low bits: every one-step rounding flip spreads through the network
    like the quantization noise does), the file is the model and the bound is what is too strict for it, so the
    message says so and names ``--min-sqnr-db``.
    """
    if result["sqnr_db"] >= min_sqnr_db:
        return
    path = Path(result["path"])
    cpu = result["cpu"]
    runtime = str(result.get("runtime", "onnxruntime")).split()[0]
    where = f"{cpu['emulated']} (emulated)" if cpu.get("emulated") else cpu["model"]
    noise = float(result.get("quant_noise_sqnr_db", float("nan")))
    if path.suffix == ".xml":
        from brevitas_ldm.export.openvino_ir import (
            overflowing_ir_weights,  # lazy: openvino is imported there
        )

        overflowing = overflowing_ir_weights(path) if not cpu.get("vnni") else 0
    else:
        overflowing = overflowing_int8_weights(path)
    if overflowing and not cpu.get("vnni") and path.suffix == ".xml":
        cause = (f"{overflowing} int8 weight tensors exceed |q| <= 64 and this CPU has no VNNI, so OpenVINO's AVX2 "
                 f"int8 kernels saturate them")
        fix = ("quantize with 7-bit weights (--recipe minmax-w7a8-x86 or sqnr-hybrid-w7a8-x86), or export "
               "--format onnx-int8 (exact on every x86 kind)")
    elif overflowing and not cpu.get("vnni"):
        cause = (f"{overflowing} int8 weight tensors exceed |q| <= 64 and this CPU has no VNNI, so onnxruntime's "
                 f"AVX2 u8s8 kernel saturates them")
        fix = "re-export with weight_storage='portable' (--weight-storage portable)"
    elif math.isfinite(noise) and result["sqnr_db"] >= noise - NOISE_FLOOR_MARGIN_DB:
        cause = (f"the model's own quantization noise is about as loud ({noise:.1f} dB vs its float twin): with "
                 f"random weights or very low bits a one-step rounding flip from float summation order spreads "
                 f"through the network like that noise, so the file is the model")
        fix = (f"accept it with --min-sqnr-db {max(math.floor(result['sqnr_db']) - 1, 0):.0f} (min_sqnr_db=), or "
               f"give the sensitive blocks more bits")
    else:
        cause = (f"float rounding differences moved quantized values by one step and the model amplified them "
                 f"(its own quantization noise is at {noise:.1f} dB)")
        fix = "give the sensitive blocks more bits, or verify on more samples before trusting the file"
    raise ExportMismatchError(f"{path.name} is not the measured model on {where}: {runtime} agrees with the "
                              f"fake-quantized torch model at {result['sqnr_db']:.1f} dB < {min_sqnr_db:.0f} dB "
                              f"because {cause}; {fix}")


def integer_kernel_counts(path: str | Path, threads: int | None = 1) -> dict[str, dict[str, int]]:
    """Op counts of the graph onnxruntime actually runs (after its optimizer, :func:`session_options`).

    ``{"integer": {op: n}, "float": {op: n}}``: integer kernels (QLinearConv, ConvInteger, MatMulIntegerToFloat,
    ...) and the float Conv/MatMul/Gemm that remain (NCHWc and fused variants included), so ``export.json`` shows
    which layers really run on integers on this machine.
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="brevitas-ldm-optimized-") as tmp:
        options = session_options(threads)
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
    integer, floating = Counter(), Counter()
    for node in optimized.graph.node:
        if node.op_type in INTEGER_KERNELS:
            integer[node.op_type] += 1
        elif node.op_type in _FLOAT_KERNELS:
            floating[node.op_type] += 1
    return {"integer": dict(sorted(integer.items())), "float": dict(sorted(floating.items()))}


_FLOAT_KERNELS = ("Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "FusedGemm", "MatMulNBits")


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
    result = compare_outputs(torch_reference(denoiser, dict(zip(names, tensors))), output)
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
