"""``brevitas-ldm quantize``: the main job (analysis, plan, smoothing, calibration, quantization, evaluation,
report, checkpoint), written atomically into ``--out``."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from brevitas_ldm.analysis.block_report import (
    ADDED_NOISE_PNG,
    HEATMAP_PNG,
    PROGRESSIVE_PNG,
)
from brevitas_ldm.analysis.figures import comparison_grid, line_plot
from brevitas_ldm.analysis.layer_report import RANKED_PNG, STEPS_PNG
from brevitas_ldm.checkpoint.pretrained import CHECKPOINT_SUBDIR
from brevitas_ldm.commands.common import (
    add_model_options,
    add_output_options,
    add_sampling_options,
    check_evaluator_samples,
    check_sampling_args,
    load_model,
)
from brevitas_ldm.cost import estimate
from brevitas_ldm.denoiser.loading import model_display_name
from brevitas_ldm.denoiser.lora import FusedLora
from brevitas_ldm.denoiser.sampling import SamplingSpec, check_spec, get_denoiser
from brevitas_ldm.errors import BrevitasLDMError, RecipeError
from brevitas_ldm.evaluation.class_evaluator import evaluator_for
from brevitas_ldm.evaluation.prompts import calibration_set, evaluation_set, read_prompt_file
from brevitas_ldm.io import atomic_output_dir, write_json_atomic
from brevitas_ldm.job import EVALUATED_PHASES, price_phases, run_phases
from brevitas_ldm.job.evaluation import Evaluation
from brevitas_ldm.limits import check_count
from brevitas_ldm.planning.plan import read_plan
from brevitas_ldm.process.job_progress import JobProgress
from brevitas_ldm.process.ranks import current_ranks
from brevitas_ldm.recipe import Recipe, get_recipe
from brevitas_ldm.workflow import finish_job, prepare_job

#: The PNGs the analysis reports write, by the key report.md links them under.
ANALYSIS_FIGURES = {"block_progressive": PROGRESSIVE_PNG, "block_added_noise": ADDED_NOISE_PNG,
                    "block_heatmap": HEATMAP_PNG, "module_ranked": RANKED_PNG, "module_steps": STEPS_PNG}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("quantize", help="the main job: analyse, plan, smooth, calibrate, quantize, "
                                   "evaluate against FP, write report + checkpoint")
    add_model_options(parser)
    parser.add_argument("--recipe", default="sqnr-hybrid-w8a8", help="registered recipe name or a .toml file")
    parser.add_argument("--plan", type=Path, default=None,
                        help="plan.json to use instead of the global analysis (e.g. an edited one)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="reuse/stores the global analysis here, so re-planning is fast")
    parser.add_argument("--calibration-prompts", "--calibration-prompt", type=int, default=None,
                        help="calibration samples (default: the recipe's calibration.num_prompts)")
    parser.add_argument("--calibration-prompt-path", type=Path, default=None,
                        help="text file of calibration prompts, one per line (default: --prompts, else the model's "
                        "own prompts)")
    parser.add_argument("--calibration-steps", type=int, default=None,
                        help="sampling steps of the calibration runs (the recipe's calibration.sampling_steps; "
                        "default: --steps)")
    parser.add_argument("--calibration-batch-size", type=int, default=None,
                        help="samples per calibration/analysis pipeline call (the recipe's calibration.batch_size)")
    parser.add_argument("--max-latency-ratio", type=float, default=None,
                        help="the recipe's plan.max_latency_ratio: the plan's predicted latency in its plan.target "
                        "runtime over the float denoiser's there may not exceed it (a recipe with plan.target, e.g. "
                        "sqnr-hybrid-w8a8-openvino; 0 drops the budget)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan of work (denoiser calls per phase, estimated time and peak memory from "
                        "one timed call) and stop")
    parser.add_argument("--reference-base", action="store_true",
                        help="write only the quantized denoiser into checkpoint/ and reference --model instead of "
                        "linking its other components in (for very large pipelines; reload with "
                        "brevitas_ldm.from_pretrained)")
    add_sampling_options(parser, num_samples=200)
    add_output_options(parser, required=False)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_sampling_args(args)
    check_evaluator_samples(args)
    if args.out is None and not args.dry_run:
        raise BrevitasLDMError("--out is required (the folder the report and quantized pipeline go to), except with "
                               "--dry-run")
    recipe = with_plan_flags(with_calibration_flags(get_recipe(args.recipe), args), args)
    if args.calibration_prompts is not None and args.calibration_prompts < 1:
        raise BrevitasLDMError(f"--calibration-prompts {args.calibration_prompts} must be at least 1")
    if args.calibration_prompts is not None:
        check_count(args.calibration_prompts, "--calibration-prompts")
    prompts = read_prompt_file(args.prompts) if args.prompts else None
    calibration_prompts = (read_prompt_file(args.calibration_prompt_path, "--calibration-prompt-path")
                           if args.calibration_prompt_path else prompts)
    plan = read_plan(args.plan) if args.plan is not None else None    # a bad plan file fails before any work
    pipe, lora = load_model(args)
    eval_set = evaluation_set(args.num_samples, args.seed, prompts, model=args.model)
    spec = SamplingSpec(args.steps, args.guidance_scale, args.batch_size)
    cal = calibration_set(args.calibration_prompts or recipe.calibration.num_prompts, prompts=calibration_prompts,
                          model=args.model)
    cal_spec = SamplingSpec(args.steps, args.guidance_scale, recipe.calibration.batch_size)
    check_spec(pipe, spec)          # what would fail part-way fails now, before the FP evaluation
    # the job's checks (check_job) run here too, before the plan of work and the FP evaluation
    state = prepare_job(pipe, recipe, cal.prompts, cal.seeds, cal_spec, plan=plan, progress=True,
                        cache_dir=args.cache_dir, evaluation=Evaluation(eval_set, spec,
                                                                        evaluator_for(args.model)))
    work = estimate(pipe, recipe, price_phases(EVALUATED_PHASES, state), cal.prompts, cal.seeds, cal_spec,
                    state.notes)
    print("\n".join(work.lines()), flush=True)
    if args.dry_run:
        return 0
    with JobProgress(type(get_denoiser(pipe)), work.total_calls) as job:
        run_phases(EVALUATED_PHASES, state)
        summary = _write_job(args, finish_job(state), state.evaluation, work, job, lora)
    print(summary)      # after the job's bar has closed
    return 0


def with_calibration_flags(recipe: Recipe, args: argparse.Namespace) -> Recipe:
    """The recipe with ``--calibration-steps`` / ``--calibration-batch-size`` applied (checked like TOML keys)."""
    changes = {}
    if args.calibration_steps is not None:
        if args.calibration_steps < 1:
            raise BrevitasLDMError(f"--calibration-steps {args.calibration_steps} must be at least 1")
        changes["sampling_steps"] = args.calibration_steps
    if args.calibration_batch_size is not None:
        if args.calibration_batch_size < 1:
            raise BrevitasLDMError(f"--calibration-batch-size {args.calibration_batch_size} must be at least 1")
        changes["batch_size"] = args.calibration_batch_size
    if not changes:
        return recipe
    return dataclasses.replace(recipe, calibration=dataclasses.replace(recipe.calibration, **changes))


def with_plan_flags(recipe: Recipe, args: argparse.Namespace) -> Recipe:
    """The recipe with ``--max-latency-ratio`` applied, checked as the TOML key is (a flag, because the budget is
    the one number a user tunes per machine and runtime, and copying a recipe to change it hides which one ran)."""
    if args.max_latency_ratio is None:
        return recipe
    if args.max_latency_ratio and not recipe.plan.target:
        raise RecipeError(f"--max-latency-ratio {args.max_latency_ratio:g} needs a recipe with plan.target (the "
                          f"runtime whose latency it bounds), and {recipe.name!r} has none: use --recipe "
                          f"sqnr-hybrid-w8a8-openvino, or a .toml with plan.target = \"openvino-cpu\" or "
                          f"\"onnxruntime-cpu\"")
    try:
        plan = dataclasses.replace(recipe.plan, max_latency_ratio=args.max_latency_ratio)
        plan.validate()
    except RecipeError as error:
        raise RecipeError(f"--max-latency-ratio {args.max_latency_ratio:g} with recipe {recipe.name!r}: "
                          f"{error}") from None
    return dataclasses.replace(recipe, plan=plan)


def _write_job(args: argparse.Namespace, result, evaluation: Evaluation, work, job: JobProgress,
               lora: FusedLora | None) -> str:
    """metrics.json, the report, the figures and the quantized pipeline folder of a finished job (main rank)."""
    model_name = model_display_name(args.model)
    evaluator = evaluation.evaluator
    reference, quantized, per_step = evaluation.reference, evaluation.quantized, evaluation.per_step_sqnr_db
    if not current_ranks().is_main:
        return ""       # this rank sampled its share; the main rank scores, reports and writes
    metrics = {
        "model": model_name, "recipe": result.recipe.name, "seed": args.seed, "num_samples": args.num_samples,
        "threads": work.timing.threads,   # thread counts change float sums in the last bits: --threads N reproduces
        **({"processes": current_ranks().world_size} if current_ranks().is_distributed else {}),
        "steps": args.steps, "guidance_scale": args.guidance_scale, "dtype": args.dtype or "float32",
        "device": args.device,
        **({"lora": lora.to_dict()} if lora is not None else {}),
        "fp": reference.metrics,
        "quantized": quantized,
        "per_step_sqnr_db": per_step,
        "timing_s": {"analysis": result.timing_s.get("analysis", 0.0),
                     "smoothing": result.timing_s.get("smoothing", 0.0),
                     "calibration": result.timing_s.get("calibration", 0.0),
                     "evaluation": evaluation.timing_s["evaluation"] + evaluation.timing_s["fp_evaluation"],
                     **{k: v for k, v in result.timing_s.items() if k not in ("analysis", "smoothing", "calibration")}},
        "denoiser_calls": {"analysis": result.denoiser_calls.get("analysis", 0),
                           "calibration": result.denoiser_calls.get("calibration", 0),
                           **{k: v for k, v in result.denoiser_calls.items() if k not in ("analysis", "calibration")}},
        **({"latency": dict(result.latency)} if result.latency else {}),
        "plan_of_work": {**work.to_dict(), "counted_calls": job.calls,
                         "counted_calls_by_phase": dict(result.counted_calls)},
    }
    command = ("brevitas-ldm " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:]
               else "brevitas-ldm quantize")
    with atomic_output_dir(args.out, args.overwrite) as staging:
        write_outputs(staging, metrics, result, reference, evaluation.generation, evaluation.eval_set, per_step,
                      command, model_name, lora, self_contained=not args.reference_base)
    q = metrics["quantized"]
    extra = (f", prompt accuracy {q['prompt_accuracy']:.3f}, {evaluator.fid_name} {q[evaluator.fid_key]:.2f}"
             if evaluator is not None else "")
    latency = metrics.get("latency")
    if latency:
        extra += (f", latency in {latency['target']} {latency['measured_ratio']:.3f}x float (predicted "
                  f"{latency['predicted_ratio']:.3f}x)")
    return (f"wrote {args.out}: output SQNR {q['output_sqnr_db']:.2f} dB, image PSNR {q['image_psnr_db']:.2f} dB, "
            f"avg bits W{q['avg_weight_bits']:.2f}/A{q['avg_act_bits']:.2f}{extra}\n"
            + folder_summary(args.out, model_name, q))


def folder_summary(out: Path, model_name: str, quantized: dict | None = None) -> str:
    """One line on the quantized pipeline folder: its denoiser file against the quantized footprint, what it
    links or references, and how to reload it."""
    import json

    from brevitas_ldm.checkpoint.folder import META_FILE, denoiser_file_bytes
    from brevitas_ldm.checkpoint.pretrained import folder_bytes

    folder = out / CHECKPOINT_SUBDIR
    stored = denoiser_file_bytes(folder)
    footprint = f" (quantized footprint {quantized['size_bytes'] / 1e6:.2f} MB)" if quantized else ""
    if json.loads((folder / META_FILE).read_text()).get("self_contained", True):
        how = (f"a self-contained diffusers folder ({folder_bytes(folder) / 1e6:.1f} MB, the other components "
               f"hard-linked or copied from {model_name}); reload with DiffusionPipeline.from_pretrained("
               f"{str(folder)!r}) after `import brevitas_ldm`")
    else:
        how = (f"the denoiser only, referencing the base pipeline {model_name}; reload with "
               f"brevitas_ldm.from_pretrained({str(out)!r})")
    return (f"quantized pipeline folder: {folder}: denoiser file {stored / 1e6:.2f} MB of integer codes{footprint}, "
            f"{how}, or pass --model {out} to evaluate/export")


def write_plan_files(staging: Path, result, model_name: str) -> None:
    """``plan.json`` (editable, reusable with ``--plan``) and ``layer_precisions.json`` of a quantized run."""
    result.plan_or_uniform(model_name).save(staging / "plan.json")
    write_json_atomic(staging / "layer_precisions.json", {k: str(v) for k, v in result.precisions.items()})


def write_outputs(staging: Path, metrics: dict, result, reference, generation, eval_set, per_step: list[float],
                  command: str, model_name: str, lora: FusedLora | None = None, self_contained: bool = True) -> None:
    from brevitas_ldm.checkpoint.folder import denoiser_file_bytes
    from brevitas_ldm.report import write_report

    figures: dict[str, str] = {}
    folder = result.save(staging / CHECKPOINT_SUBDIR, model=model_name,
                         lora=lora.to_dict() if lora is not None else None,
                         self_contained=self_contained)
    metrics["quantized"]["checkpoint_bytes"] = denoiser_file_bytes(folder)
    write_json_atomic(staging / "metrics.json", metrics)
    write_plan_files(staging, result, model_name)
    if result.latency_table is not None:
        result.latency_table.save(staging / "latency-table.json")
    (staging / "figures").mkdir()
    columns = min(10, len(eval_set))
    comparison_grid({"FP": reference.generation.images[:columns], result.recipe.name: generation.images[:columns]},
                    staging / "figures" / "samples.png", title="same prompts and seeds", columns=columns)
    figures["samples"] = "figures/samples.png"
    line_plot({"denoiser output": per_step}, staging / "figures" / "per_step_sqnr.png",
              title="SQNR of the denoiser output per sampling step", xlabel="sampling step", ylabel="SQNR (dB)")
    figures["per_step"] = "figures/per_step_sqnr.png"
    if result.block_report is not None:
        result.block_report.save(staging / "analysis")
    if result.layer_report is not None:
        result.layer_report.save(staging / "analysis")
    for key, name in ANALYSIS_FIGURES.items():
        if (staging / "analysis" / name).is_file():
            figures[key] = f"analysis/{name}"
    write_report(staging / "report.md", metrics, result, figures, command)
