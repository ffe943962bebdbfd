"""Measuring a latency cost table (:class:`~brevitas_ldm.planning.latency_table.LatencyTable`) in a target runtime.

Every quantizable layer of the float denoiser is exported alone (:meth:`ExportFormat.write_layer`: the same Brevitas
QCDQ form, graph passes and conversion as the whole denoiser's export) once per kernel its target runs the plan's
menu with (:meth:`LatencyTarget.kernel`), quantized at the menu's representative precision of that kernel and
calibrated on the input the layer saw in one real denoiser call, then timed in the target runtime, interleaved with
an empty model (a ReLU on the same input) whose time, the runtime's fixed cost of one call, is taken off. Layers
with the same shapes (type, weight shape, stride, padding, groups, bias and input shape) run the same kernels, so
one of them is measured for all. The float denoiser is exported and timed in the same runtime for the baseline,
and so is the whole denoiser with every layer on the integer kernel: the integer kernels' isolated costs are scaled
by one factor (``integer_scale``) so that the table predicts that model exactly too, which takes in what isolated
layers miss (the runtime fuses each quantize step into the layer before). The additive model is then exact at both
ends, the all-float and the all-integer plan, and its error on a mixed plan is what the report prints.

The table is cached in ``cache_dir`` under a key of everything its figures depend on (the layers' shapes, the
kernels and their representative precisions, the recipe's quantizer settings, the target, the runtime version, the
CPU model and ISA flags, the thread count and the batch), so a second job on the same model and machine reads it
and a job on another CPU or runtime measures its own.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from brevitas_ldm.denoiser.blocks import quantizable_layers
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.export.cpu import cpu_info
from brevitas_ldm.export.exporters import export_denoiser
from brevitas_ldm.export.wrapper import export_signature, nested_inputs
from brevitas_ldm.planning.latency_table import LATENCY_TABLE_FILE, LatencyTable
from brevitas_ldm.planning.latency_targets.base import FLOAT_KERNEL, INTEGER_KERNEL, LatencyTarget
from brevitas_ldm.precision import Precision
from brevitas_ldm.process.timing import interleaved_latency
from brevitas_ldm.quant.quantize import quantize_denoiser
from brevitas_ldm.recipe import Recipe
from brevitas_ldm.registry import EXPORT_FORMATS, LATENCY_TARGETS

#: Flags beyond the integer ones that change what a runtime runs float work in (OpenVINO's bf16 paths).
_FLOAT_ISA_FLAGS = ("avx512_bf16", "amx_bf16", "amx_int8")
#: Seconds of timed calls per group of same-shaped layers (all its kernels and the empty model together).
TIME_PER_GROUP_S = 0.4
MIN_ROUNDS, MAX_ROUNDS = 5, 40
FLOAT_ROUNDS = 15
#: Bounds of the whole-model correction of the integer kernels' isolated costs (outside them the isolated figures
#: are wrong in a way a scale cannot mend, and are kept).
MIN_INTEGER_SCALE, MAX_INTEGER_SCALE = 0.3, 1.5


class SingleLayer(nn.Module):
    """One layer as a model of its own (``layer`` keeps the name the quantizer and the exporter see)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def machine_isa() -> tuple[str, list[str]]:
    """The CPU model and the ISA flags that pick the runtimes' integer and float kernels."""
    info = cpu_info()
    flags = list(info.isa_flags)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                flags += [flag for flag in _FLOAT_ISA_FLAGS if flag in value.split() and flag not in flags]
                break
    return info.model, flags


def runtime_version(target: LatencyTarget) -> str:
    if target.runtime == "openvino":
        from brevitas_ldm.export.openvino_runtime import openvino_version

        return f"openvino {openvino_version()}"
    return f"onnxruntime {cpu_info().onnxruntime}"


