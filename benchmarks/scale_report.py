"""Write-up half of the scale benchmark (``benchmarks/scale.py``): turns the recorder's phases and the analyses'
reports into ``docs/scale.md`` tables, notes and the block figure. Measures nothing.
"""

from __future__ import annotations

import math
import os
import platform
import shlex
import statistics
from pathlib import Path
from typing import Any

import torch
from scale_measure import ALLOCATOR_ENV, Phase, Recorder, gib

FIGURE_NAME = "scale-blocks.png"


def machine_lines(device: torch.device, threads: int, load_start: float) -> list[str]:
    import brevitas
    import diffusers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    mem_kb = None
    try:
        with open("/proc/meminfo") as handle:
            mem_kb = next(int(line.split()[1]) for line in handle if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        pass
    line = (f"Machine: {os.cpu_count()} CPU cores ({cpu}), {gib(mem_kb)} GiB RAM; torch {torch.__version__} with "
            f"{threads} thread(s), diffusers {diffusers.__version__}, brevitas {brevitas.__version__}; device "
            f"`{device}`")
    if device.type == "cuda":
        line += f" ({torch.cuda.get_device_name(device)})"
    line += (". Other jobs shared the machine: 1-minute load average "
             f"{load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end (timings are side by side in one "
             f"process, so ratios are more reliable than absolute seconds)")
    return [line + "."]


def _median(phases: list[Phase]) -> float:
    return statistics.median(p.seconds for p in phases)


def _max_kb(phases: list[Phase], attr: str) -> int | None:
    values = [getattr(p, attr) for p in phases if getattr(p, attr) is not None]
    return max(values) if values else None


def fmt_db(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.2f}"


def memory_table(rec: Recorder, cuda: bool) -> list[str]:
    header = ("| phase | runs | wall time (s, median) | kernel CPU time (s, median) | RSS before (GiB) "
              "| peak RSS (GiB) | peak above start (GiB) |")
    rule = "|---|---|---|---|---|---|---|"
    if cuda:
        header += " CUDA peak allocated (GiB) |"
        rule += "---|"
    lines = [header, rule]
    names: list[str] = []
    for p in rec.phases:
        if p.name not in names:
            names.append(p.name)
    for name in names:
        phases = rec.all(name)
        row = (f"| {name} | {len(phases)} | {_median(phases):.2f} | "
               f"{statistics.median(p.sys_seconds for p in phases):.2f} | {gib(_max_kb(phases, 'rss_before_kb'))} | "
               f"{gib(_max_kb(phases, 'peak_rss_kb'))} | {gib(_max_kb(phases, 'transient_kb'))} |")
        if cuda:
            peaks = [p.cuda_peak for p in phases if p.cuda_peak is not None]
            row += f" {max(peaks) / 2**30:.2f} |" if peaks else " - |"
        lines.append(row)
    return lines


def global_analysis_memory(rec: Recorder, info: dict, cuda: bool) -> list[str]:
    """The global analysis' memory above what was resident when it started, as a multiple of the FP denoiser's
    own weights in the run's dtype (issue 12's target: at most 1.5x, one extra copy of the weights at most)."""
    phases = [p for p in rec.phases if p.name == "global analysis"]
    if not phases:
        return []
    element = {"float32": 4, "bfloat16": 2, "float16": 2}[info.get("dtype", "float32")]
    model_bytes = info["params"] * element
    if cuda and phases[0].cuda_peak is not None and phases[0].cuda_before is not None:
        extra, where = max(p.cuda_peak - p.cuda_before for p in phases), "CUDA allocation"
    else:
        extra, where = max(max(0, (p.peak_rss_kb or 0) - (p.rss_before_kb or 0)) * 1024 for p in phases), "RSS"
    return [f"Global analysis: its peak {where} rose {extra / 2**30:.2f} GiB above what was resident when it "
            f"started, {extra / model_bytes:.2f}x the FP UNet's own weights ({model_bytes / 2**30:.2f} GiB in "
            f"{info.get('dtype', 'float32')}); the target is at most 1.5x.", ""]


def kind_summary(report) -> dict[str, dict[str, float]]:
    """Per block kind: block count, parameters, mean/min isolated SQNR and summed progressive share (dB)."""
    default = report.default_precision.name
    out: dict[str, dict[str, float]] = {}
    for entry in report.blocks:
        row = out.setdefault(entry.kind, {"blocks": 0, "params": 0, "isolated": [], "share": 0.0})
        row["blocks"] += 1
        row["params"] += entry.param_count
        value = entry.isolated_db.get(default, math.nan)
        if math.isfinite(value):
            row["isolated"].append(value)
        share = entry.share_db.get(default, 0.0)
        row["share"] += share if math.isfinite(share) else 0.0
    for row in out.values():
        values = row.pop("isolated")
        row["mean_isolated"] = statistics.fmean(values) if values else math.inf
        row["min_isolated"] = min(values) if values else math.inf
    return out


def save_blocks_figure(report, path: Path) -> None:
    """Isolated and progressive output SQNR per block (execution order), parameters as bars on a second axis."""
    from brevitas_ldm.analysis.figures import plt, save_figure

    default = report.default_precision.name
    names = report.block_names
    x = list(range(len(names)))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.65 * len(names)), 4.2))
    params = ax.twinx()
    params.bar(x, [report.block(n).param_count / 1e6 for n in names], color="0.85", width=0.6, zorder=0)
    params.set_ylabel("parameters (M)", color="0.45")
    ax.set_zorder(params.get_zorder() + 1)
    ax.patch.set_visible(False)

    def finite(values):
        return [v if math.isfinite(v) else math.nan for v in values]

    ax.plot(x, finite([report.block(n).isolated_db.get(default, math.nan) for n in names]), marker="o",
            label=f"isolated {default} (only this block quantized)")
    ax.plot(x, finite([report.block(n).progressive_db.get(default, math.nan) for n in names]), marker="s",
            label=f"progressive {default} (this block and all before it)")
    ax.set_xticks(x, names, rotation=50, ha="right")
    ax.set_ylabel("final-latent SQNR vs FP (dB)")
    ax.set_title(f"SD-1.5-shaped UNet (random weights): global analysis, {report.steps} steps, "
                 f"{report.num_prompts} prompt(s)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    save_figure(fig, path)


def cost_notes(fp_s: float, fq_s: float, fast_s: float, fill_s: float, block_report, layer_report,
               rec: Recorder) -> list[str]:
    """Where the time goes, derived from the measured phases (estimates are labelled as such)."""
    wq = rec.get("quantize all weights once (quant_weight)").seconds
    lines = ["## Where the time goes", "",
             f"* Plain fake-quant runs every layer through Brevitas' quant layers and re-quantizes all ~860M "
             f"weights at every call: {fq_s:.2f} s vs {fast_s:.2f} s with the weights cached ({fq_s / fp_s:.1f}x "
             f"vs {fast_s / fp_s:.2f}x the FP call). Quantizing every weight once (`quant_weight()` on each layer) "
             f"takes {wq:.1f} s by itself; filling the `fast_inference` cache (first call minus a cached call) "
             f"{max(fill_s - fast_s, 0.0):.1f} s.",
             ]
    if block_report is not None:
        calls, timing = block_report.denoiser_calls, block_report.timing_s
        sweep_calls = calls["isolated"] + calls["progressive"]
        sweep_s = timing["isolated"] + timing["progressive"]
        lines.append(
            f"* Global analysis: every configuration enters `quant_inference_mode` afresh, so its swapped layers' "
            f"weights are quantized and cached again per configuration; progressive prefixes cover most of the "
            f"model, hence {timing['progressive'] / max(calls['progressive'], 1):.2f} s per progressive call vs "
            f"{timing['isolated'] / max(calls['isolated'], 1):.2f} s per isolated call. Estimate: with the "
            f"PrecisionBank's quantized weights cached once for the whole sweep, the {sweep_calls} sweep calls "
            f"would cost about {sweep_calls} x {fast_s:.2f} s = {sweep_calls * fast_s:.0f} s instead of "
            f"{sweep_s:.0f} s; the gap grows with the number of configurations per sampling step (fewer steps, "
            f"a larger menu).")
    if layer_report is not None:
        loc = rec.get("local analysis")
        per = loc.extra["fp_pass_s"] / max(loc.extra["fp_pass_calls"], 1)
        lines.append(
            f"* Local analysis: the twins run in plain fake-quant mode, each layer's twin 3 times per call (W+A, "
            f"W-only, A-only; two of them quantize the weight): {per:.2f} s per call, {per / fq_s:.2f}x a plain "
            f"fake-quant call. Caching each twin's quantized weight for the pass (the weights do not change "
            f"during it) would remove up to 2 x {wq:.1f} s of weight quantization per call.")
    return lines + [""]


def trajectory_lines(rows: list[dict[str, float]]) -> list[str]:
    """The FP trajectory's latent statistics, and what their growth means for a range calibrated at t = T."""
    lines = ["FP sampling trajectory (what the denoiser receives at each step):", "",
             "| step | timestep | latent std | latent max abs | denoiser output std |", "|---|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['timestep']:.0f} | {r['std']:.2f} | {r['absmax']:.2f} | {r['out_std']:.3f} |"
              for r in rows]
    growth = max(r["absmax"] for r in rows) / max(rows[0]["absmax"], 1e-12)
    lines.append("")
    if growth > 1.5:
        lines += [
            f"A random network does not predict the noise (its output std is ~{rows[0]['out_std']:.2f}, not ~1, and "
            f"uncorrelated with the latents), so DDIM's x0 estimate divides the latents by sqrt(alpha_bar) and "
            f"the latents grow along the trajectory (max |x| x{growth:.1f}). A trained SD-1.5 keeps them near unit "
            f"scale. Single-step calibration sets every activation range at t = T, so layers whose input scales "
            f"with the latents (above all `conv_in`, whose input *is* the latents) clip at later steps: that is an "
            f"artefact of the random weights, visible below as `conv_in`'s low activation-only SQNR.", ""]
    return lines


def allocator_lines(probe: dict[str, float] | str, fp_s: float, fq_s: float, rec: Recorder,
                    have_local: bool) -> list[str]:
    """Default glibc malloc vs raised mmap/trim thresholds (measured in a child process)."""
    lines = ["## Allocator sensitivity (glibc malloc)", ""]
    if isinstance(probe, str):
        return lines + [f"Not measured: {probe}.", ""]
    env = ", ".join(f"`{k}={v}`" for k, v in ALLOCATOR_ENV.items())
    lines += [
        "Large temporaries (Brevitas' weight-quantization intermediates, weight-sized: SD-1.5's 1280-channel 3x3 "
        "convs hold 59 MB each; and the FP network's own large buffers) come from glibc malloc, which serves "
        "allocations above its mmap threshold (dynamic, at most 32 MiB on 64-bit) with fresh mappings whose pages "
        "fault in, zeroed, on first touch and are unmapped again on free. The "
        f"same measurements in a child process started with {env} (freed memory stays in the heap for reuse):",
        "",
        "| measurement | default glibc (this run) | raised thresholds (child) | speed-up |",
        "|---|---|---|---|",
        f"| FP denoiser call (s) | {fp_s:.2f} | {probe['fp_s']:.2f} | {fp_s / probe['fp_s']:.2f}x |",
        f"| fake-quant W8A8 call (s) | {fq_s:.2f} | {probe['fq_s']:.2f} | {fq_s / probe['fq_s']:.2f}x |",
        f"| of which kernel CPU time (s) | "
        f"{statistics.median(p.sys_seconds for p in rec.all('call fake-quant')):.2f} | {probe['fq_sys_s']:.2f} | - |",
    ]
    wq = rec.get("quantize all weights once (quant_weight)").seconds
    lines.append(f"| quantize all weights once (s) | {wq:.2f} | {probe['weight_quant_s']:.2f} | "
                 f"{wq / probe['weight_quant_s']:.2f}x |")
    if have_local:
        loc = rec.get("local analysis")
        per = loc.extra["fp_pass_s"] / max(loc.extra["fp_pass_calls"], 1)
        lines.append(f"| local analysis, s per denoiser call | {per:.2f} | {probe['local_per_call_s']:.2f} "
                     f"({int(probe['local_calls'])} calls) | {per / probe['local_per_call_s']:.2f}x |")
        lines.append(f"| local analysis peak RSS (GiB) | {gib(loc.peak_rss_kb)} | {gib(probe['local_peak_rss_kb'])} "
                     f"| - |")
    lines += ["", "The child runs after the main measurements, not interleaved with them; how much a page fault costs "
                  "depends on the machine (this one is a VM).", ""]
    return lines


def write_report(args, argv, device, rec: Recorder, info: dict[str, Any], block_report, layer_report,
                 local_error: str | None, global_error: str | None, figure: Path | None) -> str:
    fp, fq = rec.all("call fp"), rec.all("call fake-quant")
    fast, fill = rec.all("call fast_inference"), rec.all("call fast_inference (first: fills weight cache)")
    fp_s, fq_s, fast_s, fill_s = _median(fp), _median(fq), _median(fast), _median(fill)
    cuda = device.type == "cuda"
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/scale.py", *argv])
    single, multi = rec.get("calibration (single_step)"), rec.get("calibration (all_steps)")
    lines = [
        "# brevitas-ldm at Stable Diffusion 1.5 scale",
        "",
        f"Command: `{command}`",
        "",
        *machine_lines(device, args.threads, info['load_start']),
        "",
        f"Model: random-weight `UNet2DConditionModel` with SD-1.5's block structure and widths "
        f"(block_out_channels (320, 640, 1280, 1280), 2 layers per block, CrossAttnDownBlock2D x3 + DownBlock2D, "
        f"UpBlock2D + CrossAttnUpBlock2D x3, cross_attention_dim 768, attention_head_dim 8): "
        f"**{info['params']:,} parameters** in {info['layers']} quantizable Linear/Conv2d layers and "
        f"{info['blocks']} blocks, seeded (`--seed {args.seed}`), diffusers' default initialisation. It runs inside a "
        f"real `StableDiffusionPipeline` built in memory (nothing downloaded): a tiny random AutoencoderKL "
        f"(vae_scale_factor 8, never run: every run here returns latents), a one-layer random CLIPTextModel "
        f"with hidden size 768 (16-token prompts from the project's tokenizer instead of SD's 77) and DDIM. "
        f"Latents {args.latent_size}x{args.latent_size} (images would be {8 * args.latent_size}px), "
        f"{args.prompts} prompt(s) with classifier-free guidance {args.guidance_scale:g} (denoiser batch "
        f"{2 * args.prompts}), {args.steps} DDIM steps, recipe `{args.recipe}` (base precision "
        f"{info['precision']}, calibration `{info['calibration']}`).",
        "",
        f"Random weights give non-degenerate outputs: the FP denoiser output has std {info['fp_out_std']:.3f} "
        f"(mean |x| {info['fp_out_abs_mean']:.3f}) for unit-variance latents, so no rescaling was applied. "
        f"SQNR figures below are those of *this random network*; they show where the tooling's costs and the "
        f"analysis' mechanics land at scale, not how a trained SD-1.5 behaves.",
        "",
        *trajectory_lines(info["trajectory"]),
        f"Setup: building the model took {rec.get('build model').seconds:.1f} s; one W8A8 quantized copy "
        f"(deepcopy + Brevitas `layerwise_quantize`) {rec.get('quantize (single_step)').seconds:.1f} s.",
        "",
        "## 1. One denoiser call: FP vs fake-quantized W8A8",
        "",
        f"Batch {2 * args.prompts} (CFG), the first sampling step's inputs (t = {info['call_timestep']:.0f}), "
        f"{args.rounds} alternating rounds after one warm-up "
        f"call each; median wall time. Peak memory is the process' peak RSS during the call (VmHWM reset right "
        f"before it) minus the RSS when the call started, i.e. what the call itself adds on top of the resident "
        f"models (here: the FP UNet and one quantized copy are resident).",
        "",
        "| call | time (s) | vs FP | peak above start (GiB) |" + (" CUDA peak (GiB) |" if cuda else ""),
        "|---|---|---|---|" + ("---|" if cuda else ""),
    ]

    def row(label, phases, seconds):
        cells = (f"| {label} | {seconds:.2f} | {seconds / fp_s:.2f}x | "
                 f"{gib(_max_kb(phases, 'transient_kb'))} |")
        if cuda:
            cells += f" {max(p.cuda_peak for p in phases) / 2**30:.2f} |"
        lines.append(cells)

    row("FP", fp, fp_s)
    row("fake-quant W8A8 (Brevitas quant layers)", fq, fq_s)
    row("fake-quant W8A8 in `fast_inference`, first call (quantizes + caches weights)", fill, fill_s)
    row("fake-quant W8A8 in `fast_inference`, cached", fast, fast_s)
    lines += [
        "",
        f"`fast_inference` vs plain fake-quant: {fq_s / fast_s:.2f}x faster per cached call; the cache it holds "
        f"while active is one dequantized copy of the weights (the first call's extra memory above). "
        f"Max |fast_inference - fake-quant| = {info['fast_max_abs_diff']:.3g}; fake-quant W8A8 (single-step "
        f"calibration) vs FP on this call: {fmt_db(info['call_sqnr_db'])} dB SQNR.",
        "",
    ]

    # -- global ---------------------------------------------------------------------------------------------------
    lines += ["## 2. Global analysis (block-level, progressive + isolated)", ""]
    if block_report is None:
        lines += [f"Not run: {global_error}", ""]
    else:
        calls, timing = block_report.denoiser_calls, block_report.timing_s
        g = rec.get("global analysis")
        total_calls = calls["total"]
        default = block_report.default_precision.name
        lines += [
            f"Menu restricted to the base precision ({default}): {len(block_report.blocks)} isolated + "
            f"{len(block_report.blocks) - 1} progressive configurations, each a full {args.steps}-step sampling "
            f"run; quantized configurations run in Brevitas' `quant_inference_mode` (cached weights).",
            "",
            "| phase | wall time (s) | denoiser calls | s per call | vs FP call |",
            "|---|---|---|---|---|",
        ]
        for key, call_key, label in (("fp_reference", "fp_reference", "FP reference"),
                                     ("quantize_calibrate", "calibration", "quantize + calibrate the bank's copy"),
                                     ("isolated", "isolated", "isolated sweep"),
                                     ("progressive", "progressive", "progressive sweep")):
            n = calls.get(call_key, 0)
            if key == "quantize_calibrate" or not n:
                lines.append(f"| {label} | {timing[key]:.1f} | {n} | - | - |")
            else:
                per = timing[key] / n
                lines.append(f"| {label} | {timing[key]:.1f} | {n} | {per:.2f} | {per / fp_s:.2f}x |")
        lines += [
            f"| **total** | **{g.seconds:.1f}** | **{total_calls}** | **{g.seconds / total_calls:.2f}** | "
            f"**{g.seconds / total_calls / fp_s:.2f}x** |",
            "",
            f"Peak RSS during the analysis: {gib(g.peak_rss_kb)} GiB ({gib(g.transient_kb)} GiB above the "
            f"{gib(g.rss_before_kb)} GiB resident at its start: one quantized copy in the PrecisionBank plus the "
            f"weight cache of the configuration being measured).",
            "",
            block_report.to_markdown(),
            "",
            "Ranking, most sensitive first (isolated output SQNR at the base precision): "
            + ", ".join(f"{n} ({fmt_db(block_report.block(n).isolated_db[default])} dB)"
                        for n in block_report.ranking()),
            "",
            "| kind | blocks | params (M) | mean isolated (dB) | min isolated (dB) | summed progressive share (dB) |",
            "|---|---|---|---|---|---|",
        ]
        for kind, s in kind_summary(block_report).items():
            lines.append(f"| {kind} | {s['blocks']} | {s['params'] / 1e6:.1f} | {fmt_db(s['mean_isolated'])} | "
                         f"{fmt_db(s['min_isolated'])} | {fmt_db(s['share'])} |")
        lines += [""]
        if figure is not None:
            rel = os.path.relpath(figure, args.out.parent)
            lines += [f"![isolated and progressive SQNR per block]({rel})", ""]

    # -- local ----------------------------------------------------------------------------------------------------
    lines += ["## 3. Local analysis (module-level, one FP pass with quantized twins)", ""]
    if layer_report is None:
        lines += [f"Not run / failed: {local_error}", ""]
    else:
        loc = rec.get("local analysis")
        fp_pass_s, fp_pass_calls = loc.extra["fp_pass_s"], loc.extra["fp_pass_calls"]
        per = fp_pass_s / max(fp_pass_calls, 1)
        calls = layer_report.denoiser_calls
        lines += [
            f"{len(layer_report.modules)} layers measured; each layer's twin runs 3 times per call (W+A, W only, "
            f"A only) on the FP input the layer just received.",
            "",
            "| phase | wall time (s) | denoiser calls | s per call | vs FP call |",
            "|---|---|---|---|---|",
            f"| quantize twins + calibrate (`{layer_report.calibration_mode}`) + report | "
            f"{loc.seconds - fp_pass_s:.1f} | {calls.get('calibration', 0)} | - | - |",
            f"| FP pass with twins | {fp_pass_s:.1f} | {fp_pass_calls} | {per:.2f} | {per / fp_s:.2f}x |",
            f"| **total** | **{loc.seconds:.1f}** | **{sum(calls.values())}** | - | - |",
            "",
            f"Peak RSS: {gib(loc.peak_rss_kb)} GiB ({gib(loc.transient_kb)} GiB above the start: the twin copy "
            f"plus per-call temporaries).",
            "",
            "Worst 10 layers (lowest relative SQNR):",
            "",
            "| layer | block | category | SQNR (dB) | W-only (dB) | A-only (dB) | act share |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in layer_report.ranked()[:10]:
            lines.append(f"| `{e.name}` | {e.block} | {e.category} | {fmt_db(e.sqnr_db)} | "
                         f"{fmt_db(e.weight_sqnr_db)} | {fmt_db(e.act_sqnr_db)} | {e.activation_share:.2f} |")
        lines += ["", "| category | layers | mean SQNR (dB) | min SQNR (dB) | mean act share |",
                  "|---|---|---|---|---|"]
        from brevitas_ldm.analysis.layer_report import CATEGORY_LABELS

        for category, s in layer_report.category_summary().items():
            lines.append(f"| {CATEGORY_LABELS[category]} | {s['count']} | {fmt_db(s['mean_sqnr_db'])} | "
                         f"{fmt_db(s['min_sqnr_db'])} | {s['mean_activation_share']:.2f} |")
        lines += [""]

    # -- calibration ----------------------------------------------------------------------------------------------
    lines += [
        "## 4. Single-step vs all-steps calibration",
        "",
        f"Same quantized model (fresh copy each), same {args.prompts} prompt(s), {args.steps} DDIM steps. Single-step "
        f"runs the denoiser once per batch at t = T and short-circuits the remaining steps.",
        "",
        "| calibration | denoiser calls executed | calls observed | wall time (s) | "
        "SQNR vs FP of the W8A8 call of section 1 (dB) |",
        "|---|---|---|---|---|",
        f"| single_step | {single.calls} | {single.extra['observed']} | {single.seconds:.2f} | "
        f"{fmt_db(info['call_sqnr_db'])} |",
        f"| all_steps | {multi.calls} | {multi.extra['observed']} | {multi.seconds:.2f} | "
        f"{fmt_db(info['multi_call_sqnr_db'])} |",
        "",
        f"Single-step / all-steps: {single.calls / multi.calls:.2f}x the denoiser calls, "
        f"{single.seconds / multi.seconds:.2f}x the wall time (the rest is text encoding and pipeline overhead). "
        f"At 50 steps the call ratio would be 1/50.",
        "",
        *cost_notes(fp_s, fq_s, fast_s, fill_s, block_report, layer_report, rec),
        *allocator_lines(info["allocator_probe"], fp_s, fq_s, rec, layer_report is not None),
        "## Memory and time of every phase",
        "",
        "Peak RSS is the kernel's high-water mark (`VmHWM`), reset through `/proc/self/clear_refs` at the start "
        "of each phase, so each row is that phase's own peak. Resident: the FP pipeline (~"
        f"{gib(rec.get('build model').rss_after_kb)} GiB after building), plus a quantized copy where one is alive.",
        "",
        *memory_table(rec, cuda),
        "",
        f"Highest peak of the run: {gib(max(p.peak_rss_kb or 0 for p in rec.phases))} GiB RSS. Total wall time "
        f"{info['total_s'] / 60:.1f} min.",
        "",
        *global_analysis_memory(rec, info, cuda),
        "The analyses split across processes (`torchrun`, one rank per core or GPU): per-rank time, calls and "
        "memory in [ranks.md](ranks.md) (`benchmarks/ranks.py`).",
        "",
        "The global analysis' precision bank shares the FP weights since 0.2.1 (one set of weights whatever the "
        "menu size): [bank-memory.md](bank-memory.md) (`benchmarks/bank_memory.py`).",
        "",
    ]
    return "\n".join(lines)
