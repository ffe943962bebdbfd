"""Benchmark of the global (block-level) SQNR analysis and the hybrid precision plan.

Measures, on one model and recipe:
* the wall time and denoiser-call count of the full analysis (progressive + isolated, every menu precision),
  and of a cached rerun followed by re-planning;
* the block ranking (isolated output SQNR at the recipe's base precision);
* predicted (noise additivity) vs measured output SQNR for the chosen plan and N random plans at its budget;
* whether the plan beats uniform W8A8 plus the same extra bits given to random blocks (mean of N draws), and
  whether the top-k most sensitive blocks in high precision beat the top-k least sensitive.

    python benchmarks/global_analysis.py --model tiny-sd-digits --out docs/global-analysis.md
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sd-digits", help="embedded model name or pipeline directory")
    parser.add_argument("--recipe", default="sqnr-hybrid-w8a8")
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=2.0)
    parser.add_argument("--fid-samples", type=int, default=200,
                        help="evaluation samples per configuration for digits-FID (0: skip; digits models only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-random", type=int, default=5, help="random plans / random draws per comparison")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the paper machine has 2 cores)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="analysis cache (default: a fresh temporary folder, so the first run is cold)")
    parser.add_argument("--figures", type=Path, default=None, help="also save block_report.json + PNGs here")
    parser.add_argument("--out", type=Path, default=Path("docs/global-analysis.md"))
    return parser.parse_args(argv)


def fmt(value: float) -> str:
    return "inf" if value == float("inf") else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from harness import write_page_keeping_notes

    from brevitas_ldm.analysis.block_sensitivity import BlockSensitivity
    from brevitas_ldm.denoiser.loading import load_pipeline, model_display_name
    from brevitas_ldm.denoiser.sampling import SamplingSpec
    from brevitas_ldm.denoiser.trajectory import fp_reference
    from brevitas_ldm.planning.planners import (
        choose_plan,
        random_upgrade_plans,
        top_k_plan,
    )
    from brevitas_ldm.planning.prediction import average_bits, predict_sqnr_db
    from brevitas_ldm.planning.validation import measure_plan, validate_plan
    from brevitas_ldm.quant.precision_bank import PrecisionBank
    from brevitas_ldm.recipe import get_recipe
    from brevitas_ldm.zoo.data import prompt_for

    recipe = get_recipe(args.recipe)
    pipe = load_pipeline(args.model)
    prompts = [prompt_for(i % 10) for i in range(args.num_prompts)]
    seeds = [args.seed + i for i in range(args.num_prompts)]
    spec = SamplingSpec(args.steps, args.guidance_scale, batch_size=args.num_prompts)
    model_id = model_display_name(args.model)
    tmp = tempfile.TemporaryDirectory() if args.cache_dir is None else None
    cache_dir = args.cache_dir or Path(tmp.name)

    # 1. cold analysis, 2. cached rerun + re-planning
    analysis = BlockSensitivity(recipe, prompts, seeds, spec, progress=True)
    start = time.perf_counter()
    report = analysis.run(pipe, cache_dir=cache_dir, model_id=model_id)
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    cached = BlockSensitivity(recipe, prompts, seeds, spec, progress=False).run(pipe, cache_dir, model_id=model_id)
    plan = choose_plan(cached, recipe.plan, recipe.default_precision)
    rerun_s = time.perf_counter() - start
    if args.figures:
        report.save(args.figures)
    bank, reference = analysis.bank, analysis.reference
    if bank is None or reference is None:  # a warm --cache-dir: build the FP run and copies the measurements need
        reference = fp_reference(pipe, prompts, seeds, spec)
        bank = PrecisionBank(pipe, recipe, prompts, seeds, spec)

    # 3. predicted vs measured: the plan and random plans at the same budget
    rows = validate_plan(pipe, recipe, report, plan, num_random=args.num_random, seed=args.seed, bank=bank,
                         reference=reference, progress=True)
    plan.measured_sqnr_db = rows[0]["measured_db"]

    # 4. plan vs uniform base precision + the same extra bits at random blocks
    default, high = recipe.default_precision.name, recipe.plan.high_precision
    uniform = {n: default for n in report.block_names}
    uniform_db = measure_plan(pipe, recipe, uniform, bank=bank, reference=reference)
    budget_w = recipe.plan.avg_weight_bits or plan.avg_weight_bits
    budget_a = recipe.plan.avg_act_bits or plan.avg_act_bits
    upgrades = random_upgrade_plans(report, args.num_random, budget_w, budget_a, high, default, seed=args.seed)
    upgrade_db = [measure_plan(pipe, recipe, p.precisions, bank=bank, reference=reference) for p in upgrades]

    # 5. top-k most vs least sensitive in high precision
    k = max(1, recipe.plan.top_k)
    most = top_k_plan(report, k, high, default)
    least = top_k_plan(report, k, high, default, least=True)
    most_db = measure_plan(pipe, recipe, most.precisions, bank=bank, reference=reference)
    least_db = measure_plan(pipe, recipe, least.precisions, bank=bank, reference=reference)

    # 6. digits-FID of each configuration on an evaluation set (other seeds than the analysis)
    from brevitas_ldm.evaluation.class_evaluator import evaluator_for

    fid_of = {}
    evaluator = evaluator_for(args.model) if args.fid_samples else None
    if evaluator is not None:
        from brevitas_ldm.evaluation.prompts import evaluation_set
        from brevitas_ldm.evaluation.run import generate_with_latents

        eval_set = evaluation_set(args.fid_samples, seed=1000, model=args.model)
        eval_spec = SamplingSpec(args.steps, args.guidance_scale, batch_size=100)

        def digits_fid(precisions) -> float:
            if precisions is None:
                images = generate_with_latents(pipe, eval_set, eval_spec).images
            else:
                with bank.configured(bank.layer_precisions(precisions)):
                    images = generate_with_latents(pipe, eval_set, eval_spec).images
            return evaluator.fid(images)

        fid_of["FP"] = digits_fid(None)
        fid_of["uniform"] = digits_fid(uniform)
        fid_of["plan"] = digits_fid(plan.precisions)
        fid_of["random"] = [digits_fid(p.precisions) for p in upgrades]
        fid_of["most"] = digits_fid(most.precisions)
        fid_of["least"] = digits_fid(least.precisions)

    # -- the write-up ------------------------------------------------------------------------------------------
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    calls = report.denoiser_calls
    timing = report.timing_s
    lines = [
        "# Global (block-level) SQNR analysis and hybrid plan",
        "",
        f"Command: `{command}`",
        "",
        f"Model `{model_id}`, recipe `{recipe.name}` (base {default}, high precision {high}, menu "
        f"{', '.join(map(str, report.menu))}, calibration `{recipe.calibration.mode}`, timestep-only layers "
        f"`{recipe.calibration.timestep_layers}`), {args.num_prompts} prompts, "
        f"DDIM with {recipe.analysis.steps or args.steps}-step analysis runs (every SQNR below is measured on "
        f"them) and {args.steps}-step digits-FID samples, guidance {args.guidance_scale}, "
        f"{args.threads} torch thread(s), "
        f"{os.cpu_count()} CPU cores.",
        "",
        "## Cost",
        "",
        "| phase | wall time (s) | denoiser calls |",
        "|---|---|---|",
        f"| FP reference | {timing['fp_reference']:.1f} | {calls['fp_reference']} |",
        f"| quantize + calibrate ({len(report.precisions) - 1} precisions, once each) | "
        f"{timing['quantize_calibrate']:.1f} | {calls['calibration']} |",
        f"| isolated sweep | {timing['isolated']:.1f} | {calls['isolated']} |",
        f"| progressive sweep | {timing['progressive']:.1f} | {calls['progressive']} |",
        f"| **full analysis (cold)** | **{cold_s:.1f}** | **{calls['total']}** |",
        f"| cached rerun + re-planning | {rerun_s:.2f} | 0 |",
        "",
        "## Blocks",
        "",
        report.to_markdown(),
        "",
        "Ranking (most sensitive first, isolated output SQNR at the base precision): "
        + ", ".join(f"{n} ({report.block(n).isolated_db[default]:.1f} dB)" for n in report.ranking()),
        "",
        f"## Chosen plan (`plan.method = {recipe.plan.method}`)",
        "",
        plan.to_markdown(),
        "",
        "## Noise additivity: predicted vs measured output SQNR",
        "",
        "| plan | avg weight bits | avg act bits | predicted (dB) | measured (dB) | error (dB) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['name']} | {row['avg_weight_bits']:.2f} | {row['avg_act_bits']:.2f} | "
                     f"{fmt(row['predicted_db'])} | {fmt(row['measured_db'])} | {row['error_db']:+.2f} |")
    errors = [abs(r["error_db"]) for r in rows]
    lines += ["", f"Mean absolute prediction error {statistics.mean(errors):.2f} dB, max {max(errors):.2f} dB "
                  f"over {len(rows)} plans.", "",
              "## Does the analysis pay off?", "",
              (f"digits-FID: {args.fid_samples} evaluation samples (seeds 1000..{999 + args.fid_samples}) per "
               f"configuration, FP {fid_of['FP']:.2f}." if fid_of else "digits-FID: not measured."), "",
              "| configuration | avg weight bits | avg act bits | predicted (dB) | measured (dB) | digits-FID |",
              "|---|---|---|---|---|---|"]

    def add(name, precisions, measured, fid=None):
        w, a = average_bits(report, precisions)
        lines.append(f"| {name} | {w:.2f} | {a:.2f} | {fmt(predict_sqnr_db(report, precisions))} | {fmt(measured)} | "
                     f"{'–' if fid is None else f'{fid:.2f}'} |")

    add(f"uniform {default}", uniform, uniform_db, fid_of.get("uniform"))
    add("SQNR plan", plan.precisions, plan.measured_sqnr_db, fid_of.get("plan"))
    for i, (p, db) in enumerate(zip(upgrades, upgrade_db)):
        upgraded = [n for n, v in p.precisions.items() if str(v) != str(default)]
        add(f"{default} + {high} at random blocks #{i + 1} ({', '.join(upgraded) or 'none'})", p.precisions, db,
            fid_of["random"][i] if fid_of else None)
    add(f"top-{k} most sensitive at {high}", most.precisions, most_db, fid_of.get("most"))
    add(f"top-{k} least sensitive at {high}", least.precisions, least_db, fid_of.get("least"))
    mean_upgrade = statistics.mean(upgrade_db)
    if fid_of:
        mean_fid = statistics.mean(fid_of["random"])
        lines += ["", f"* digits-FID: plan {fid_of['plan']:.2f} vs random extra bits {mean_fid:.2f} (mean of "
                      f"{len(fid_of['random'])}) -> "
                      f"{'plan is lower or equal' if fid_of['plan'] <= mean_fid else 'plan is HIGHER'}; "
                      f"uniform {fid_of['uniform']:.2f}; top-{k} most {fid_of['most']:.2f} vs least "
                      f"{fid_of['least']:.2f}; FP {fid_of['FP']:.2f}."]
    lines += ["",
              f"* Plan vs uniform {default} + {high} at random blocks within the same budget "
              f"({budget_w:g} weight bits, "
              f"{budget_a:g} act bits; mean of {len(upgrade_db)} draws): "
              f"{fmt(plan.measured_sqnr_db)} dB vs {fmt(mean_upgrade)} dB -> "
              f"{'plan wins' if plan.measured_sqnr_db > mean_upgrade else 'plan does NOT win'} "
              f"({plan.measured_sqnr_db - mean_upgrade:+.2f} dB; uniform {default}: {fmt(uniform_db)} dB).",
              f"* Top-{k} most sensitive at {high} vs top-{k} least sensitive: {fmt(most_db)} dB vs {fmt(least_db)} dB"
              f" -> {'most-sensitive wins' if most_db > least_db else 'most-sensitive does NOT win'} "
              f"({most_db - least_db:+.2f} dB).",
              ""]
    text = "\n".join(lines)
    print(text)
    # Sections written by other benchmarks (analysis_cost.py) below the marker survive a regeneration.
    write_page_keeping_notes(args.out, text, "<!-- kept: sections below are not generated by global_analysis.py -->")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
