"""Deployment benchmark: the project's ONNX exports vs FP32 ONNX and onnxruntime's own quantizers, on CPU.

For each model, in one process, on the same real denoiser inputs (captured from the pipeline's own sampling):

1. the FP32 denoiser is exported with :func:`brevitas_ldm.export.export_float_onnx`;
2. a copy is quantized with ``minmax-w8a8`` and calibrated as the recipe says; the calibration calls that fed the
   activation observers are captured (after the calibration context rewrote them) and reused, unchanged, as the
   ``CalibrationDataReader`` of onnxruntime's ``quantize_static`` peer; the model is exported as ``onnx-int8``
   (the deployment format) and ``onnx-qcdq`` (reference);
3. (tiny-sd-digits; ``--hybrid`` models) another copy is quantized with the ``sqnr-hybrid-w8a8`` plan through
   :func:`brevitas_ldm.quantize_pipeline` (global + local analysis, SmoothQuant, calibration) and exported as
   ``onnx-int8``;
4. peers: ``onnxruntime.quantization.quantize_static`` (QOperator, per-channel, reduce_range, MinMax) and
   ``quantize_dynamic`` (uint8 weights) of the same FP32 file;
5. every file runs with :func:`brevitas_ldm.export.session_options`; latency is timed in interleaved rounds (each
   round runs every file once untimed, then ``--repeats`` timed times, round-robin, sessions created once) and reported
   as the median over rounds of the per-round ratio to FP32, at each ``--threads`` count; SQNR vs the FP torch denoiser
   on fresh inputs (other prompts, seeds and steps), SQNR vs the project's fake-quantized torch model (its own rows),
   and the integer kernels / remaining float Conv/MatMul/Gemm after onnxruntime's optimizer
   (:func:`brevitas_ldm.export.integer_kernel_counts`). One call of each FP32 and project int8 file is profiled
   (``SessionOptions.enable_profiling``) to tell which op types dominate.

The SD-1.5-shaped model is ``benchmarks/scale.py``'s random-weight UNet at half channel width
(block_out_channels 160, 320, 640, 640; ~220 M parameters), 32x32 latents, timed at batch 1.

    python benchmarks/deployment.py --models tiny-sd-digits sd15-half --threads 1 2 \
        --out docs/deployment.md
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

SD_MODEL = "sd15-half"
SD_HALF_CHANNELS = (160, 320, 640, 640)
FP_ROW = "FP32 ONNX"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny-sd-digits", SD_MODEL],
                        help=f"embedded model names / pipeline dirs, or {SD_MODEL!r} (SD-1.5-shaped, half width)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="onnxruntime intra-op threads")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (small models)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per file and round (small models)")
    parser.add_argument("--sd-rounds", type=int, default=3, help="interleaved timing rounds for the SD-shaped UNet")
    parser.add_argument("--sd-repeats", type=int, default=2, help="timed calls per file and round, SD-shaped UNet")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per file before the first round")
    parser.add_argument("--hybrid", nargs="*", default=["tiny-sd-digits"],
                        help="models that also get the sqnr-hybrid-w8a8 plan row (costly: global + local analysis)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (small models)")
    parser.add_argument("--sd-steps", type=int, default=6, help="sampling steps for the SD-shaped UNet")
    parser.add_argument("--sd-calibration-prompts", type=int, default=2,
                        help="calibration prompts for the SD-shaped UNet (small models: the recipe's number)")
    parser.add_argument("--latent-size", type=int, default=32, help="latent size of the SD-shaped UNet")
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--verify-prompts", type=int, default=4, help="fresh prompts for the SQNR (small models)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="keep the ONNX files in this folder")
    parser.add_argument("--out", type=Path, default=Path("docs/deployment.md"),
                        help="markdown page; the JSON goes beside it with suffix .json")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# Real denoiser inputs
# ---------------------------------------------------------------------------------------------------------------
def _broadcast_timestep(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    batch = inputs["sample"].shape[0]
    inputs["timestep"] = inputs["timestep"].reshape(-1).expand(batch).clone()
    return inputs


def capture_calls(pipe, prompts, seeds, spec, keep_steps: set[int]) -> list[dict[str, torch.Tensor]]:
    """Keyword inputs of the denoiser calls at ``keep_steps``, timesteps broadcast to the batch."""
    from brevitas_ldm.export import capture_denoiser_calls

    return [_broadcast_timestep(call) for call in capture_denoiser_calls(pipe, prompts, seeds, spec, keep_steps)]


def concat_calls(calls: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.cat([call[key] for call in calls]) for key in calls[0]}


def calibrate_capturing(pipe, recipe, prompts, seeds, spec) -> tuple[Any, list[dict[str, torch.Tensor]]]:
    """``calibrate_pipeline`` that also returns the inputs of every call that fed the activation observers.

    An instance-level ``forward`` is installed before the calibration context wraps it, so it sees each call as
    the context executes it (timestep already replaced in single-step mode; short-circuited calls never arrive)
    and records it when the activation proxies are observing.
    """
    from brevitas.proxy.runtime_quant import ActQuantProxyFromInjectorBase

    from brevitas_ldm.denoiser.sampling import get_denoiser
    from brevitas_ldm.quant.calibration import calibrate_pipeline

    denoiser = get_denoiser(pipe)
    proxies = [m for m in denoiser.modules() if isinstance(m, ActQuantProxyFromInjectorBase)]
    class_forward = type(denoiser).forward
    signature = inspect.signature(denoiser.forward)  # the bound class forward, before ours replaces it
    observed: list[dict[str, torch.Tensor]] = []

    def recording_forward(*args, **kwargs):
        if proxies and proxies[0].training:
            bound = signature.bind(*args, **kwargs).arguments
            observed.append(_broadcast_timestep({k: v.detach().clone() for k, v in bound.items()
                                                 if isinstance(v, torch.Tensor)}))
        return class_forward(denoiser, *args, **kwargs)

    denoiser.forward = recording_forward
    try:
        context = calibrate_pipeline(pipe, recipe, prompts, seeds, spec)
    finally:
        del denoiser.forward
    return context, observed


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------
def load_model(name: str, args):
    """(pipeline, description, sampling steps, calibration prompts or None for the recipe's, timing batch)."""
    if name != SD_MODEL:
        from brevitas_ldm.denoiser.loading import load_pipeline, model_display_name

        return load_pipeline(name), model_display_name(name), args.steps, None, None
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scale_measure import build_pipeline

    pipe = build_pipeline(args.latent_size, args.seed, SD_HALF_CHANNELS)
    description = (f"random-weight SD-1.5-shaped UNet2DConditionModel at half width (block_out_channels "
                   f"{SD_HALF_CHANNELS}, SD-1.5's blocks otherwise), {args.latent_size}x{args.latent_size} latents")
    return pipe, description, args.sd_steps, args.sd_calibration_prompts, 1


# ---------------------------------------------------------------------------------------------------------------
# onnxruntime
# ---------------------------------------------------------------------------------------------------------------
_ORT_TO_NUMPY = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
                 "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def make_session(path: Path, threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    from brevitas_ldm.export import session_options

    options = session_options(threads)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds_for(session, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    feeds = {}
    for arg in session.get_inputs():
        array = inputs[arg.name].detach().cpu().numpy()
        feeds[arg.name] = array.astype(_ORT_TO_NUMPY.get(arg.type, array.dtype), copy=False)
    return feeds


def run_onnx(path: Path, inputs: dict[str, torch.Tensor], threads: int) -> torch.Tensor:
    session = make_session(path, threads)
    return torch.from_numpy(session.run(None, feeds_for(session, inputs))[0]).float()


class CapturedReader:
    """onnxruntime ``CalibrationDataReader`` over captured denoiser calls (one feed per call)."""

    def __init__(self, calls: list[dict[str, torch.Tensor]], input_types: dict[str, str]) -> None:
        self._feeds = [{name: call[name].numpy().astype(_ORT_TO_NUMPY.get(kind, np.float32), copy=False)
                        for name, kind in input_types.items()} for call in calls]
        self._next = iter(self._feeds)

    def get_next(self):
        return next(self._next, None)

    def rewind(self) -> None:
        self._next = iter(self._feeds)


def ort_peers(fp_path: Path, workdir: Path, calls: list[dict[str, torch.Tensor]]) -> dict[str, Path]:
    """onnxruntime's own static (QOperator, per-channel, reduce_range, MinMax) and dynamic quantization."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    session = make_session(fp_path, 1)
    reader = CapturedReader(calls, {arg.name: arg.type for arg in session.get_inputs()})
    del session
    static = workdir / "ort-static-qoperator.onnx"
    with tempfile.TemporaryDirectory(prefix="ort-calib-") as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # quantize_static writes its augmented model into the working directory on some versions
        try:
            quantize_static(str(fp_path), str(static), reader, quant_format=QuantFormat.QOperator,
                            per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        finally:
            os.chdir(cwd)
    dynamic = workdir / "ort-dynamic-u8.onnx"
    quantize_dynamic(str(fp_path), str(dynamic), weight_type=QuantType.QUInt8)
    return {"onnxruntime quantize_static (QOperator, per-channel, reduce_range)": static,
            "onnxruntime quantize_dynamic (uint8 weights)": dynamic}


def interleaved_timing(paths: dict[str, Path], inputs: dict[str, torch.Tensor], threads: int, rounds: int,
                       repeats: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Per file: median ms per round and the median over rounds of the per-round latency ratio to FP32."""
    sessions = {name: make_session(path, threads) for name, path in paths.items()}
    feeds = {name: feeds_for(session, inputs) for name, session in sessions.items()}
    for name, session in sessions.items():
        for _ in range(max(warmup, 1)):
            session.run(None, feeds[name])
    per_round: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, session in sessions.items():
            # One untimed call when the round comes to a file: a denoising loop calls one session 20-50 times in
            # a row, so its steady-state latency is what counts, not the first call after another session ran
            # (measured at 2 threads on the SD-shaped UNet: that first call costs the int8 file 192 ms against
            # 131 ms in steady state, and would be half of a 2-call round's median).
            session.run(None, feeds[name])
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                session.run(None, feeds[name])
                times.append((time.perf_counter() - start) * 1000.0)
            per_round[name].append(statistics.median(times))
    fp = per_round[FP_ROW]
    return {name: {"median_ms": statistics.median(values), "round_ms": values,
                   "ratio_vs_fp32": statistics.median(v / f for v, f in zip(values, fp)),
                   "round_ratios": [v / f for v, f in zip(values, fp)]}
            for name, values in per_round.items()}


def op_profile(path: Path, inputs: dict[str, torch.Tensor], threads: int, workdir: Path, top: int = 6) -> dict:
    """Share of one call's node time by op type (onnxruntime's profiler), after one warm-up call."""
    session = make_session(path, threads, profile_prefix=str(workdir / f"profile-{path.stem}"))
    feeds = feeds_for(session, inputs)
    session.run(None, feeds)
    session.run(None, feeds)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    last_start = runs[-1]["ts"] if runs else 0
    by_op: Counter = Counter()
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time") and event["ts"] >= last_start:
            by_op[event.get("args", {}).get("op_name", "?")] += event.get("dur", 0)
    total = sum(by_op.values()) or 1
    return {"total_node_ms": total / 1000.0,
            "top_ops": [{"op": op, "ms": us / 1000.0, "share": us / total} for op, us in by_op.most_common(top)]}


# ---------------------------------------------------------------------------------------------------------------
# One model
# ---------------------------------------------------------------------------------------------------------------
def bench_model(name: str, args, workdir: Path) -> dict[str, Any]:
    from brevitas_ldm.denoiser.sampling import SamplingSpec, first_tensor, get_denoiser
    from brevitas_ldm.evaluation.prompts import calibration_set
    from brevitas_ldm.export import (
        export_denoiser,
        export_float_onnx,
        integer_kernel_counts,
        verify_onnx,
    )
    from brevitas_ldm.quant.quantize import quantize_denoiser
    from brevitas_ldm.recipe import get_recipe
    from brevitas_ldm.sqnr import sqnr_db
    from brevitas_ldm.workflow import quantize_pipeline
    from brevitas_ldm.zoo.data import prompt_for

    started = time.perf_counter()
    def log(msg):
        return print(f"[{name} +{time.perf_counter() - started:6.0f}s] {msg}", file=sys.stderr, flush=True)
    is_sd = name == SD_MODEL
    pipe, description, steps, n_calib, timing_batch = load_model(name, args)
    fp_denoiser = get_denoiser(pipe).eval()
    fp_copy = copy.deepcopy(fp_denoiser)
    params = sum(p.numel() for p in fp_denoiser.parameters())
    mdir = workdir / name.replace("/", "_")
    mdir.mkdir(parents=True, exist_ok=True)

    # real inputs: example (step 0 of one prompt with CFG) and fresh verification calls
    spec1 = SamplingSpec(steps, args.guidance_scale, 1)
    example = capture_calls(pipe, [prompt_for(7)], [args.seed], spec1, {0})[0]
    n_verify = 1 if is_sd else args.verify_prompts
    verify_steps = {0, steps // 2} if is_sd else {0, steps // 4, steps // 2, (3 * steps) // 4, steps - 1}
    verify_prompts = [prompt_for((i + 3) % 10) for i in range(n_verify)]
    fresh = concat_calls(capture_calls(pipe, verify_prompts, [args.seed + 1000 + i for i in range(n_verify)],
                                       SamplingSpec(steps, args.guidance_scale, n_verify), verify_steps))
    timing_inputs = example if timing_batch is None else {k: v[-timing_batch:] for k, v in example.items()}
    with torch.no_grad():
        fp_out = first_tensor(fp_denoiser(**fresh)).float()
    log(f"captured inputs; {params / 1e6:.1f} M parameters")

    paths: dict[str, Path] = {FP_ROW: export_float_onnx(fp_denoiser, example, mdir / "fp32.onnx")}
    rows: dict[str, dict[str, Any]] = {FP_ROW: {"kind": "baseline"}}
    log("exported FP32")

    # minmax-w8a8, calibrated as the recipe says, calibration inputs captured for onnxruntime's calibrator
    recipe = get_recipe("minmax-w8a8")
    cal = calibration_set(n_calib or recipe.calibration.num_prompts)
    cal_batch = min(recipe.calibration.batch_size, len(cal.prompts))
    cal_spec = SamplingSpec(steps, args.guidance_scale, cal_batch)
    minmax = quantize_denoiser(copy.deepcopy(fp_copy), recipe).eval()
    pipe.unet = minmax
    context, calib_calls = calibrate_capturing(pipe, recipe, list(cal.prompts), list(cal.seeds), cal_spec)
    pipe.unet = fp_denoiser
    calibration = {"recipe": recipe.name, "mode": recipe.calibration.mode, "prompts": len(cal.prompts),
                   "batch_prompts": cal_batch, "steps": steps, "observed_calls": context.observed_calls,
                   "captured_calls": len(calib_calls),
                   "captured_samples": int(sum(c["sample"].shape[0] for c in calib_calls))}
    log(f"calibrated minmax-w8a8 ({len(calib_calls)} observed calls captured)")
    project = {"minmax-w8a8 onnx-int8 (project)": (minmax, "onnx-int8"),
               "minmax-w8a8 onnx-qcdq (project, reference)": (minmax, "onnx-qcdq")}
    # the deployment-first recipe: 7-bit weights + requantized conv outputs (QLinearConv), calibrated the same way
    x86_recipe = get_recipe("minmax-w7a8-x86")
    x86 = quantize_denoiser(copy.deepcopy(fp_copy), x86_recipe).eval()
    pipe.unet = x86
    calibrate_capturing(pipe, x86_recipe, list(cal.prompts), list(cal.seeds), cal_spec)
    pipe.unet = fp_denoiser
    project["minmax-w7a8-x86 onnx-int8 (project)"] = (x86, "onnx-int8")
    log("calibrated minmax-w7a8-x86")

    hybrid_note = None
    if name in (args.hybrid or []):
        pipe.unet = copy.deepcopy(fp_copy)
        hyb_recipe = get_recipe("sqnr-hybrid-w8a8")
        hcal = calibration_set(n_calib or hyb_recipe.calibration.num_prompts)
        result = quantize_pipeline(pipe, hyb_recipe, list(hcal.prompts), list(hcal.seeds),
                                   SamplingSpec(steps, args.guidance_scale, hyb_recipe.calibration.batch_size))
        hybrid = get_denoiser(pipe).eval()
        pipe.unet = fp_denoiser
        precisions = Counter(str(p) for p in result.precisions.values())
        hybrid_note = {"precisions": dict(precisions), "timing_s": result.timing_s,
                       "plan": result.plan.to_dict()["precisions"] if result.plan is not None else None}
        project["sqnr-hybrid-w8a8 onnx-int8 (project)"] = (hybrid, "onnx-int8")
        log(f"quantized sqnr-hybrid-w8a8 ({dict(precisions)})")
    else:
        hybrid_note = {"absent": "not run: the plan needs the global + local SQNR analyses and SmoothQuant, "
                                 "dozens of fake-quantized calls of this UNet, beyond this run's time budget"}

    for label, (model, fmt) in project.items():
        slug = label.split(" (")[0].replace(" ", "-")
        paths[label] = export_denoiser(model, example, mdir / f"{slug}.onnx", fmt=fmt, weight_storage="portable")
        check = verify_onnx(paths[label], model, fresh, threads=1)
        rows[label] = {"kind": "project", "format": fmt, "sqnr_vs_fakequant_db": check["sqnr_db"],
                       "max_abs_error_vs_fakequant": check["max_abs_error"],
                       "fakequant_vs_fp_torch_db": check.get("quant_noise_sqnr_db")}
        log(f"exported {label}: {check['sqnr_db']:.1f} dB vs fake-quant")

    for label, path in ort_peers(paths[FP_ROW], mdir, calib_calls).items():
        paths[label] = path
        rows[label] = {"kind": "peer"}
    log("onnxruntime peers quantized")

    for label, path in paths.items():
        rows[label]["sqnr_vs_fp_torch_db"] = sqnr_db(fp_out, run_onnx(path, fresh, 1))
        rows[label]["size_bytes"] = path.stat().st_size
        rows[label]["kernels"] = integer_kernel_counts(path, 1)
    log("SQNR and kernel counts done")

    rounds, repeats = (args.sd_rounds, args.sd_repeats) if is_sd else (args.rounds, args.repeats)
    timing = {}
    for threads in args.threads:
        timing[str(threads)] = interleaved_timing(paths, timing_inputs, threads, rounds, repeats, args.warmup)
        ratios = ", ".join(f"{v['ratio_vs_fp32']:.2f}" for v in timing[str(threads)].values())
        log(f"timed at {threads} thread(s): {ratios}")
    for label in paths:
        rows[label]["latency"] = {t: {k: v for k, v in timing[t][label].items()} for t in timing}
    profiles = {label: op_profile(paths[label], timing_inputs, 1, mdir)
                for label in (FP_ROW, "minmax-w8a8 onnx-int8 (project)", "minmax-w7a8-x86 onnx-int8 (project)")}
    log("profiled")
    return {"model": name, "description": description, "parameters": params, "steps": steps,
            "timing_batch": int(timing_inputs["sample"].shape[0]), "fresh_samples": int(fresh["sample"].shape[0]),
            "verify_steps": sorted(verify_steps), "rounds": rounds, "repeats": repeats, "warmup": args.warmup,
            "calibration": calibration, "hybrid": hybrid_note, "rows": rows, "profiles": profiles,
            "wall_s": time.perf_counter() - started}


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------
def _kernels(counts: dict[str, dict[str, int]], which: str) -> str:
    return ", ".join(f"{op} {n}" for op, n in counts[which].items()) or "none"


def _db(value) -> str:
    return "–" if value is None else ("inf" if value == float("inf") else f"{value:.1f}")


def model_section(result: dict[str, Any], threads: list[int]) -> list[str]:
    cal = result["calibration"]
    lines = [f"## {result['model']}", "",
             f"{result['description']}; {result['parameters'] / 1e6:.1f} M parameters. Timed at denoiser batch "
             f"{result['timing_batch']} "
             f"({'one prompt with classifier-free guidance' if result['timing_batch'] == 2 else 'one latent'}), "
             f"{result['rounds']} interleaved rounds x {result['repeats']} timed calls per file, each round after one "
             f"untimed call per file (and {result['warmup']} warm-up calls per file before the first round). "
             f"Calibration (`{cal['recipe']}`, `{cal['mode']}`): {cal['prompts']} prompts, "
             f"{cal['steps']} steps, {cal['observed_calls']} observed denoiser calls ({cal['captured_samples']} "
             f"samples), the same calls fed to `quantize_static`. SQNR on {result['fresh_samples']} fresh denoiser "
             f"inputs (other prompts and seeds, steps {result['verify_steps']}).", "",
             "| row | " + " | ".join(f"latency / FP32, {t} thr" for t in threads) + " | " +
             " | ".join(f"ms, {t} thr" for t in threads) + " | size (MB) | SQNR vs FP torch (dB) | "
             "SQNR vs own fake-quant torch (dB) | integer kernels | float Conv/MatMul/Gemm left |",
             "|---|" + "---:|" * (2 * len(threads) + 3) + "---|---|"]
    for label, row in result["rows"].items():
        lat = row["latency"]
        lines.append(f"| {label} | " + " | ".join(f"{lat[str(t)]['ratio_vs_fp32']:.2f}" for t in threads) + " | "
                     + " | ".join(f"{lat[str(t)]['median_ms']:.1f}" for t in threads) + " | "
                     f"{row['size_bytes'] / 1e6:.1f} | {_db(row['sqnr_vs_fp_torch_db'])} | "
                     f"{_db(row.get('sqnr_vs_fakequant_db'))} | {_kernels(row['kernels'], 'integer')} | "
                     f"{_kernels(row['kernels'], 'float')} |")
    hybrid = result["hybrid"]
    lines.append("")
    if "absent" in hybrid:
        lines.append(f"sqnr-hybrid-w8a8 row: {hybrid['absent']}.")
    else:
        lines.append(f"sqnr-hybrid-w8a8 plan: layer precisions {hybrid['precisions']}.")
    lines += ["", "Per-round latency ratios (project onnx-int8 minmax-w8a8): " + "; ".join(
        f"{t} thr: " + ", ".join(f"{r:.2f}" for r in
                                 result["rows"]["minmax-w8a8 onnx-int8 (project)"]["latency"][str(t)]["round_ratios"])
        for t in threads) + ".", "",
        "Profile of one call at 1 thread (share of node time by op type):", ""]
    for label, prof in result["profiles"].items():
        lines.append(f"- {label}: {prof['total_node_ms']:.1f} ms in nodes; " + ", ".join(
            f"{p['op']} {100 * p['share']:.0f}%" for p in prof["top_ops"]))
    lines.append("")
    return lines


def targets(results: list[dict[str, Any]], threads: list[int]) -> tuple[list[str], dict[str, Any]]:
    lines, data = [], {}
    static, dynamic = ("onnxruntime quantize_static (QOperator, per-channel, reduce_range)",
                       "onnxruntime quantize_dynamic (uint8 weights)")
    for result in results:
        rows = result["rows"]
        for label in [name for name in rows if "onnx-int8 (project)" in name] if result["model"] == SD_MODEL else []:
            for t in threads:
                ratio = rows[label]["latency"][str(t)]["ratio_vs_fp32"]
                met = ratio <= 0.55
                data[f"{result['model']}: {label} latency <= 0.55x @ {t} thr"] = {"ratio": ratio, "met": met}
                lines.append(f"- {result['model']}, {t} thread(s): {label} at {ratio:.2f}x FP32 -> "
                             + ("met." if met else
                                f"missed by {ratio - 0.55:.2f}x ({ratio / 0.55:.2f} times the target)."))
        for peer in (static, dynamic):
            for label in [name for name in rows if "onnx-int8 (project)" in name]:
                ours, theirs = rows[label], rows[peer]
                better = ours["sqnr_vs_fp_torch_db"] > theirs["sqnr_vs_fp_torch_db"]
                speed = {t: ours["latency"][str(t)]["ratio_vs_fp32"] <= theirs["latency"][str(t)]["ratio_vs_fp32"]
                         for t in threads}
                met = better and all(speed.values())
                data[f"{result['model']}: {label} vs {peer}"] = {"higher_sqnr": better, "not_slower": speed,
                                                                  "met": met}
                lines.append(f"- {result['model']}: {label} vs {peer.split(' (')[0]}: SQNR vs FP "
                             f"{ours['sqnr_vs_fp_torch_db']:.1f} vs {theirs['sqnr_vs_fp_torch_db']:.1f} dB, latency "
                             + ", ".join(f"{ours['latency'][str(t)]['ratio_vs_fp32']:.2f}x vs "
                                         f"{theirs['latency'][str(t)]['ratio_vs_fp32']:.2f}x @ {t} thr"
                                         for t in threads)
                             + f" -> {'met' if met else 'not met'}.")
    return lines, data


READING_HEADING = "## Reading the numbers"


def _hand_written_reading(path: Path) -> str:
    """The hand-written reading section of the previous page, kept across reruns (check it against the new figures)."""
    if not path.is_file():
        return ""
    previous = path.read_text()
    start = previous.find("\n" + READING_HEADING)
    return "" if start < 0 else previous[start:].rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(args.threads))
    import brevitas
    import onnxruntime

    from brevitas_ldm.export import cpu_info
    from brevitas_ldm.io import write_json_atomic, write_text_atomic

    command = "python benchmarks/deployment.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    cpu = cpu_info()
    versions = {"python": platform.python_version(), "torch": torch.__version__, "brevitas": brevitas.__version__,
                "onnxruntime": onnxruntime.__version__}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deployment-") as tmp:
        workdir = args.keep or Path(tmp)
        results = [bench_model(name, args, workdir) for name in args.models]
    target_lines, target_data = targets(results, args.threads)
    wall = time.perf_counter() - started

    lines = ["# Deployment: the project's ONNX exports vs FP32 and onnxruntime's quantizers (CPU)", "",
             f"Command: `{command}` (seed {args.seed}; {wall / 60:.1f} min wall).", "",
             f"CPU: {cpu.describe()}; {os.cpu_count()} cores; VNNI: {cpu.has_vnni}. Versions: "
             + ", ".join(f"{k} {v}" for k, v in versions.items()) + ". Absolute milliseconds move with whatever else "
             "the machine runs; the ratios come from interleaved rounds in one process, which background load hits "
             "alike.", "",
             "Every file runs with `brevitas_ldm.export.session_options(threads)` (ORT_ENABLE_ALL, sequential, "
             "`session.qdq_matmulnbits_accuracy_level=1`), peers included. Latency / FP32 is the median over rounds "
             "of each round's ratio of median call times. Kernel counts are the graph onnxruntime runs after its "
             "optimizer (`integer_kernel_counts`).", ""]
    for result in results:
        lines += model_section(result, args.threads)
    lines += ["## Targets", "", *target_lines, ""]
    text = "\n".join(lines)
    payload = {"command": command, "seed": args.seed, "cpu": cpu.to_dict(), "cpu_line": cpu.describe(),
               "cores": os.cpu_count(), "versions": versions, "threads": args.threads, "wall_s": wall,
               "models": results, "targets": target_data}
    write_json_atomic(args.out.with_suffix(".json"), payload)
    write_text_atomic(args.out, text.rstrip() + "\n" + _hand_written_reading(args.out))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
