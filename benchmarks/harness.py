"""Side-by-side runs of several recipes on one model, one process, the same prompts and seeds for every row.

The FP pipeline runs the evaluation set once; every configuration then starts from a fresh copy of the FP
denoiser, runs :func:`brevitas_ldm.quantize_pipeline` (timed per phase) and is compared with the FP run by
:func:`brevitas_ldm.evaluation.comparison.compare_quantized`. Wall times are reported as ratios to a baseline row
measured in the same process, so machine speed cancels out.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from brevitas_ldm.denoiser.loading import load_pipeline
from brevitas_ldm.denoiser.sampling import SamplingSpec
from brevitas_ldm.evaluation.class_evaluator import evaluator_for
from brevitas_ldm.evaluation.comparison import compare_quantized, fp_reference
from brevitas_ldm.evaluation.prompts import calibration_set, evaluation_set
from brevitas_ldm.io import write_text_atomic
from brevitas_ldm.quant.footprint import footprint
from brevitas_ldm.quant.quantize import resolve_precisions
from brevitas_ldm.recipe import Recipe
from brevitas_ldm.workflow import quantize_pipeline
from brevitas_ldm.zoo.catalog import CATALOG


@dataclass(frozen=True)
class Configuration:
    """One row: a recipe, and optionally a fixed block/layer -> precision plan that replaces its global analysis."""

    label: str
    recipe: Recipe
    plan: Mapping[str, str] | None = None


def add_run_arguments(parser, default_out: str) -> None:
    """The options every side-by-side benchmark takes (model, sampling, seeds, ladders, output page)."""
    parser.add_argument("--model", default="tiny-sd-digits")
    parser.add_argument("--num-samples", type=int, default=300)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bits", nargs="+", default=["w8a8", "w4a8"], help="which ladders to run")
    parser.add_argument("--out", type=Path, default=Path(default_out))


def machine() -> str:
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch "
            f"{torch.__version__}, {torch.get_num_threads()} torch threads, Python {platform.python_version()}")


@dataclass
class Bench:
    """The FP side of a benchmark, computed once: the pipeline, a pristine copy of its denoiser, the evaluation set
    and the FP reference every row is compared with."""

    model: str
    pipe: Any
    fp_denoiser: nn.Module
    eval_set: Any
    spec: SamplingSpec
    evaluator: Any     # the model's ClassEvaluator, or None
    reference: Any
    fp_seconds: float

    def fp_row(self) -> dict:
        return {"label": "FP", "recipe": "", **self.reference.metrics, "avg_weight_bits": 32.0, "avg_act_bits": 32.0,
                "size_bytes": sum(p.numel() for p in self.fp_denoiser.parameters()) * 4, "output_sqnr_db": math.inf,
                "image_psnr_db": math.inf, "prep_s": 0.0}

    def bits_of(self, recipe: Recipe, plan: Mapping[str, str] | None = None) -> tuple[float, float]:
        """(average weight bits, average activation bits) a recipe + fixed plan gives, without quantizing: the
        footprint the evaluation will report."""
        precisions = resolve_precisions(self.fp_denoiser, recipe, plan)
        size = footprint(self.fp_denoiser, precisions, self.reference.weights, self.reference.activations)
        return size.avg_weight_bits, size.avg_act_bits


def start_bench(model: str, num_samples: int, steps: int, guidance: float, seed: int, batch_size: int = 100) -> Bench:
    pipe = load_pipeline(model)
    fp_denoiser = copy.deepcopy(pipe.unet)
    eval_set = evaluation_set(num_samples, seed, model=model)
    spec = SamplingSpec(steps, guidance, batch_size)
    evaluator = evaluator_for(model)
    start = time.perf_counter()
    reference = fp_reference(pipe, eval_set, spec, evaluator)
    return Bench(model, pipe, fp_denoiser, eval_set, spec, evaluator, reference, time.perf_counter() - start)


def run_row(bench: Bench, config: Configuration, calibration_prompts: int | None = None) -> dict:
    """Quantize a fresh copy of the FP denoiser by ``config`` (timed) and compare it with the FP reference."""
    pipe = bench.pipe
    pipe.unet = copy.deepcopy(bench.fp_denoiser)
    recipe = config.recipe
    cal = calibration_set(calibration_prompts or recipe.calibration.num_prompts, model=bench.model)
    cal_spec = SamplingSpec(bench.spec.num_inference_steps, bench.spec.guidance_scale, recipe.calibration.batch_size)
    print(f"== {config.label} ({recipe.name})", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = quantize_pipeline(pipe, recipe, list(cal.prompts), list(cal.seeds), cal_spec, plan=config.plan,
                               progress=True)
    prep = time.perf_counter() - start
    metrics, _, per_step = compare_quantized(pipe, bench.eval_set, bench.spec, bench.reference, result.precisions,
                                             bench.evaluator)
    return {"label": config.label, "recipe": recipe.name, **metrics, "prep_s": prep,
            "timing_s": result.timing_s, "denoiser_calls": result.denoiser_calls,
            "per_step_sqnr_db": per_step,
            "plan": (result.plan.to_dict()["precisions"] if result.plan is not None else
                     dict(config.plan) if config.plan is not None else None),
            "predicted_sqnr_db": result.plan.predicted_sqnr_db if result.plan is not None else None,
            "smoothed": list(result.smoothing.layers)}


def run_rows(model: str, configurations: list[Configuration], num_samples: int, steps: int, guidance: float,
             seed: int, calibration_prompts: int | None, batch_size: int = 100) -> tuple[dict[str, Any], list[dict]]:
    bench = start_bench(model, num_samples, steps, guidance, seed, batch_size)
    rows = [bench.fp_row()] + [run_row(bench, config, calibration_prompts) for config in configurations]
    return bench_context(bench, seed), rows


def bench_context(bench: Bench, seed: int) -> dict[str, Any]:
    return {"model": bench.model, "num_samples": len(bench.eval_set.prompts), "steps": bench.spec.num_inference_steps,
            "guidance_scale": bench.spec.guidance_scale, "seed": seed, "fp_sampling_s": bench.fp_seconds,
            "machine": machine()}


def write_page_keeping_notes(path: Path, generated: str, marker: str) -> None:
    """Write a regenerated page atomically, keeping what the old page held from ``marker`` on: hand-written
    sections, and sections other benchmarks write, survive a regeneration of the tables."""
    old = path.read_text() if path.is_file() else ""
    write_text_atomic(path, generated + ("\n" + old[old.index(marker):] if marker in old else ""))


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.{digits}f}"
    return str(value)


def fid_of(row: dict) -> tuple[str, float | None]:
    """(display name, value) of the row's classifier FID, whichever embedded model it was measured on."""
    for entry in CATALOG.values():
        if row.get(entry.fid_key) is not None:
            return entry.fid_name, row[entry.fid_key]
    return "digits-FID", None


