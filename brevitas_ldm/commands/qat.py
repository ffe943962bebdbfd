"""``brevitas-ldm qat``: PTQ (or a PTQ checkpoint), then quantization-aware fine-tuning distilled from the float
denoiser; evaluated before and after training against FP, written atomically into ``--out`` like ``quantize``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from brevitas_ldm.analysis.figures import comparison_grid, line_plot, training_curve
from brevitas_ldm.checkpoint.folder import check_checkpoint_fits
from brevitas_ldm.checkpoint.pretrained import CHECKPOINT_SUBDIR
from brevitas_ldm.commands.common import (
    add_model_options,
    add_output_options,
    add_sampling_options,
    check_evaluator_samples,
    check_sampling_args,
    checked_checkpoint,
    load_model,
)
from brevitas_ldm.commands.quantize import write_plan_files
from brevitas_ldm.denoiser.loading import model_display_name
from brevitas_ldm.denoiser.sampling import SamplingSpec, check_spec
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.evaluation.class_evaluator import evaluator_for
from brevitas_ldm.evaluation.comparison import compare_quantized, fp_reference
from brevitas_ldm.evaluation.prompts import calibration_set, evaluation_set, read_prompt_file
from brevitas_ldm.io import atomic_output_dir, write_json_atomic
from brevitas_ldm.planning.plan import read_plan
from brevitas_ldm.report import write_qat_report
from brevitas_ldm.training.image_folder import (
    check_data_pipeline,
    read_image_folder,
    record_image_folder,
)
from brevitas_ldm.training.qat import QATResult, qat, qat_recipe
from brevitas_ldm.workflow import check_job

LOSS_PNG = "qat_loss.png"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("qat", help="PTQ from a recipe, plan or checkpoint, then quantization-aware "
                                   "fine-tuning distilled from the FP denoiser; evaluate before/after, write report + "
                                   "checkpoint")
    add_model_options(parser)
    parser.add_argument("--recipe", default="qat-w4a8", help="registered recipe name or a .toml file with a [qat] "
                        "section (default: qat-w4a8)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--plan", type=Path, default=None, help="plan.json for the PTQ start instead of the analysis")
    start.add_argument("--checkpoint", type=Path, default=None,
                       help="start from this PTQ checkpoint (a `quantize` folder or its checkpoint/): its quant "
                            "layers, plan and calibrated scales; only the recipe's [qat] section is used")
    parser.add_argument("--data", type=Path, default=None,
                        help="folder of images with a .txt caption each: distil on their noised latents instead of "
                             "the FP model's own trajectories (data-free, the default)")
    parser.add_argument("--qat-steps", type=int, default=None, help="training steps (the recipe's qat.steps)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="reuse/store the PTQ start's global analysis")
    add_sampling_options(parser, num_samples=200)
    add_output_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_sampling_args(args)
    check_evaluator_samples(args)
    if args.qat_steps is not None and args.qat_steps < 1:
        raise BrevitasLDMError(f"--qat-steps {args.qat_steps} must be at least 1")
    recipe = qat_recipe(args.recipe, args.qat_steps)
    prompts = read_prompt_file(args.prompts) if args.prompts else None
    plan = read_plan(args.plan) if args.plan is not None else None
    if args.data is not None:
        read_image_folder(args.data)                     # a bad folder fails before the model loads
    meta = checked_checkpoint(args)                      # so does a bad checkpoint (and --model may be one)
    if plan is not None and args.checkpoint is not None:
        raise BrevitasLDMError(f"--plan {args.plan} and the checkpoint {args.checkpoint} both set the precisions: drop "
                               f"--plan (a checkpoint carries its plan) or pass the FP pipeline as --model")
    pipe, lora = load_model(args)
    if args.data is not None:
        check_data_pipeline(pipe)
    evaluator = evaluator_for(args.model)
    eval_set = evaluation_set(args.num_samples, args.seed, prompts, model=args.model)
    spec = SamplingSpec(args.steps, args.guidance_scale, args.batch_size)
    train_spec = SamplingSpec(args.steps, args.guidance_scale, recipe.qat.batch_size)
    check_spec(pipe, spec)          # what would fail part-way fails now, before the FP evaluation
    if args.checkpoint is None:
        check_job(pipe, recipe, train_spec, plan)
    else:                           # a state that does not fit its config fails now, not after the FP evaluation
        check_checkpoint_fits(pipe, args.checkpoint, meta)
    reference = fp_reference(pipe, eval_set, spec, evaluator)
    data = record_image_folder(pipe, args.data, train_spec, args.seed, progress=True) if args.data else None
    cal = calibration_set(recipe.calibration.num_prompts, prompts=prompts, model=args.model)
    before: dict = {}

    def evaluate_start(start_result) -> None:
        before["metrics"], before["generation"], before["per_step"] = compare_quantized(
            pipe, eval_set, spec, reference, start_result.precisions, evaluator)

    result = qat(pipe, recipe, plan=plan, checkpoint=args.checkpoint, data=data, calibration_prompts=list(cal.prompts),
                 calibration_seeds=list(cal.seeds), spec=train_spec, seed=args.seed, progress=True,
                 cache_dir=args.cache_dir, trajectory_prompts=prompts, before_training=evaluate_start)
    quantized, generation, per_step = compare_quantized(pipe, eval_set, spec, reference, result.quantization.precisions,
                                                        evaluator)
    model_name = model_display_name(args.model)
    metrics = {
        "model": model_name, "recipe": result.recipe.name, "seed": args.seed, "num_samples": args.num_samples,
        "steps": args.steps, "guidance_scale": args.guidance_scale, "dtype": args.dtype or "float32",
        "device": args.device, **({"lora": lora.to_dict()} if lora is not None else {}),
        **({"checkpoint": str(args.checkpoint)} if args.checkpoint is not None else {}),
        "fp": reference.metrics, "ptq": before["metrics"], "quantized": quantized,
        "per_step_sqnr_db": per_step, "ptq_per_step_sqnr_db": before["per_step"],
        "qat": {"steps": len(result.log.losses), "data": result.data.source, "recorded_calls": len(result.data),
                "trained_parameters": result.trained_parameters, "merged_adapters": result.merged_adapters,
                "distillation_loss_before": result.loss_before, "distillation_loss_after": result.loss_after,
                "learnable": list(result.recipe.qat.learnable), "adapter_rank": result.recipe.qat.adapter_rank,
                "timestep_sampling": result.recipe.qat.timestep_sampling},
        "timing_s": dict(result.timing_s), "denoiser_calls": dict(result.denoiser_calls),
    }
    command = "brevitas-ldm " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "brevitas-ldm qat"
    with atomic_output_dir(args.out, args.overwrite) as staging:
        _write_outputs(staging, metrics, result, reference, before["generation"], generation, eval_set, command,
                       model_name, lora)
    ptq, q = metrics["ptq"], metrics["quantized"]
    extra = (f", {evaluator.fid_name} {ptq[evaluator.fid_key]:.2f} -> {q[evaluator.fid_key]:.2f}, prompt accuracy "
             f"{ptq['prompt_accuracy']:.3f} -> {q['prompt_accuracy']:.3f}") if evaluator is not None else ""
    print(f"wrote {args.out}: output SQNR {ptq['output_sqnr_db']:.2f} dB (PTQ) -> {q['output_sqnr_db']:.2f} dB (QAT, "
          f"{len(result.log.losses)} steps){extra}, avg bits W{q['avg_weight_bits']:.2f}/A{q['avg_act_bits']:.2f}")
    return 0


def _write_outputs(staging: Path, metrics: dict, result: QATResult, reference, ptq_generation, generation, eval_set,
                   command: str, model_name: str, lora) -> None:
    write_json_atomic(staging / "metrics.json", metrics)
    write_plan_files(staging, result.quantization, model_name)
    (staging / "figures").mkdir()
    columns = min(10, len(eval_set))
    comparison_grid({"FP": reference.generation.images[:columns], "PTQ": ptq_generation.images[:columns],
                     "QAT": generation.images[:columns]}, staging / "figures" / "samples.png",
                    title="same prompts and seeds", columns=columns)
    line_plot({"PTQ start": metrics["ptq_per_step_sqnr_db"], "after QAT": metrics["per_step_sqnr_db"]},
              staging / "figures" / "per_step_sqnr.png", title="SQNR of the denoiser output per sampling step",
              xlabel="sampling step", ylabel="SQNR (dB)")
    training_curve(result.log.losses, staging / "figures" / LOSS_PNG, title="QAT distillation loss")
    figures = {"samples": "figures/samples.png", "per_step": "figures/per_step_sqnr.png", "loss": f"figures/{LOSS_PNG}"}
    result.save(staging / CHECKPOINT_SUBDIR, model=model_name, lora=lora.to_dict() if lora is not None else None)
    write_qat_report(staging / "report.md", metrics, result, figures, command)
