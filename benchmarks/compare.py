"""Side-by-side comparison of brevitas-ldm's strategy against the peers' strategies (one process, same seeds).

    python benchmarks/compare.py --out docs/compare.md

Rows: FP; minmax-w8a8 (the paper's baseline); qdiffusion-w8a8 (Q-Diffusion's uniformly sampled calibration
steps, without its reconstruction); smoothquant-w8a8 (SmoothQuant everywhere, alpha 0.9 as Brevitas' diffusion
example); brevitas-sd-w8a8 (Brevitas' Stable Diffusion example defaults: asymmetric per-channel weights,
activation equalization on all layers, calibration over 8-step runs); nncf-hybrid-w8a8 (weight-only 8-bit Linear
layers, W8A8 convolutions); sqnr-hybrid-w8a8 (this project); and the W4A8 counterparts. Prep time (analysis +
smoothing + calibration) is given as a ratio to minmax-w8a8 measured in the same process.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from harness import Configuration, add_run_arguments, machine, markdown_table, quality_vs_bits_png, run_rows, write_json

from brevitas_ldm.io import write_text_atomic
from brevitas_ldm.recipe import get_recipe

PEERS = ["minmax", "qdiffusion", "smoothquant", "brevitas-sd", "nncf-hybrid", "sqnr-hybrid"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, "docs/compare.md")
    args = parser.parse_args()
    configurations = [Configuration(f"{peer}-{bits}", get_recipe(f"{peer}-{bits}"))
                      for bits in args.bits for peer in PEERS]
    context, rows = run_rows(args.model, configurations, args.num_samples, args.steps, args.guidance_scale,
                             args.seed, calibration_prompts=None)
    command = "python benchmarks/compare.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    figure = args.out.parent / "figures" / "compare-quality-vs-bits.png"
    quality_vs_bits_png(rows, figure, "tiny-sd-digits: quality vs average bits (one point per recipe)")
    write_json(args.out.with_suffix(".json"), context, rows)
    text = [f"# brevitas-ldm vs the peers' strategies on {args.model}", "",
            f"Command: `{command.strip()}`", "",
            f"{args.num_samples} samples, {args.steps} DDIM steps, guidance {args.guidance_scale}, seeds "
            f"{args.seed}..{args.seed + args.num_samples - 1}; every row uses the same prompts and seeds and is "
            f"compared with the FP pipeline run in the same process. Machine: {machine()}.", "",
            "Prep time = analysis + SmoothQuant + calibration wall time; the ratio is to `minmax-w8a8` in the same "
            "run.", "",
            markdown_table(rows, baseline_label="minmax-w8a8"), "",
            f"![quality vs bits](figures/{figure.name})", "",
            "Raw numbers (per-step SQNR, plans, smoothed layers, phase timings): "
            f"[{args.out.with_suffix('.json').name}]({args.out.with_suffix('.json').name}).", ""]
    write_text_atomic(args.out, "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
