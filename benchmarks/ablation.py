"""Ablation of the paper's strategy on tiny-sd-digits: each component added to the min-max baseline in turn.

    python benchmarks/ablation.py --out docs/ablation.md

Ladder (W8A8 and W4A8): min-max calibrated over all steps; + single-step calibration (t = T only); + SmoothQuant
on the sensitive layers picked by the local SQNR analysis; + SmoothQuant on all layers instead; + the hybrid
global plan (no SmoothQuant); the full recipe (plan + SmoothQuant on sensitive layers + single-step).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from harness import (
    Configuration,
    add_run_arguments,
    machine,
    markdown_table,
    quality_vs_bits_png,
    run_rows,
    write_json,
)

from brevitas_ldm.io import write_text_atomic
from brevitas_ldm.recipe import get_recipe


def ladder(bits: str) -> list[Configuration]:
    base = get_recipe(f"minmax-{bits}")
    full = get_recipe(f"sqnr-hybrid-{bits}")
    single = base.replace(name=f"{base.name}+single-step",
                          calibration=dataclasses.replace(base.calibration, mode="single_step"))
    sq_sensitive = single.replace(name=f"{base.name}+single-step+sq-sensitive",
                                  analysis=dataclasses.replace(single.analysis, local=True),
                                  smoothquant=full.smoothquant)
    sq_all = single.replace(name=f"{base.name}+single-step+sq-all",
                            smoothquant=dataclasses.replace(full.smoothquant, scope="all", alpha_grid=()))
    plan = single.replace(name=f"{base.name}+single-step+plan",
                          analysis=dataclasses.replace(full.analysis, local=False),
                          plan=full.plan)
    return [Configuration(f"minmax {bits} (all-step calibration)", base),
            Configuration("+ single-step calibration", single),
            Configuration("+ SmoothQuant on sensitive layers", sq_sensitive),
            Configuration("+ SmoothQuant on all layers (instead)", sq_all),
            Configuration("+ hybrid global plan (no SmoothQuant)", plan),
            Configuration(f"full recipe {full.name}", full)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, "docs/ablation.md")
    args = parser.parse_args()
    configurations = [c for bits in args.bits for c in ladder(bits)]
    context, rows = run_rows(args.model, configurations, args.num_samples, args.steps, args.guidance_scale,
                             args.seed, calibration_prompts=None)
    command = "python benchmarks/ablation.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    figure = args.out.parent / "figures" / "ablation-quality-vs-bits.png"
    quality_vs_bits_png(rows, figure, "tiny-sd-digits ablation: quality vs average bits")
    write_json(args.out.with_suffix(".json"), context, rows)
    baseline = configurations[0].label
    text = [f"# Ablation of the SQNR-driven strategy on {args.model}", "", f"Command: `{command.strip()}`", "",
            f"{args.num_samples} samples, {args.steps} DDIM steps, guidance {args.guidance_scale}, seeds "
            f"{args.seed}..{args.seed + args.num_samples - 1}, same prompts and seeds for every row. "
            f"Machine: {machine()}.", "",
            "Prep time = analysis (global + local) + SmoothQuant + calibration wall time; the ratio is to the first "
            "row, measured in the same process.", "", markdown_table(rows, baseline_label=baseline), "",
            f"![quality vs bits](figures/{figure.name})", "",
            f"Raw numbers: [{args.out.with_suffix('.json').name}]({args.out.with_suffix('.json').name}).", ""]
    write_text_atomic(args.out, "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
