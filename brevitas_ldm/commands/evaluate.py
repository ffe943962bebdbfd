"""``brevitas-ldm evaluate``: score the FP pipeline alone (metrics.json + sample grid)."""

from __future__ import annotations

import argparse
import time

from brevitas_ldm.commands.common import (add_model_options, add_output_options, add_sampling_options,
                                          check_sampling_args)
from brevitas_ldm.evaluation.prompts import evaluation_set, read_prompt_file
from brevitas_ldm.evaluation.run import digits_metrics, generate_with_latents, has_digits_evaluator
from brevitas_ldm.figures import grid_by_label
from brevitas_ldm.io import atomic_output_dir, check_output_dir, write_json_atomic
from brevitas_ldm.models import load_pipeline, model_display_name
from brevitas_ldm.sampling import SamplingSpec


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="evaluate the FP pipeline (digits-FID, prompt accuracy)")
    add_model_options(parser)
    add_sampling_options(parser, num_samples=500)
    add_output_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_sampling_args(args)
    check_output_dir(args.out, args.overwrite)
    pipe = load_pipeline(args.model, args.device)
    prompts = read_prompt_file(args.prompts) if args.prompts else None
    eval_set = evaluation_set(args.num_samples, args.seed, prompts)
    spec = SamplingSpec(args.steps, args.guidance_scale, args.batch_size)
    start = time.perf_counter()
    generation = generate_with_latents(pipe, eval_set, spec, progress=True, desc="FP sampling")
    metrics = {
        "model": model_display_name(args.model), "recipe": None, "seed": args.seed,
        "num_samples": args.num_samples, "steps": args.steps, "guidance_scale": args.guidance_scale,
        "fp": {},
        "timing_s": {"sampling": generation.seconds},
        "denoiser_calls": {"evaluation": args.steps * -(-args.num_samples // args.batch_size)},
    }
    if has_digits_evaluator(args.model):
        metrics["fp"].update(digits_metrics(generation.images, eval_set))
        from brevitas_ldm.evaluation.digits import DigitsEvaluator

        evaluator = DigitsEvaluator()
        metrics["reference"] = {**evaluator.baselines(), "classifier_heldout_accuracy": evaluator.heldout_accuracy()}
    metrics["timing_s"]["evaluation"] = time.perf_counter() - start
    with atomic_output_dir(args.out, args.overwrite) as staging:
        write_json_atomic(staging / "metrics.json", metrics)
        grid_by_label(generation.images, eval_set.labels, staging / "samples.png",
                      title=f"{metrics['model']} FP, {args.steps} steps, guidance {args.guidance_scale}")
    fp = metrics["fp"]
    summary = ", ".join(f"{k} {v:.4g}" for k, v in fp.items()) or "no digits evaluator for this model"
    print(f"wrote {args.out}/metrics.json ({summary})")
    return 0
