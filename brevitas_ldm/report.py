"""report.md of a quantization run: what was done, the plan and the SQNR behind each choice, the metrics."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from brevitas_ldm.io import write_text_atomic
from brevitas_ldm.registry import CALIBRATION_MODES
from brevitas_ldm.zoo.catalog import FID_KEYS


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def metrics_table(metrics: dict[str, Any], columns: dict[str, str] | None = None) -> str:
    """Metric rows, one column per ``columns`` entry (metrics key -> heading; default FP and quantized)."""
    columns = columns or {"fp": "FP", "quantized": "quantized"}
    tables = [metrics.get(key, {}) for key in columns]
    rows = ["| metric | " + " | ".join(columns.values()) + " |", "|---" * (len(columns) + 1) + "|"]
    for key in (*FID_KEYS, "prompt_accuracy", "output_sqnr_db", "image_psnr_db", "avg_weight_bits",
                "avg_act_bits", "size_bytes", "checkpoint_bytes"):
        if any(key in table for table in tables):
            rows.append(f"| {key} | " + " | ".join(_fmt(table.get(key)) for table in tables) + " |")
    return "\n".join(rows)


def write_qat_report(path: Path, metrics: dict[str, Any], result: Any, figures: dict[str, str], command: str) -> None:
    """report.md of a ``brevitas-ldm qat`` run: FP, the PTQ start and the QAT result side by side, then training."""
    recipe, qat = result.recipe, metrics["qat"]
    lines = [f"# brevitas-ldm QAT report: {metrics['model']} with `{recipe.name}`", "", f"Command: `{command}`", "",
             f"{recipe.description}", "", "## Quality against the FP pipeline (same prompts and seeds)", "",
             f"{metrics['num_samples']} samples, {metrics['steps']} sampling steps, seed {metrics['seed']}. The PTQ "
             f"column is the quantized model before training, the QAT column after; same quant layers and bits.", "",
             metrics_table(metrics, {"fp": "FP", "ptq": "PTQ start", "quantized": "after QAT"}), ""]
    for key, text in (("samples", "FP, PTQ and QAT samples"), ("per_step", "per-step SQNR"),
                      ("loss", "distillation loss")):
        if key in figures:
            lines += [f"![{text}]({figures[key]})", ""]
    lines += ["## Training", "", "| setting | value |", "|---|---|"]
    for key in ("steps", "data", "recorded_calls", "learnable", "adapter_rank", "timestep_sampling",
                "trained_parameters", "merged_adapters", "distillation_loss_before", "distillation_loss_after"):
        lines.append(f"| {key} | {_fmt(qat.get(key))} |")
    lines += ["", "| phase | wall time (s) | denoiser calls |", "|---|---|---|"]
    calls = metrics.get("denoiser_calls", {})
    for phase, seconds in metrics.get("timing_s", {}).items():
        lines.append(f"| {phase} | {seconds:.2f} | {_fmt(calls.get(phase))} |")
    lines += ["", "## Files", "", "- `metrics.json`: the numbers above (`ptq`: before training, `quantized`: after)",
              "- `plan.json`: the per-layer precision plan of the PTQ start", "- `checkpoint/`: the trained quantized "
              "pipeline as a diffusers folder (recipe with its `[qat]` section and plan in the denoiser's "
              "quantization_config); reload with `DiffusionPipeline.from_pretrained(\"<this folder>/checkpoint\")`, "
              "evaluate or export it like a `quantize` folder", ""]
    write_text_atomic(path, "\n".join(lines))


def latency_section(latency: dict[str, Any], table: Any) -> list[str]:
    """The plan's latency in its target: predicted from the cost table beside measured on the exported plan."""
    budget = latency.get("max_latency_ratio") or 0
    met = ("" if not budget else f" The budget `max_latency_ratio = {budget}` is "
           f"{'met' if latency['measured_ratio'] <= budget else 'missed'} by the measured figure "
           f"({'within' if latency['predicted_ratio'] <= budget + 1e-9 else 'over'} it as predicted).")
    lines = ["## Latency in the target runtime", "",
             f"Target `{latency['target']}` ({latency['runtime']}, float layers in {latency['inference_precision']}, "
             f"{latency['threads']} thread(s), denoiser batch {latency['batch_size']}) on {latency['cpu']} "
             f"[{' '.join(latency['isa'])}].", "",
             "| | latency / float denoiser | ms per call |", "|---|---:|---:|",
             f"| predicted from the cost table | {latency['predicted_ratio']:.3f} | {latency['predicted_ms']:.2f} |",
             f"| measured: the exported plan vs the exported float denoiser, {latency['rounds']} interleaved rounds "
             f"| {latency['measured_ratio']:.3f} | {latency['measured_ms']:.2f} (float {latency['float_ms']:.2f}) |",
             "", f"Prediction error {latency['predicted_ratio'] - latency['measured_ratio']:+.3f}x.{met}", ""]
    if table is not None:
        lines += [f"Cost table ({'read from the cache' if latency.get('table_from_cache') else 'measured'}, "
                  f"`latency-table.json`): {table.describe()}.", ""]
    return lines


