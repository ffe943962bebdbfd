"""OpenVINO deployment benchmark: the project's ``--format openvino`` file against FP32 and NNCF, on CPU.

In one process, on the same real denoiser inputs as ``benchmarks/deployment.py`` (whose helpers it reuses):

1. the FP32 denoiser is exported to ONNX (:func:`brevitas_ldm.export.export_float_onnx`) and run in onnxruntime
   (the baseline of every ratio) and, as IR, in OpenVINO at ``f32`` and at OpenVINO's default precision (bf16 on
   CPUs with AVX-512 bf16 / AMX, f32 elsewhere);
2. a copy is quantized with ``minmax-w8a8`` and calibrated as the recipe says, capturing the calibration calls;
   it is exported as ``onnx-int8`` (onnxruntime) and ``openvino`` (OpenVINO IR), both verified against the
   fake-quantized torch model;
3. peers on the same FP32 file and the same captured calibration calls: NNCF's ``nncf.quantize`` with
   ``ModelType.TRANSFORMER`` (OpenVINO) and onnxruntime's ``quantize_static`` (QOperator, per-channel);
4. latency is timed in interleaved rounds (every model once untimed, then ``--repeats`` timed calls, round-robin,
   compiled once per thread count), reported as the median over rounds of the per-round ratio to FP32 ONNX in
   onnxruntime; SQNR vs the FP torch denoiser on fresh inputs; integer kernels of every OpenVINO model from its
   compiled runtime model.

    python benchmarks/openvino_deployment.py --models tiny-sd-digits sd15-half --threads 1 2 \
        --out docs/deployment-openvino.md
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deployment as base  # noqa: E402  (the shared input capture, calibration capture and onnxruntime helpers)

FP_ROW = "FP32 ONNX, onnxruntime"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny-sd-digits", base.SD_MODEL])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--sd-rounds", type=int, default=3)
    parser.add_argument("--sd-repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sd-steps", type=int, default=6)
    parser.add_argument("--sd-calibration-prompts", type=int, default=2)
    parser.add_argument("--latent-size", type=int, default=32)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--verify-prompts", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hybrid", nargs="*", default=[])
    parser.add_argument("--planned", nargs="*", default=[], metavar="MODEL=RATIO[,RATIO]",
                        help="add the latency-planned sqnr-hybrid-w8a8 rows for MODEL: [plan] target = openvino-cpu "
                             "and onnxruntime-cpu with max_latency_ratio = RATIO (of the float denoiser in each "
                             "runtime; a second RATIO for onnxruntime, '-' for none), the plan chosen by the quantize "
                             "job from the cost table it measures")
    parser.add_argument("--planned-recipe", default="sqnr-hybrid-w8a8",
                        help="the recipe the --planned rows start from (a registered name or a .toml file); its [plan] "
                             "target and max_latency_ratio are set per row")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="keep the planned rows' global analyses and latency tables here (default: a temporary "
                             "folder), so a rerun at another max_latency_ratio measures neither again")
    parser.add_argument("--planned-analysis-prompts", type=int, default=None,
                        help="the SD-shaped UNet's planned rows: global analysis prompts (default: the recipe's, "
                             "at most the calibration prompts)")
    parser.add_argument("--out", type=Path, default=Path("docs/deployment-openvino.md"))
    parser.add_argument("--figure-from", type=Path, default=None, metavar="JSON",
                        help="only redraw the latency/SQNR figure (--out with .png) from a saved report's JSON")
    return parser.parse_args(argv)


class Runner:
    """One model in one runtime at one thread count: ``call()`` runs it on the prepared inputs."""

    def __init__(self, runtime: str, path: Path, threads: int, precision: str | None, inputs: dict) -> None:
        self.runtime = runtime
        if runtime == "onnxruntime":
            self.session = base.make_session(path, threads)
            self.feeds = base.feeds_for(self.session, inputs)
            self.precision = "f32"
        else:
            from brevitas_ldm.export.openvino_runtime import (
                compile_ir,
                inference_precision,
                input_name,
            )

            compiled = compile_ir(path, threads, precision)
            self.request = compiled.create_infer_request()
            self.feeds = {input_name(p, inputs): inputs[input_name(p, inputs)].numpy().astype(
                p.get_element_type().to_dtype(), copy=False) for p in compiled.inputs}
            self.precision = inference_precision(compiled)

    def call(self) -> np.ndarray:
        if self.runtime == "onnxruntime":
            return self.session.run(None, self.feeds)[0]
        return np.array(self.request.infer(self.feeds)[0], copy=True)


def timing(specs: dict[str, tuple], inputs: dict, threads: int, rounds: int, repeats: int, warmup: int) -> dict:
    runners = {label: Runner(rt, path, threads, prec, inputs) for label, (rt, path, prec) in specs.items()}
    for runner in runners.values():
        for _ in range(max(warmup, 1)):
            runner.call()
    per_round: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(rounds):
        for label, runner in runners.items():
            runner.call()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                runner.call()
                times.append((time.perf_counter() - start) * 1000.0)
            per_round[label].append(statistics.median(times))
    fp = per_round[FP_ROW]
    return {label: {"median_ms": statistics.median(v), "round_ms": v, "precision": runners[label].precision,
                    "ratio_vs_fp32_ort": statistics.median(a / b for a, b in zip(v, fp))}
            for label, v in per_round.items()}


def nncf_peer(fp_xml: Path, out: Path, calls: list[dict]) -> tuple[Path, float]:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp_xml))
    types = {p.get_any_name(): p.get_element_type().to_dtype() for p in model.inputs}
    data = [{name: call[name].numpy().astype(kind) for name, kind in types.items()} for call in calls]
    start = time.perf_counter()
    quantized = nncf.quantize(model, nncf.Dataset(data), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(data))
    seconds = time.perf_counter() - start
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out, seconds


def bench_model(name: str, args, workdir: Path) -> dict[str, Any]:
    from brevitas_ldm.denoiser.sampling import SamplingSpec, first_tensor, get_denoiser
    from brevitas_ldm.evaluation.prompts import calibration_set
    from brevitas_ldm.export import (
        export_denoiser,
        export_float_onnx,
        integer_kernel_counts,
        verify_onnx,
    )
    from brevitas_ldm.export.openvino_ir import onnx_to_openvino_ir
    from brevitas_ldm.export.openvino_runtime import (
        openvino_kernel_counts,
        verify_openvino,
    )
    from brevitas_ldm.quant.quantize import quantize_denoiser
    from brevitas_ldm.recipe import get_recipe
    from brevitas_ldm.sqnr import sqnr_db
    from brevitas_ldm.zoo.data import prompt_for

    started = time.perf_counter()
    def log(msg):
        return print(f"[{name} +{time.perf_counter() - started:6.0f}s] {msg}", file=sys.stderr, flush=True)
    is_sd = name == base.SD_MODEL
    pipe, description, steps, n_calib, timing_batch = base.load_model(name, args)
    fp_denoiser = get_denoiser(pipe).eval()
    fp_copy = copy.deepcopy(fp_denoiser)
    mdir = workdir / name.replace("/", "_")
    mdir.mkdir(parents=True, exist_ok=True)
    example = base.capture_calls(pipe, [prompt_for(7)], [args.seed], SamplingSpec(steps, args.guidance_scale, 1),
                                 {0})[0]
    n_verify = 1 if is_sd else args.verify_prompts
    verify_steps = {0, steps // 2} if is_sd else {0, steps // 4, steps // 2, (3 * steps) // 4, steps - 1}
    fresh = base.concat_calls(base.capture_calls(
        pipe, [prompt_for((i + 3) % 10) for i in range(n_verify)], [args.seed + 1000 + i for i in range(n_verify)],
        SamplingSpec(steps, args.guidance_scale, n_verify), verify_steps))
    timing_inputs = example if timing_batch is None else {k: v[-timing_batch:] for k, v in example.items()}
    with torch.no_grad():
        fp_out = first_tensor(fp_denoiser(**fresh)).float()
    fp_onnx = export_float_onnx(fp_denoiser, example, mdir / "fp32.onnx")
    fp_xml = onnx_to_openvino_ir(fp_onnx, mdir / "fp32.xml")
    log("exported FP32")

    recipe = get_recipe("minmax-w8a8")
    cal = calibration_set(n_calib or recipe.calibration.num_prompts)
    cal_spec = SamplingSpec(steps, args.guidance_scale, min(recipe.calibration.batch_size, len(cal.prompts)))
    minmax = quantize_denoiser(copy.deepcopy(fp_copy), recipe).eval()
    pipe.unet = minmax
    _, calls = base.calibrate_capturing(pipe, recipe, list(cal.prompts), list(cal.seeds), cal_spec)
    pipe.unet = fp_denoiser
    log(f"calibrated minmax-w8a8 ({len(calls)} calls)")
    int8 = export_denoiser(minmax, example, mdir / "minmax-int8.onnx", fmt="onnx-int8")
    ir = export_denoiser(minmax, example, mdir / "minmax.xml", fmt="openvino")
    checks = {"onnx-int8": verify_onnx(int8, minmax, fresh, threads=1)["sqnr_db"],
              "openvino": verify_openvino(ir, minmax, fresh, threads=1)["sqnr_db"]}
    log(f"project files vs fake-quant: {checks}")
    nncf_xml, nncf_s = nncf_peer(fp_xml, mdir / "nncf.xml", calls)
    log(f"NNCF quantized in {nncf_s:.0f} s")
    static = next(p for label, p in base.ort_peers(fp_onnx, mdir, calls).items() if "static" in label)
    specs = {FP_ROW: ("onnxruntime", fp_onnx, None),
             "FP32 IR, OpenVINO f32": ("openvino", fp_xml, "f32"),
             "FP32 IR, OpenVINO default precision": ("openvino", fp_xml, None),
             "onnxruntime quantize_static (QOperator, per-channel)": ("onnxruntime", static, None),
             "NNCF PTQ (ModelType.TRANSFORMER), OpenVINO f32": ("openvino", nncf_xml, "f32"),
             "NNCF PTQ (ModelType.TRANSFORMER), OpenVINO default precision": ("openvino", nncf_xml, None),
             "minmax-w8a8 onnx-int8, onnxruntime (project)": ("onnxruntime", int8, None),
             "minmax-w8a8 --format openvino, OpenVINO f32 (project)": ("openvino", ir, "f32"),
             "minmax-w8a8 --format openvino, OpenVINO default precision (project)": ("openvino", ir, None)}
    planned_ratios = dict(item.split("=", 1) for item in args.planned).get(name)
    planned_info: dict[str, Any] = {}
    fakequant: dict[str, float] = {}
    if planned_ratios is not None:
        ratios = planned_ratios.split(",")
        for (target, fmt), planned_ratio in zip((("openvino-cpu", "openvino"), ("onnxruntime-cpu", "onnx-int8")),
                                                ratios + ratios[-1:]):
            from brevitas_ldm.errors import RecipeError

            if planned_ratio == "-":     # this runtime's planned row is not asked for
                continue
            planned_ratio = float(planned_ratio)

            try:
                model, info = planned_model(pipe, fp_copy, target, planned_ratio, args, cal, cal_spec, is_sd,
                                            args.cache_dir or workdir / "analysis-cache")
            except RecipeError as error:     # an unreachable latency budget: said in the report, not a crash
                planned_info[target] = {"max_latency_ratio": planned_ratio, "refused": str(error)}
                log(f"planned for {target} refused: {error}")
                continue
            finally:
                pipe.unet = fp_denoiser
            suffix = "xml" if fmt == "openvino" else "onnx"
            path = export_denoiser(model, example, mdir / f"planned-{target}.{suffix}", fmt=fmt)
            verify = verify_openvino if fmt == "openvino" else verify_onnx
            label = f"{info['recipe']} latency-planned for {target} (max_latency_ratio {planned_ratio})"
            if fmt == "openvino":
                specs[f"{label}, OpenVINO f32 (project)"] = ("openvino", path, "f32")
                specs[f"{label}, OpenVINO default precision (project)"] = ("openvino", path, None)
                fakequant[f"{label}, OpenVINO f32 (project)"] = verify(path, model, fresh, threads=1)["sqnr_db"]
            else:
                specs[f"{label}, onnxruntime (project)"] = ("onnxruntime", path, None)
                fakequant[f"{label}, onnxruntime (project)"] = verify(path, model, fresh, threads=1)["sqnr_db"]
            planned_info[target] = info
            log(f"planned for {target}: {info['layer_precisions']}, predicted {info['predicted_ratio']:.3f}x, "
                f"measured by the job {info['measured_ratio']:.3f}x")
    rows: dict[str, dict[str, Any]] = {}
    for label, (runtime, path, precision) in specs.items():
        runner = Runner(runtime, path, 1, precision, fresh)
        rows[label] = {"runtime": runtime, "sqnr_vs_fp_torch_db": sqnr_db(fp_out, torch.from_numpy(runner.call())),
                       "precision": runner.precision,
                       "kernels": (openvino_kernel_counts(path, 1, precision) if runtime == "openvino"
                                   else integer_kernel_counts(path, 1))}
    rows["minmax-w8a8 onnx-int8, onnxruntime (project)"]["sqnr_vs_fakequant_db"] = checks["onnx-int8"]
    rows["minmax-w8a8 --format openvino, OpenVINO f32 (project)"]["sqnr_vs_fakequant_db"] = checks["openvino"]
    for label, value in fakequant.items():
        rows[label]["sqnr_vs_fakequant_db"] = value
    log("SQNR done")
    rounds, repeats = (args.sd_rounds, args.sd_repeats) if is_sd else (args.rounds, args.repeats)
    for threads in args.threads:
        result = timing(specs, timing_inputs, threads, rounds, repeats, args.warmup)
        for label, figures in result.items():
            rows[label].setdefault("latency", {})[str(threads)] = figures
        log(f"timed at {threads} thread(s)")
    return {"model": name, "description": description, "steps": steps, "calibration_calls": len(calls),
            "nncf_seconds": nncf_s, "fresh_samples": int(fresh["sample"].shape[0]),
            "timing_batch": int(timing_inputs["sample"].shape[0]), "rounds": rounds, "repeats": repeats,
            "rows": rows, "planned": planned_info, "wall_s": time.perf_counter() - started}


def planned_model(pipe, fp_copy, target: str, ratio: float, args, cal, cal_spec, is_sd: bool, cache_dir: Path):
    """``--planned-recipe`` (sqnr-hybrid-w8a8 unless told) with ``[plan] target`` and ``max_latency_ratio``, through
    the quantize job on a float copy (the global analysis cached across targets); returns the quantized denoiser and
    what the job reported."""
    import dataclasses

    from brevitas_ldm.recipe import get_recipe
    from brevitas_ldm.workflow import quantize_pipeline

    recipe = get_recipe(args.planned_recipe)
    base_name = recipe.name
    analysis = recipe.analysis
    if args.planned_analysis_prompts and is_sd:
        analysis = dataclasses.replace(analysis, num_prompts=args.planned_analysis_prompts)
    recipe = dataclasses.replace(recipe, name=f"{base_name}-{target}", analysis=analysis,
                                 plan=dataclasses.replace(recipe.plan, target=target, max_latency_ratio=ratio))
    pipe.unet = copy.deepcopy(fp_copy)
    result = quantize_pipeline(pipe, recipe, list(cal.prompts), list(cal.seeds), cal_spec, cache_dir=cache_dir)
    counts: dict[str, int] = {}
    for precision in result.precisions.values():
        counts[str(precision)] = counts.get(str(precision), 0) + 1
    info = {**result.latency, "recipe": base_name, "layer_precisions": dict(sorted(counts.items())),
            "predicted_sqnr_db": result.plan.predicted_sqnr_db, "avg_weight_bits": result.plan.avg_weight_bits,
            "avg_act_bits": result.plan.avg_act_bits, "table": result.latency_table.describe()}
    return pipe.unet.eval(), info


def _kernels(row: dict) -> str:
    counts = row["kernels"]["integer"]
    return ", ".join(f"{op} {n}" for op, n in counts.items()) or "none"


def report(results: list[dict], args, machine: dict) -> str:
    lines = ["# Deployment in OpenVINO: the project's `--format openvino` file vs FP32, NNCF and onnxruntime (CPU)", "",
             f"Command: `{machine['command']}`.", "",
             f"CPU: {machine['cpu']}; {machine['cores']} cores, shared with other work while this ran (ratios come "
             f"from interleaved rounds in one process, which background load hits alike). Versions: "
             f"{machine['versions']}.", "",
             "Latency is the median over rounds of each round's ratio to the FP32 ONNX file in onnxruntime. "
             "*default precision* is OpenVINO without an inference-precision hint; the precision each row ran its "
             "float layers in is in the table. Integer kernels: OpenVINO rows from the compiled runtime model "
             "(Convolution/FullyConnected running u8/i8 on u8/i8 data), onnxruntime rows after its optimizer.", "",
             f"![SQNR against latency, one panel per model]({args.out.with_suffix('.png').name})", ""]
    for result in results:
        threads = sorted(next(iter(result["rows"].values()))["latency"], key=int)
        lines += [f"## {result['model']}", "",
                  f"{result['description']}. Timed at denoiser batch {result['timing_batch']}, {result['rounds']} "
                  f"rounds x {result['repeats']} calls. Calibration: minmax-w8a8 over {result['calibration_calls']} "
                  f"captured denoiser calls, the same calls given to NNCF ({result['nncf_seconds']:.0f} s) and "
                  f"quantize_static. SQNR on {result['fresh_samples']} fresh denoiser inputs.", "",
                  "| row | precision | " + " | ".join(f"latency / FP32 ORT, {t} thr" for t in threads) + " | "
                  + " | ".join(f"ms, {t} thr" for t in threads) + " | SQNR vs FP torch (dB) | vs own fake-quant (dB) "
                  "| integer kernels |", "|---|---|" + "---:|" * (2 * len(threads) + 2) + "---|"]
        for label, row in result["rows"].items():
            lat = row["latency"]
            fq = row.get("sqnr_vs_fakequant_db")
            lines.append(f"| {label} | {row['precision']} | "
                         + " | ".join(f"{lat[t]['ratio_vs_fp32_ort']:.2f}" for t in threads) + " | "
                         + " | ".join(f"{lat[t]['median_ms']:.1f}" for t in threads)
                         + f" | {row['sqnr_vs_fp_torch_db']:.1f} | {'–' if fq is None else f'{fq:.1f}'} | "
                         f"{_kernels(row)} |")
        lines.append("")
        for target, info in result.get("planned", {}).items():
            if "refused" in info:
                lines += [f"Latency-planned plan for `{target}` at `max_latency_ratio = {info['max_latency_ratio']}`: "
                          f"refused by the planner: {info['refused']}", ""]
                continue
            lines += [f"Latency-planned plan for `{target}` (`max_latency_ratio = {info['max_latency_ratio']}` of the "
                      f"float denoiser in that runtime): layer precisions {info['layer_precisions']}, avg bits "
                      f"W{info['avg_weight_bits']:.2f}/A{info['avg_act_bits']:.2f}, predicted output SQNR "
                      f"{info['predicted_sqnr_db']:.2f} dB; latency predicted {info['predicted_ratio']:.3f}x, "
                      f"measured by the job {info['measured_ratio']:.3f}x ({info['threads']} thread, batch "
                      f"{info['batch_size']}). Cost table: {info['table']}.", ""]
    return "\n".join(lines) + "\n"


def figure(results: list[dict[str, Any]], path: Path, threads: list[int]) -> None:
    """One panel per model: SQNR vs FP against latency / FP32 ORT, one marker per row and thread count, so the
    question the table answers (which file is both faster and more accurate) reads at a glance: up and left wins."""
    from brevitas_ldm.analysis.figures import plt, save_figure

    fig, axes = plt.subplots(1, len(results), figsize=(6.4 * len(results), 4.6), squeeze=False)
    markers = {thread: marker for thread, marker in zip(threads, "os^D")}
    marker_names = {"o": "circle", "s": "square", "^": "triangle", "D": "diamond"}
    handles: dict[str, Any] = {}
    palette = plt.get_cmap("tab20").colors      # a model has up to 12 rows: tab10 would repeat a colour
    for ax, result in zip(axes[0], results):
        for index, (name, row) in enumerate(result["rows"].items()):
            if name == FP_ROW or row.get("sqnr_vs_fp_torch_db") is None:
                continue
            sqnr = min(row["sqnr_vs_fp_torch_db"], 45.0)     # the float rows sit near 120 dB: clipped to stay legible
            label = re.sub(r" latency-planned for \S+ \(max_latency_ratio [\d.]+\)", " planned", name)
            points = [(row["latency"][str(t)]["ratio_vs_fp32_ort"], t) for t in threads if str(t) in row["latency"]]
            colour = palette[index % len(palette)]
            for ratio, thread in points:
                handles[label] = ax.scatter(ratio, sqnr, color=colour, marker=markers[thread], s=36)
            if len(points) > 1:
                ax.plot([p[0] for p in points], [sqnr] * len(points), color=colour, lw=0.8)
        ax.axvline(1.0, color="grey", lw=0.6, ls="--")
        ax.set_xlabel("latency / FP32 ONNX in onnxruntime (lower is faster)")
        ax.set_ylabel("SQNR vs FP torch, dB (float rows clipped at 45)")
        ax.set_title(f"{result['model']}: " + ", ".join(f"{marker_names[m]} {t} thread(s)" for t, m in markers.items()))
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2,
               fontsize=7, frameon=False)
    save_figure(fig, path)


def main(argv=None) -> int:
    import tempfile

    import nncf
    import onnxruntime
    import openvino

    import brevitas_ldm
    from brevitas_ldm.export import cpu_info
    from brevitas_ldm.export.latency_costs import machine_isa

    args = parse_args(argv)
    if args.figure_from is not None:
        saved = json.loads(args.figure_from.read_text())
        figure(saved["results"], args.out.with_suffix(".png"), args.threads)
        print(f"wrote {args.out.with_suffix('.png')}")
        return 0
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    info = cpu_info()
    _, isa = machine_isa()       # the latency tables' flags: the integer ones and the bf16/AMX ones
    bf16_amx = [f for f in isa if f not in info.isa_flags]
    machine = {"command": "python benchmarks/openvino_deployment.py " + shlex.join(argv or sys.argv[1:]),
               "cpu": info.describe() + f"; bf16/AMX flags: {' '.join(bf16_amx) or 'none'}",
               "cpu_model": info.model, "isa_flags": list(info.isa_flags) + bf16_amx,
               "cores": __import__("os").cpu_count(),
               "versions": f"python {platform.python_version()}, torch {torch.__version__}, openvino "
                           f"{openvino.__version__}, nncf {nncf.__version__}, onnxruntime {onnxruntime.__version__}, "
                           f"brevitas-ldm {brevitas_ldm.__version__}"}
    with tempfile.TemporaryDirectory(prefix="ov-deploy-") as tmp:
        results = [bench_model(name, args, Path(tmp)) for name in args.models]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(results, args, machine))
    args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "results": results}, indent=1,
                                                        default=str) + "\n")
    figure(results, args.out.with_suffix(".png"), args.threads)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