def markdown_table(rows: list[dict], baseline_label: str) -> str:
    base = next((r for r in rows if r["label"] == baseline_label), None)
    fid_name = next((fid_of(r)[0] for r in rows if fid_of(r)[1] is not None), "digits-FID")
    header = ("| configuration | avg W bits | avg A bits | size (KB) | output SQNR (dB) | image PSNR (dB) | "
              f"{fid_name} | prompt acc. | prep time (s) | prep time / baseline |")
    lines = [header, "|" + "---|" * 10]
    for row in rows:
        ratio = row["prep_s"] / base["prep_s"] if base and base["prep_s"] and row["label"] != "FP" else None
        lines.append(f"| {row['label']} | {_fmt(row['avg_weight_bits'])} | {_fmt(row['avg_act_bits'])} | "
                     f"{row['size_bytes'] / 1024:,.0f} | {_fmt(row['output_sqnr_db'])} | "
                     f"{_fmt(row['image_psnr_db'])} | "
                     f"{_fmt(fid_of(row)[1])} | {_fmt(row.get('prompt_accuracy'), 3)} | "
                     f"{_fmt(row['prep_s'], 1) if row['label'] != 'FP' else '–'} | {_fmt(ratio)} |")
    return "\n".join(lines)


def quality_vs_bits_png(rows: list[dict], path: Path, title: str) -> None:
    from brevitas_ldm.analysis.figures import plt, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        if row["label"] == "FP":
            continue
        bits = row["avg_weight_bits"] + row["avg_act_bits"]
        marker = "*" if "sqnr-hybrid" in row["recipe"] or row["label"].startswith("full") else "o"
        axes[0].scatter(bits, row["output_sqnr_db"], marker=marker, s=80 if marker == "*" else 30)
        axes[0].annotate(row["label"], (bits, row["output_sqnr_db"]), fontsize=7, xytext=(3, 3),
                         textcoords="offset points")
        fid_name, fid = fid_of(row)
        if fid is not None:
            axes[1].scatter(bits, fid, marker=marker, s=80 if marker == "*" else 30)
            axes[1].annotate(row["label"], (bits, fid), fontsize=7, xytext=(3, 3),
                             textcoords="offset points")
    fp = rows[0]
    fid_name, fp_fid = fid_of(fp)
    if fp_fid is not None:
        axes[1].axhline(fp_fid, color="grey", linestyle="--", label="FP")
        axes[1].legend(fontsize=8)
    axes[0].set_xlabel("average weight bits + average activation bits")
    axes[0].set_ylabel("output SQNR vs FP (dB, higher is better)")
    axes[1].set_xlabel("average weight bits + average activation bits")
    axes[1].set_ylabel(f"{fid_name} (lower is better)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    save_figure(fig, path)


def write_json(path: Path, context: dict, rows: list[dict]) -> None:
    """A part's rows with the project's one JSON codec for non-finite figures ("inf", "-inf", "nan")."""
    from brevitas_ldm.io import encode_json_floats, write_json_atomic

    write_json_atomic(path, {"context": context, "rows": encode_json_floats(rows)})


__all__ = ["Bench", "Configuration", "add_run_arguments", "bench_context", "markdown_table", "quality_vs_bits_png",
           "run_row", "run_rows", "start_bench", "write_json", "write_page_keeping_notes", "json"]
