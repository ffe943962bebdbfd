"""Scale benchmark: brevitas-ldm on a UNet with Stable Diffusion 1.5's real block structure (~860M parameters).

The embedded model is tiny, so its timings say little about what the analyses cost on a production-sized
denoiser. This benchmark builds, with no download, a random-weight (seeded, diffusers' default init)
``UNet2DConditionModel`` with SD-1.5's exact block structure and widths, wraps it in a real
``StableDiffusionPipeline`` (tiny random VAE that is never run for latent outputs, a one-layer random CLIP text
encoder that emits 768-d states as SD-1.5's does, the project's own CLIP tokenizer, DDIM), and measures at a small
latent size:

1. one denoiser call (classifier-free guidance batch): FP vs fake-quantized W8A8 vs fake-quantized W8A8 inside
   :func:`brevitas_ldm.quant.quantize.fast_inference`, timed side by side in alternating rounds in one process, with the
   peak resident memory of each call (Linux ``VmHWM`` reset through ``/proc/self/clear_refs`` before each phase);
2. the global analysis (:class:`~brevitas_ldm.sensitivity.global_.BlockSensitivity`, menu restricted to the
   recipe's base precision): cost per denoiser call and in total, and the block sensitivity ranking;
3. the local analysis (:class:`~brevitas_ldm.sensitivity.local.LayerSensitivity`, one FP pass with quantized
   twins): cost per denoiser call;
4. single-step vs all-steps calibration: denoiser calls and wall time;
5. (CPU, Linux) the same calls and the local analysis in a child process with glibc's malloc mmap/trim thresholds
   raised, which shows how much of the cost is page faults of large temporaries.

It writes ``docs/scale.md`` and ``docs/figures/scale-blocks.png`` (atomically)::

    python benchmarks/scale.py --latent-size 16 --steps 4 --prompts 1 --out docs/scale.md
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from scale_measure import (
    ALLOCATOR_ENV,
    Recorder,
    bench_denoiser_call,
    build_pipeline,
    calibrate,
    call_inputs,
    denoiser_call,
    quantized_copy,
    run_global,
    run_local,
    time_weight_quantization,
    trajectory_stats,
)
from scale_report import FIGURE_NAME, _median, save_blocks_figure, write_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: cuda when torch.cuda.is_available(), else cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                        help="dtype the pipeline is built, analysed and timed in (SQNR against FP in the same dtype)")
    parser.add_argument("--latent-size", type=int, default=16, help="latent height = width (multiple of 8)")
    parser.add_argument("--steps", type=int, default=4, help="DDIM steps of the analyses and calibration runs")
    parser.add_argument("--prompts", type=int, default=1, help="prompts (one seed each) for analyses/calibration")
    parser.add_argument("--guidance-scale", type=float, default=2.0)
    parser.add_argument("--recipe", default="sqnr-hybrid-w8a8",
                        help="recipe whose base precision, quantizers and (single-step) calibration are used")
    parser.add_argument("--rounds", type=int, default=2, help="alternating timing rounds of the denoiser call")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-global", action="store_true")
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--no-allocator-probe", action="store_true",
                        help="skip re-measuring the calls and the local analysis with raised glibc malloc thresholds")
    parser.add_argument("--allocator-probe", action="store_true", help=argparse.SUPPRESS)  # the child's mode
    parser.add_argument("--out", type=Path, default=Path("docs/scale.md"))
    parser.add_argument("--figures", type=Path, default=None, help="figure folder (default: <out dir>/figures)")
    return parser.parse_args(argv)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every part of the run shares: device, recipe variants, prompts, seeds, sampling spec."""

    device: torch.device
    recipe: Any
    single_recipe: Any
    multi_recipe: Any
    prompts: list[str]
    seeds: list[int]
    spec: Any


def make_setup(args: argparse.Namespace) -> Setup:
    from brevitas_ldm.denoiser.sampling import SamplingSpec
    from brevitas_ldm.errors import BrevitasLDMError
    from brevitas_ldm.recipe import get_recipe
    from brevitas_ldm.zoo.data import prompt_for

    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise BrevitasLDMError("--device cuda but torch.cuda.is_available() is False: use --device cpu")
    recipe = get_recipe(args.recipe)
    return Setup(
        device=torch.device("cuda" if cuda else "cpu"), recipe=recipe,
        single_recipe=recipe.replace(calibration=dataclasses.replace(recipe.calibration, mode="single_step")),
        multi_recipe=recipe.replace(calibration=dataclasses.replace(recipe.calibration, mode="all_steps")),
        prompts=[prompt_for(i % 10) for i in range(args.prompts)],
        seeds=[args.seed + i for i in range(args.prompts)],
        spec=SamplingSpec(args.steps, args.guidance_scale, batch_size=args.prompts))


# -- allocator probe ---------------------------------------------------------------------------------------------
PROBE_MARKER = "ALLOCATOR_PROBE_RESULT "