def write_report(path: Path, metrics: dict[str, Any], result: Any, figures: dict[str, str], command: str) -> None:
    recipe = result.recipe
    lines = [f"# brevitas-ldm quantization report: {metrics['model']} with `{recipe.name}`", "",
             f"Command: `{command}`", "",
             f"{recipe.description}", "",
             "## Quality against the FP pipeline (same prompts and seeds)", "",
             f"{metrics['num_samples']} samples, {metrics['steps']} sampling steps, seed {metrics['seed']}.", "",
             metrics_table(metrics), ""]
    if "samples" in figures:
        lines += [f"![FP vs quantized samples]({figures['samples']})", ""]
    if "per_step" in figures:
        lines += ["Denoiser-output SQNR at each sampling step (quantized trajectory vs FP trajectory):", "",
                  f"![per-step SQNR]({figures['per_step']})", ""]
    lines += ["## What was done", "", "| phase | wall time (s) | denoiser calls |", "|---|---|---|"]
    calls = metrics.get("denoiser_calls", {})
    for phase, seconds in metrics.get("timing_s", {}).items():
        lines.append(f"| {phase} | {seconds:.2f} | {_fmt(calls.get(phase))} |")
    mode = CALIBRATION_MODES.get(recipe.calibration.mode)
    lines += ["", f"Calibration: `{mode.name}`{mode.report_note}", ""]
    if recipe.weights.rounding == "gptq":
        gptq = result.gptq
        lines += [f"Weights rounded by GPTQ (Brevitas' `GPTQ`, Hessians from the float inputs of "
                  f"{gptq.denoiser_calls} calibration calls): {len(gptq.layers)} layers"
                  + (f"; left at nearest rounding (Hessian not invertible or layer never run): "
                     f"{', '.join(gptq.failed)}" if gptq.failed else "") + ".", ""]
    if result.plan is not None:
        lines += ["## Precision plan", "", f"Chosen by `{recipe.plan.method}` from the global SQNR analysis "
                  f"(menu {', '.join(map(str, recipe.plan.menu))}).", ""]
        to_markdown = getattr(result.plan, "to_markdown", None)
        if to_markdown:
            lines += [to_markdown(), ""]
    if metrics.get("latency"):
        lines += latency_section(metrics["latency"], result.latency_table)
    if result.block_report is not None:
        lines += ["## Global analysis: block sensitivity", ""]
        to_markdown = getattr(result.block_report, "to_markdown", None)
        if to_markdown:
            lines += [to_markdown(), ""]
        for key in ("block_progressive", "block_added_noise", "block_heatmap"):
            if key in figures:
                lines += [f"![{key}]({figures[key]})", ""]
    if result.layer_report is not None:
        lines += ["## Local analysis: the most sensitive layers", ""]
        to_markdown = getattr(result.layer_report, "to_markdown", None)
        if to_markdown:
            lines += [to_markdown(top=15), ""]
        for key in ("module_ranked", "module_steps"):
            if key in figures:
                lines += [f"![{key}]({figures[key]})", ""]
    if result.smoothing.layers:
        lines += ["## SmoothQuant", "", "| layer | alpha | relative SQNR before (dB) | after (dB) |",
                  "|---|---|---|---|"]
        for name in result.smoothing.layers:
            lines.append(f"| {name} | {_fmt(result.smoothing.alphas.get(name))} | "
                         f"{_fmt(result.smoothing.sqnr_before_db.get(name))} | "
                         f"{_fmt(result.smoothing.sqnr_after_db.get(name))} |")
        lines.append("")
    lines += ["## Files", "", "- `metrics.json`: the numbers above", "- `plan.json`: the per-layer precision plan "
              "(editable; feed back with `--plan`)", "- `checkpoint/`: the quantized pipeline as an ordinary "
              "diffusers folder: `DiffusionPipeline.from_pretrained(\"<this folder>/checkpoint\")` reloads it after "
              "`import brevitas_ldm` (its denoiser's `config.json` carries the `\"brevitas\"` quantization_config: "
              "recipe, precisions, SmoothQuant layout, plan; its weights file holds the integer codes with their "
              "scales, `checkpoint_bytes` above, beside the quantized footprint `size_bytes`). The other components "
              "are hard-linked or copied from the base (`--reference-base`: referenced instead, reload with "
              "`brevitas_ldm.from_pretrained(<this folder>)`). Pass this folder as `--model` to `brevitas-ldm "
              "evaluate` and `brevitas-ldm export`", ""]
    write_text_atomic(path, "\n".join(lines))