def layer_inputs(denoiser: nn.Module, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Layer name -> the input tensor it saw in one call of ``denoiser`` on ``inputs`` (its first call)."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name, layer in quantizable_layers(denoiser):
        def hook(module, args, name=name):
            captured.setdefault(name, args[0].detach().clone())
        handles.append(layer.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            denoiser(**nested_inputs(dict(inputs)), return_dict=False)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def layer_signature(layer: nn.Module, example: torch.Tensor) -> str:
    """What decides a layer's kernels and their cost: its type, weight shape, conv geometry, bias, input shape."""
    parts = [type(layer).__name__, tuple(layer.weight.shape), layer.bias is not None, tuple(example.shape)]
    if isinstance(layer, nn.Conv2d):
        parts += [layer.stride, layer.padding, layer.dilation, layer.groups]
    return repr(tuple(parts))


def _calibrated(model: nn.Module, recipe: Recipe, precisions: Mapping[str, Precision], call) -> nn.Module:
    """``model`` (a copy) quantized at ``precisions`` and calibrated on the one ``call(model)``: its scales only
    decide values, not latency."""
    from brevitas.graph.calibrate import calibration_mode

    quantize_denoiser(model, recipe, precisions)
    model.eval()
    with torch.no_grad(), calibration_mode(model):
        call(model)
    return model


def _quantized(layer: nn.Module, recipe: Recipe, precision: Precision, example: torch.Tensor) -> nn.Module:
    model = SingleLayer(copy.deepcopy(layer)).eval()
    if precision.is_float:
        return model
    return _calibrated(model, recipe, {"layer": precision}, lambda m: m(example))


def timed_rounds(calls: Mapping[str, Any], seconds: float, low: int = MIN_ROUNDS, high: int = MAX_ROUNDS) -> int:
    """Interleaved rounds of ``calls`` that take about ``seconds``, from one untimed pass over them (in [low, high])."""
    start = time.perf_counter()
    for call in calls.values():
        call()
    once = time.perf_counter() - start
    return int(min(high, max(low, math.ceil(seconds / max(once, 1e-6)))))


def _whole_integer_file(denoiser: nn.Module, inputs: Mapping[str, Any], recipe: Recipe, precision: Precision,
                        target: LatencyTarget, path: Path) -> Path:
    """The whole denoiser with every layer at the integer kernel's precision, written in the target's format."""
    model = _calibrated(copy.deepcopy(denoiser).eval(), recipe,
                        {name: precision for name, _ in quantizable_layers(denoiser)},
                        lambda m: m(**nested_inputs(dict(inputs)), return_dict=False))
    written = export_denoiser(model, inputs, path, fmt=target.export_format, weight_storage="portable")
    del model
    return written


def table_key(target: LatencyTarget, version: str, cpu: str, isa: Sequence[str], threads: int, batch: int,
              signatures: Mapping[str, str], representatives: Mapping[str, Precision], recipe: Recipe) -> str:
    quantizers = {"weights": repr(recipe.weights), "activations": repr(recipe.activations),
                  "deploy": repr(recipe.deploy)}
    blob = json.dumps({"target": target.name, "version": version, "cpu": cpu, "isa": list(isa), "threads": threads,
                       "batch": batch, "signatures": dict(sorted(signatures.items())),
                       "kernels": {k: str(p) for k, p in sorted(representatives.items())}, "quantizers": quantizers,
                       "table": 2}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def measure_latency_table(denoiser: nn.Module, inputs: Mapping[str, Any], recipe: Recipe, target: str,
                          menu: Sequence[Precision], threads: int = 1, cache_dir: str | Path | None = None,
                          opset: int = 17, progress: bool = False) -> LatencyTable:
    """The latency table of the float ``denoiser`` at the denoiser call ``inputs`` in ``target`` (module docstring).

    ``menu`` is the plan's menu (its kernels are measured; float always is). ``cache_dir``: read the table from
    there when one with the same key exists, else measure it and write it there (atomically).
    """
    from tqdm.auto import tqdm

    latency_target = LATENCY_TARGETS.get(target)
    latency_target.check_menu(menu)
    export_format = EXPORT_FORMATS.get(latency_target.export_format)
    kernels = sorted({latency_target.kernel(p) for p in menu} | {FLOAT_KERNEL})
    representatives = {k: (latency_target.representative(menu, k) if k != FLOAT_KERNEL else Precision(None, None))
                       for k in kernels}
    examples = layer_inputs(denoiser, inputs)
    layers = dict(quantizable_layers(denoiser))
    missing = [name for name in layers if name not in examples]
    if missing:
        raise BrevitasLDMError(f"layers {', '.join(missing[:3])} did not run in the denoiser call, so they cannot be "
                               f"timed: plan.target needs every quantizable layer to run (skip the others with "
                               f"skip_layers)")
    signatures = {name: layer_signature(layer, examples[name]) for name, layer in layers.items()}
    names, tensors = export_signature(denoiser, inputs)
    batch = int(tensors[0].shape[0])
    cpu, isa = machine_isa()
    version = runtime_version(latency_target)
    key = table_key(latency_target, version, cpu, isa, threads, batch, signatures, representatives, recipe)
    cached = Path(cache_dir) / f"latency-{key}" / LATENCY_TABLE_FILE if cache_dir is not None else None
    if cached is not None and cached.is_file():
        table = LatencyTable.load(cached)
        table.from_cache = True
        return table

    start = time.perf_counter()
    groups: dict[str, list[str]] = {}
    for name, signature in signatures.items():
        groups.setdefault(signature, []).append(name)
    costs: dict[str, dict[str, float]] = {}
    overheads: list[float] = []
    suffix = export_format.suffix
    with tempfile.TemporaryDirectory(prefix="brevitas-ldm-latency-") as tmp:
        float_path = export_format.write_float(denoiser, inputs, Path(tmp) / f"fp32.{suffix}", opset)
        float_call = export_format.runner(float_path, dict(zip(names, tensors)), threads)
        # Timed before the layers and after them, the faster figure kept: a runtime that has just compiled and
        # freed dozens of small models runs the next call slower for a while, which is not the model's cost.
        fp_before = interleaved_latency({"fp": float_call}, rounds=FLOAT_ROUNDS, warmup=3)["fp"]["median_ms"]
        bar = tqdm(groups.items(), desc=f"latency table ({target})", unit="layer shape", disable=not progress)
        for index, (signature, members) in enumerate(bar):
            layer, example = layers[members[0]], examples[members[0]]
            calls = {}
            empty = export_format.write_layer(SingleLayer(nn.ReLU()), example, Path(tmp) / f"{index}-empty.{suffix}",
                                              opset)
            calls["empty"] = export_format.runner(empty, {"x": example}, threads)
            for kernel in kernels:
                model = _quantized(layer, recipe, representatives[kernel], example)
                path = export_format.write_layer(model, example, Path(tmp) / f"{index}-{kernel}.{suffix}", opset)
                calls[kernel] = export_format.runner(path, {"x": example}, threads)
            timed = interleaved_latency(calls, rounds=timed_rounds(calls, TIME_PER_GROUP_S), warmup=1)
            overhead = timed["empty"]["median_ms"]
            overheads.append(overhead)
            for member in members:
                costs[member] = {kernel: max(timed[kernel]["median_ms"] - overhead, 0.0) for kernel in kernels}
            for written in Path(tmp).glob(f"{index}-*"):
                written.unlink()
        whole = {"fp": float_call}
        if INTEGER_KERNEL in kernels:
            integer_path = _whole_integer_file(denoiser, inputs, recipe, representatives[INTEGER_KERNEL],
                                               latency_target, Path(tmp) / f"integer.{suffix}")
            whole["integer"] = export_format.runner(integer_path, dict(zip(names, tensors)), threads)
        timed = interleaved_latency(whole, rounds=FLOAT_ROUNDS, warmup=3)
    fp_after = timed["fp"]["median_ms"]
    fp_ms = min(fp_before, fp_after)
    rest = fp_ms - math.fsum(c[FLOAT_KERNEL] for c in costs.values())
    integer_ms, integer_scale = math.nan, 1.0
    if "integer" in timed:
        # The all-integer model, timed whole against the float one: the integer kernels' costs are scaled so the
        # table predicts it exactly too (isolated layers miss what the runtime fuses around them).
        integer_ms = timed["integer"]["median_ms"] * fp_ms / fp_after
        isolated = math.fsum(c[INTEGER_KERNEL] for c in costs.values())
        if isolated > 0:
            integer_scale = min(max((integer_ms - rest) / isolated, MIN_INTEGER_SCALE), MAX_INTEGER_SCALE)
            for layer_costs in costs.values():
                layer_costs[INTEGER_KERNEL] *= integer_scale
    table = LatencyTable(target=target, runtime=version, inference_precision=latency_target.inference_precision,
                         cpu=cpu, isa=isa, threads=threads, batch_size=batch, fp_ms=fp_ms, rest_ms=rest,
                         overhead_ms=float(sorted(overheads)[len(overheads) // 2]) if overheads else 0.0,
                         layers=costs, integer_ms=integer_ms, integer_scale=integer_scale, key=key,
                         measured_s=time.perf_counter() - start)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        table.save(cached)
    return table
