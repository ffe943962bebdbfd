"""Checkpoint size: the quantized pipeline folder's denoiser file against its float file and the quantized footprint.

Builds the random-weight SD-1.5-shaped UNet at half channel width (block_out_channels 160, 320, 640, 640; ~220 M
parameters; ``scale_measure.build_pipeline``), saves its float UNet with ``save_pretrained``, quantizes it with a
recipe (min-max calibration over one short run: the file size does not depend on calibration quality), saves the
quantized pipeline folder, reloads it with ``DiffusionPipeline.from_pretrained`` and checks the latents are
bit-identical. Prints one JSON line::

    python benchmarks/checkpoint_size.py --recipe minmax-w8a8 --out /tmp/ckpt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="minmax-w8a8")
    parser.add_argument("--latent-size", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from diffusers import DiffusionPipeline
    from scale_measure import build_pipeline

    import brevitas_ldm
    from brevitas_ldm.denoiser.sampling import SamplingSpec, generate
    from brevitas_ldm.evaluation.comparison import fp_reference
    from brevitas_ldm.evaluation.prompts import EvaluationSet
    from brevitas_ldm.quant.footprint import footprint

    start = time.perf_counter()
    pipe = build_pipeline(args.latent_size, 0, (160, 320, 640, 640))
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.save_pretrained(str(args.out / "float-unet"))
    spec = SamplingSpec(num_inference_steps=1, guidance_scale=2.0, batch_size=1)
    prompts, seeds = ["a handwritten digit seven"], [0]
    reference = fp_reference(pipe, EvaluationSet(tuple(prompts), tuple(seeds)), spec, None)
    result = brevitas_ldm.quantize_pipeline(pipe, args.recipe, prompts, seeds, spec)
    size = footprint(pipe.unet, result.precisions, reference.weights, reference.activations)
    folder = result.save(args.out / "q")
    latents = generate(pipe, prompts, seeds, spec)
    reloaded = DiffusionPipeline.from_pretrained(str(folder))
    reloaded.set_progress_bar_config(disable=True)
    same = torch.equal(generate(reloaded, prompts, seeds, spec), latents)
    stored = (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    print(json.dumps({
        "recipe": args.recipe, "parameters": sum(p.numel() for p in reference_parameters(args.out)),
        "float_file_bytes": (args.out / "float-unet" / "diffusion_pytorch_model.safetensors").stat().st_size,
        "quantized_file_bytes": stored, "footprint_bytes": size.size_bytes,
        "file_over_footprint": stored / size.size_bytes, "reload_bit_identical": same,
        "wall_s": round(time.perf_counter() - start, 1), "torch": torch.__version__}))
    return 0 if same else 1


def reference_parameters(out: Path):
    from safetensors.torch import load_file

    return load_file(str(out / "float-unet" / "diffusion_pytorch_model.safetensors")).values()


if __name__ == "__main__":
    raise SystemExit(main())