def allocator_probe(args: argparse.Namespace) -> dict[str, float]:
    """(Child process.) FP and fake-quant call times and the local analysis' cost per call, nothing else."""
    setup = make_setup(args)
    rec = Recorder(setup.device, release_memory=False)  # trimming the heap would undo the allocator settings
    pipe = build_pipeline(args.latent_size, args.seed).to(setup.device, getattr(torch, args.dtype))
    inputs = call_inputs(pipe, setup.prompts, args.latent_size, args.steps, args.seed, setup.device)
    qmodel = quantized_copy(pipe, setup.single_recipe, rec, "single_step")
    calibrate(pipe, qmodel, setup.single_recipe, setup.prompts, setup.seeds, setup.spec, rec, "single_step")
    denoiser_call(pipe.unet, inputs)
    denoiser_call(qmodel, inputs)
    for _ in range(args.rounds):
        with rec.phase("call fp"):
            denoiser_call(pipe.unet, inputs)
        with rec.phase("call fake-quant"):
            denoiser_call(qmodel, inputs)
    time_weight_quantization(qmodel, rec)
    del qmodel
    gc.collect()
    spec = dataclasses.replace(setup.spec, num_inference_steps=min(args.steps, 2))
    run_local(pipe, setup.single_recipe, setup.prompts, setup.seeds, spec, rec, setup.device)
    local = rec.get("local analysis")
    return {"fp_s": _median(rec.all("call fp")), "fq_s": _median(rec.all("call fake-quant")),
            "fq_sys_s": statistics.median(p.sys_seconds for p in rec.all("call fake-quant")),
            "weight_quant_s": rec.get("quantize all weights once (quant_weight)").seconds,
            "local_per_call_s": local.extra["fp_pass_s"] / max(local.extra["fp_pass_calls"], 1),
            "local_calls": local.extra["fp_pass_calls"], "local_peak_rss_kb": local.peak_rss_kb or 0}


def run_allocator_probe(argv: list[str]) -> dict[str, float] | str:
    """Run :func:`allocator_probe` in a child process with :data:`ALLOCATOR_ENV`; its result, or why it failed."""
    import json
    import subprocess

    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--allocator-probe"]
    print("allocator probe (child process with raised glibc malloc thresholds) ...", flush=True)
    try:
        done = subprocess.run(command, env={**os.environ, **ALLOCATOR_ENV}, capture_output=True, text=True,
                              timeout=1200)
    except subprocess.TimeoutExpired:
        return "the child process ran over 20 minutes"
    for line in done.stdout.splitlines():
        if line.startswith(PROBE_MARKER):
            return json.loads(line[len(PROBE_MARKER):])
    return f"the child process exited with {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"


# ---------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.allocator_probe:
        import json

        print(PROBE_MARKER + json.dumps(allocator_probe(args)), flush=True)
        return 0
    start_all = time.perf_counter()
    setup = make_setup(args)
    device, prompts, seeds, spec = setup.device, setup.prompts, setup.seeds, setup.spec
    single_recipe, multi_recipe = setup.single_recipe, setup.multi_recipe
    from brevitas_ldm.denoiser.blocks import get_blocks, quantizable_layers
    from brevitas_ldm.sqnr import sqnr_db

    rec = Recorder(device)
    info: dict[str, Any] = {"load_start": os.getloadavg()[0], "precision": setup.recipe.default_precision.name,
                            "dtype": args.dtype,
                            "calibration": single_recipe.calibration.mode}

    with rec.phase("build model"):
        pipe = build_pipeline(args.latent_size, args.seed).to(device, getattr(torch, args.dtype))
    info["params"] = sum(p.numel() for p in pipe.unet.parameters())
    info["layers"] = len(quantizable_layers(pipe.unet))
    info["blocks"] = len(get_blocks(pipe.unet))
    print(f"SD-1.5-shaped UNet: {info['params']:,} parameters, {info['layers']} layers, {info['blocks']} blocks")
    inputs = call_inputs(pipe, prompts, args.latent_size, args.steps, args.seed, device)
    info["trajectory"] = trajectory_stats(pipe, prompts, seeds, spec)
    info["call_timestep"] = float(inputs["timestep"])

    # 1 + 4a: quantized copy calibrated on the max-noise step only; side-by-side call timing
    qmodel = quantized_copy(pipe, single_recipe, rec, "single_step")
    calibrate(pipe, qmodel, single_recipe, prompts, seeds, spec, rec, "single_step")
    info.update(bench_denoiser_call(pipe, qmodel, inputs, args.rounds, rec))
    info["call_sqnr_db"] = info.pop("sqnr_db")
    time_weight_quantization(qmodel, rec)
    del qmodel
    gc.collect()

    # 4b: all-steps calibration on a fresh copy
    qmodel = quantized_copy(pipe, multi_recipe, rec, "all_steps")
    calibrate(pipe, qmodel, multi_recipe, prompts, seeds, spec, rec, "all_steps")
    with torch.no_grad():
        info["multi_call_sqnr_db"] = sqnr_db(denoiser_call(pipe.unet, inputs), denoiser_call(qmodel, inputs))
    del qmodel
    gc.collect()

    # 2: global analysis
    block_report, global_error = None, "skipped (--skip-global)"
    if not args.skip_global:
        try:
            block_report = run_global(pipe, single_recipe, prompts, seeds, spec, rec)
        except (RuntimeError, MemoryError) as exc:  # report a failure at scale instead of losing the other numbers
            global_error = f"{type(exc).__name__}: {exc}"
        gc.collect()

    # 3: local analysis
    layer_report, local_error = None, "skipped (--skip-local)"
    if not args.skip_local:
        try:
            layer_report = run_local(pipe, single_recipe, prompts, seeds, spec, rec, device)
        except (RuntimeError, MemoryError, ImportError) as exc:
            local_error = f"{type(exc).__name__}: {exc}"
        gc.collect()

    probe: dict[str, float] | str = "skipped (--no-allocator-probe)"
    if not args.no_allocator_probe and device.type == "cpu" and sys.platform.startswith("linux"):
        del pipe  # the child builds its own model
        gc.collect()
        probe = run_allocator_probe(argv)
    info["allocator_probe"] = probe

    figure = None
    if block_report is not None:
        figure = (args.figures or args.out.parent / "figures") / FIGURE_NAME
        save_blocks_figure(block_report, figure)
    info["total_s"] = time.perf_counter() - start_all
    text = write_report(args, argv, device, rec, info, block_report, layer_report, local_error, global_error,
                        figure)
    from brevitas_ldm.io import write_text_atomic

    write_text_atomic(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
