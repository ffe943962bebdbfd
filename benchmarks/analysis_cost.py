"""What the global analysis' plan loses when the analysis is cheaper (issue 13, item 6).

    python benchmarks/analysis_cost.py --num-samples 200 --timestep-layers calibration_steps \
        --out docs/results/analysis-cost.json                  # timestep-only layers calibrated at t = T (0.5.0)
    python benchmarks/analysis_cost.py --num-samples 200 --timestep-layers every_step \
        --out docs/results/analysis-cost-every-step.json       # over every step (the quickstart since 0.6.0)

Runs the quickstart recipe (sqnr-hybrid-w8a8) with its global analysis on full 20-step runs, progressive sweep on,
and cheaper variants: the progressive sweep off (no planner uses it), and fewer analysis steps (``[analysis]
steps``). Every variant plans under the same budget; each is evaluated on the same samples against the same FP run.
Reported: the analysis' denoiser calls, the plan's agreement with the full analysis' plan (blocks at the same
precision), average bits, output SQNR and digits-FID. ``--timestep-layers`` overrides the recipe's ``[calibration]
timestep_layers``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from harness import Configuration, bench_context, run_row, start_bench, write_json

from brevitas_ldm.recipe import TIMESTEP_LAYER_CALIBRATIONS, get_recipe

VARIANTS = {"full (20 steps, progressive)": (0, True), "no progressive": (0, False),
            "8 steps, no progressive": (8, False), "6 steps, no progressive": (6, False),
            "4 steps, no progressive": (4, False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-sd-digits")
    parser.add_argument("--recipe", default="sqnr-hybrid-w8a8")
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--timestep-layers", choices=TIMESTEP_LAYER_CALIBRATIONS, default=None,
                        help="override the recipe's [calibration] timestep_layers")
    parser.add_argument("--out", type=Path, default=Path("docs/results/analysis-cost.json"))
    args = parser.parse_args()
    bench = start_bench(args.model, args.num_samples, 20, 2.0, args.seed)
    base = get_recipe(args.recipe)
    if args.timestep_layers is not None:
        base = base.replace(calibration=dataclasses.replace(base.calibration, timestep_layers=args.timestep_layers))
    rows = [bench.fp_row()]
    for label in args.variants:
        steps, progressive = VARIANTS[label]
        recipe = base.replace(name=f"{base.name} [{label}]",
                              analysis=dataclasses.replace(base.analysis, steps=steps, progressive=progressive))
        rows.append(run_row(bench, Configuration(label, recipe)))
        write_json(args.out,
                   bench_context(bench, args.seed) | {"command": "python benchmarks/analysis_cost.py " + " ".join(
            shlex.quote(a) for a in sys.argv[1:])}, rows)


if __name__ == "__main__":
    main()
