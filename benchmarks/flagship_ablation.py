"""Each component of the equal-bits flagship (``sqnr-hybrid-layer`` in benchmarks/compare.py) taken away in turn.

    python benchmarks/flagship_ablation.py --budgets w8a8 w4a6 --num-samples 500 --part a

Every row plans under the same budget as the flagship (the bits of the best simple rule at that budget, as in
compare.py), on the same samples, against the same FP run. Rows: the flagship; without bias correction; without
SmoothQuant (and its local analysis); calibrated over all steps instead of the maximum-noise step. The flagship with
block instead of layer planning, and the plain per-layer MILP, are compare.py's ``sqnr-hybrid`` and
``per-layer MILP`` rows. Writes docs/results/flagship-ablation-<part>.json (docs/ablation.md reads it).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from compare import RESULTS, planners, rule
from harness import Configuration, bench_context, run_row, start_bench, write_json

from brevitas_ldm.precision import parse_precision


def ablations(flagship: Configuration, budget: str) -> list[Configuration]:
    recipe = flagship.recipe
    no_bc = recipe.replace(name=f"{recipe.name}-bc",
                           calibration=dataclasses.replace(recipe.calibration, bias_correction=False))
    no_sq = recipe.replace(name=f"{recipe.name}-sq", smoothquant=dataclasses.replace(recipe.smoothquant, enabled=False),
                           analysis=dataclasses.replace(recipe.analysis, local=False))
    all_steps = recipe.replace(name=f"{recipe.name}-all-steps",
                               calibration=dataclasses.replace(recipe.calibration, mode="all_steps"))
    return [Configuration(f"flagship {budget}", recipe),
            Configuration(f"- bias correction {budget}", no_bc),
            Configuration(f"- SmoothQuant {budget}", no_sq),
            Configuration(f"all-step calibration {budget}", all_steps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-sd-digits")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", nargs="+", default=["w8a8", "w4a6"])
    parser.add_argument("--part", default="a")
    args = parser.parse_args()
    bench = start_bench(args.model, args.num_samples, 20, 2.0, args.seed)
    rows = [bench.fp_row() | {"budget": ""}]
    command = "python benchmarks/flagship_ablation.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    for budget in args.budgets:
        precision = parse_precision(budget, "--budgets")
        simple = rule(budget, precision.weight_bits, precision.act_bits)
        target = bench.bits_of(simple.recipe, simple.plan)
        flagship = planners(budget, precision.weight_bits, precision.act_bits, target)[-1]
        for config in ablations(flagship, budget):
            rows.append(run_row(bench, config) | {"budget": budget, "target_bits": list(target)})
            write_json(RESULTS / f"flagship-ablation-{args.part}.json", bench_context(bench, args.seed)
                       | {"command": command}, rows)


if __name__ == "__main__":
    main()
