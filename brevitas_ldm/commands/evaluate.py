"""``brevitas-ldm evaluate``: score the FP pipeline alone (metrics.json + sample grid)."""

from __future__ import annotations

import argparse
import copy
import time

from brevitas_ldm.analysis.figures import grid_by_label
from brevitas_ldm.commands.common import (
    add_checkpoint_option,
    add_model_options,
    add_output_options,
    add_sampling_options,
    check_evaluator_samples,
    check_sampling_args,
    checked_checkpoint,
    load_model,
)
from brevitas_ldm.denoiser.loading import model_display_name
from brevitas_ldm.denoiser.sampling import SamplingSpec, check_spec
from brevitas_ldm.evaluation.class_evaluator import evaluator_for
from brevitas_ldm.evaluation.prompts import evaluation_set, read_prompt_file
from brevitas_ldm.evaluation.run import class_metrics, generate_with_latents
from brevitas_ldm.io import atomic_output_dir, write_json_atomic


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="evaluate the FP pipeline, or a quantized pipeline folder "
                                   "against its FP base (SQNR, PSNR; an embedded model's FID and prompt accuracy)")
    add_model_options(parser)
    add_sampling_options(parser, num_samples=500)
    add_output_options(parser)
    add_checkpoint_option(parser, " to evaluate against the FP model instead")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    meta = checked_checkpoint(args)     # a bad checkpoint fails before the model loads
    check_sampling_args(args)
    check_evaluator_samples(args)
    prompts = read_prompt_file(args.prompts) if args.prompts else None
    pipe, _ = load_model(args)
    eval_set = evaluation_set(args.num_samples, args.seed, prompts, model=args.model)
    spec = SamplingSpec(args.steps, args.guidance_scale, args.batch_size)
    check_spec(pipe, spec)          # a step count or guidance the pipeline cannot sample fails before any sampling
    if meta is not None:
        return _evaluate_checkpoint(args, meta, pipe, eval_set, spec)
    start = time.perf_counter()
    generation = generate_with_latents(pipe, eval_set, spec, progress=True, desc="FP sampling")
    metrics = {
        "model": model_display_name(args.model), "recipe": None, "seed": args.seed,
        "num_samples": args.num_samples, "steps": args.steps, "guidance_scale": args.guidance_scale,
        "fp": {},
        "timing_s": {"sampling": generation.seconds},
        "denoiser_calls": {"evaluation": args.steps * -(-args.num_samples // args.batch_size)},
    }
    evaluator = evaluator_for(args.model)
    if evaluator is not None:
        metrics["fp"].update(class_metrics(generation.images, eval_set, evaluator))
        metrics["reference"] = {**evaluator.baselines(), "classifier_heldout_accuracy": evaluator.heldout_accuracy()}
    metrics["timing_s"]["evaluation"] = time.perf_counter() - start
    with atomic_output_dir(args.out, args.overwrite) as staging:
        write_json_atomic(staging / "metrics.json", metrics)
        grid_by_label(generation.images, eval_set.labels, staging / "samples.png",
                      class_names=evaluator.entry.class_names if evaluator is not None else None,
                      title=f"{metrics['model']} FP, {args.steps} steps, guidance {args.guidance_scale}")
    fp = metrics["fp"]
    summary = ", ".join(f"{k} {v:.4g}" for k, v in fp.items()) or "no class evaluator for this model"
    print(f"wrote {args.out}/metrics.json ({summary})")
    return 0


def _evaluate_checkpoint(args: argparse.Namespace, meta: dict, pipe, eval_set, spec: SamplingSpec) -> int:
    """FP reference, then the checkpoint loaded into the same pipeline (no analysis, no calibration)."""
    from brevitas_ldm.analysis.figures import comparison_grid
    from brevitas_ldm.checkpoint.folder import load_quantized, read_checkpoint_recipe
    from brevitas_ldm.denoiser.sampling import get_denoiser, pipeline_denoiser
    from brevitas_ldm.evaluation.comparison import compare_quantized, fp_reference
    from brevitas_ldm.quant.quantize import read_precisions

    evaluator = evaluator_for(args.model)
    start = time.perf_counter()
    # The checkpoint is applied first, to the pipeline's denoiser, and the FP reference samples an untouched copy:
    # a state that does not fit the model is refused before the FP sampling, not after it.
    fp_denoiser = copy.deepcopy(get_denoiser(pipe))
    load_quantized(pipe, args.checkpoint, meta)
    with pipeline_denoiser(pipe, fp_denoiser):
        reference = fp_reference(pipe, eval_set, spec, evaluator)
    del fp_denoiser
    quantized, generation, per_step = compare_quantized(pipe, eval_set, spec, reference,
                                                        read_precisions(get_denoiser(pipe)), evaluator)
    metrics = {"model": model_display_name(args.model), "recipe": read_checkpoint_recipe(args.checkpoint).name,
               "checkpoint": str(args.checkpoint), "seed": args.seed, "num_samples": args.num_samples,
               "steps": args.steps, "guidance_scale": args.guidance_scale, "fp": reference.metrics,
               "quantized": quantized, "per_step_sqnr_db": per_step,
               "timing_s": {"evaluation": time.perf_counter() - start}}
    with atomic_output_dir(args.out, args.overwrite) as staging:
        write_json_atomic(staging / "metrics.json", metrics)
        columns = min(10, len(eval_set))
        comparison_grid({"FP": reference.generation.images[:columns], "quantized": generation.images[:columns]},
                        staging / "samples.png", title="same prompts and seeds", columns=columns)
    print(f"wrote {args.out}/metrics.json (output SQNR {quantized['output_sqnr_db']:.2f} dB)")
    return 0
