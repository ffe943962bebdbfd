"""``brevitas-ldm analyze``: the sensitivity analyses only (block report, plan, layer report, figures)."""

from __future__ import annotations

import argparse

from brevitas_ldm.commands.common import (
    add_model_options,
    add_output_options,
    check_sampling_args,
    load_model,
    positive_int,
)
from brevitas_ldm.cost import estimate
from brevitas_ldm.denoiser.loading import model_display_name
from brevitas_ldm.denoiser.sampling import SamplingSpec, check_spec, get_denoiser
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.evaluation.prompts import calibration_set, read_prompt_file
from brevitas_ldm.io import atomic_output_dir, write_json_atomic
from brevitas_ldm.job import ANALYSIS_PHASES, price_phases, run_phases
from brevitas_ldm.limits import check_count
from brevitas_ldm.process.job_progress import JobProgress
from brevitas_ldm.process.ranks import current_ranks, peak_rss_bytes
from brevitas_ldm.recipe import get_recipe
from brevitas_ldm.workflow import prepare_job


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("analyze", help="global (block) and local (layer) SQNR analyses and the plan")
    add_model_options(parser)
    parser.add_argument("--recipe", default="sqnr-hybrid-w8a8", help="registered recipe name or a .toml file")
    parser.add_argument("--num-prompts", type=positive_int, default=None,
                        help="analysis prompts (default: the recipe's analysis.num_prompts)")
    parser.add_argument("--steps", "--inference-steps", type=int, default=20, help="sampling steps (default: 20)")
    parser.add_argument("--guidance-scale", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=10_000, help="seed of the first analysis sample")
    parser.add_argument("--prompts", default=None, help="text file, one prompt per line")
    parser.add_argument("--local-analysis", "--local", dest="local", action="store_true",
                        help="also run the local analysis if the recipe does not (under torchrun spell it "
                        "--local-analysis: torchrun takes --local for an abbreviation of its own options)")
    parser.add_argument("--cache-dir", default=None, help="reuse/store the global analysis here")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan of work (denoiser calls, estimated time and peak memory) and stop")
    add_output_options(parser, required=False)
    parser.set_defaults(run=run, num_samples=1)


def run(args: argparse.Namespace) -> int:
    check_sampling_args(args)
    if args.out is None and not args.dry_run:
        raise BrevitasLDMError("--out is required (the folder the reports go to), except with --dry-run")
    if args.num_prompts is not None:
        check_count(args.num_prompts, "--num-prompts")
    recipe = get_recipe(args.recipe)
    prompts = read_prompt_file(args.prompts) if args.prompts else None
    pipe, _ = load_model(args)
    samples = calibration_set(args.num_prompts or recipe.analysis.num_prompts, seed=args.seed, prompts=prompts,
                              model=args.model)
    spec = SamplingSpec(args.steps, args.guidance_scale, args.batch_size)
    check_spec(pipe, spec)          # what would fail part-way fails now, before the analysis
    model_name = model_display_name(args.model)
    state = prepare_job(pipe, recipe, samples.prompts, samples.seeds, spec, progress=True, cache_dir=args.cache_dir,
                        model_id=model_name, local=recipe.analysis.local or args.local,
                        analysis_num_prompts=len(samples))     # --num-prompts: every sample is analysed
    work = estimate(pipe, recipe, price_phases(ANALYSIS_PHASES, state), samples.prompts, samples.seeds, spec,
                    state.notes)
    print("\n".join(work.lines()), flush=True)
    if args.dry_run:
        return 0
    with JobProgress(type(get_denoiser(pipe)), work.total_calls):
        run_phases(ANALYSIS_PHASES, state)
        summary = _write_analysis(args, state.result, len(samples), model_name)
    print(summary)      # after the job's bar has closed
    return 0


def _write_analysis(args: argparse.Namespace, result, num_prompts: int, model_name: str) -> str:
    """analysis.json, plan.json, the reports and figures of a finished analysis (main rank)."""
    report, layer_report, plan, recipe = result.block_report, result.layer_report, result.plan, result.recipe
    plan.model, plan.recipe = model_name, recipe.name
    timing = {key: result.timing_s[key] for key in ("global_analysis", "local_analysis") if key in result.timing_s}
    if not current_ranks().is_main:
        return ""       # the main rank holds the same reports and writes them
    summary = {"model": model_name, "recipe": recipe.name, "num_prompts": num_prompts, "steps": args.steps,
               "timing_s": timing,
               "denoiser_calls": {key: result.denoiser_calls[key] for key in ("global_analysis", "local_analysis")
                                  if key in result.denoiser_calls},
               "global_from_cache": report.from_cache,
               "peak_rss_bytes": peak_rss_bytes(),
               "plan": {"method": plan.method, "predicted_sqnr_db": plan.predicted_sqnr_db,
                        "avg_weight_bits": plan.avg_weight_bits, "avg_act_bits": plan.avg_act_bits,
                        "precisions": {block: str(p) for block, p in plan.precisions.items()}}}
    with atomic_output_dir(args.out, args.overwrite) as staging:
        report.save(staging)
        plan.save(staging / "plan.json")
        if layer_report is not None:
            layer_report.save(staging)
        write_json_atomic(staging / "analysis.json", summary)
        lines = [f"# SQNR analysis of {model_name} with `{recipe.name}`", "", "## Blocks", "", report.to_markdown(),
                 "", "## Plan", "", plan.to_markdown(), ""]
        if layer_report is not None:
            lines += ["## Layers", "", layer_report.to_markdown(top=20), ""]
        lines += ["Figures: " + ", ".join(f"[{p.name}]({p.name})" for p in sorted(staging.glob("*.png"))), ""]
        from brevitas_ldm.io import write_text_atomic

        write_text_atomic(staging / "report.md", "\n".join(lines))
    return (f"wrote {args.out}: plan {plan.method}, predicted output SQNR {plan.predicted_sqnr_db:.2f} dB, "
            f"global analysis {timing['global_analysis']:.1f} s")
