"""Speed and memory of the torch runtime's fused int8/fp8 kernels against the float model, and the global analysis'
cost, on random-weight SD-1.5- and SDXL-shaped UNets (diffusers configs built here, nothing downloaded).

One prepared script for the GPU figures of docs/gpu.md (issue 32)::

    python benchmarks/gpu.py --device cuda --out docs/gpu.json            # bf16, SD-1.5 full width + SDXL
    python benchmarks/gpu.py --device cpu --dtype float32 --models sd15 --width half --out docs/gpu-cpu.json
    python benchmarks/gpu.py --dry-run                                    # tiny configs on the CPU, seconds

Per model: the float model eager and under ``torch.compile``, and the torch runtime (``brevitas_ldm.runtimes``) of
the model quantized with ``minmax-w8a8`` (``int8``: ``torch._int_mm``) and ``fp8-e4m3`` (``fp8``:
``torch._scaled_mm``), eager and compiled. Latencies are medians of interleaved rounds (every variant once per
round, rotating order), ratios against the float eager and compiled rows of the same rounds; memory is each
variant's resident weights plus the peak added by one call (CUDA: the allocator's high-water mark; CPU: not
measured per call). Each variant's output is compared with the float model's (SQNR), as a sanity check of the
random-weight model, not an accuracy figure. The global analysis row runs ``BlockSensitivity`` (a W8A8/W4A8 menu)
on a pipeline around the SD-1.5-shaped UNet and reports denoiser calls per second and the peak memory against the
float model's weights (target <= 1.2x).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

SD15 = {"in_channels": 4, "out_channels": 4, "layers_per_block": 2, "block_out_channels": (320, 640, 1280, 1280),
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32, "sample_size": 64}
SDXL = {"in_channels": 4, "out_channels": 4, "layers_per_block": 2, "block_out_channels": (320, 640, 1280),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20),
        "cross_attention_dim": 2048, "use_linear_projection": True, "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
        "sample_size": 128}
#: The dry-run/--tiny shapes: two levels of the same block types, one layer each, a few channels, so a test runs
#: the whole script in seconds.
TINY = {"sd15": {"block_out_channels": (16, 32), "layers_per_block": 1, "cross_attention_dim": 16,
                 "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                 "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "attention_head_dim": 4,
                 "norm_num_groups": 8, "sample_size": 8},
        "sdxl": {"block_out_channels": (16, 32), "layers_per_block": 1, "transformer_layers_per_block": (1, 1),
                 "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                 "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "attention_head_dim": (2, 4),
                 "cross_attention_dim": 16, "addition_time_embed_dim": 8,
                 "projection_class_embeddings_input_dim": 16 + 6 * 8, "norm_num_groups": 8, "sample_size": 8}}
RECIPES = {"int8": "minmax-w8a8", "fp8": "fp8-e4m3"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda or cpu (default cuda)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                        help="model dtype (default: bfloat16 on CUDA, float32 on the CPU)")
    parser.add_argument("--models", default="sd15,sdxl", help="comma-separated: sd15, sdxl")
    parser.add_argument("--width", choices=("full", "half"), default="full",
                        help="channel widths: the real model's, or half of them (for slow CPUs)")
    parser.add_argument("--tiny", action="store_true", help="a few channels per block (for tests)")
    parser.add_argument("--dry-run", action="store_true",
                        help="--device cpu --tiny --dtype float32, 1 round, no torch.compile: checks the script")
    parser.add_argument("--batch", type=int, default=2, help="denoiser batch (a CFG pair of one image: 2)")
    parser.add_argument("--latent", type=int, default=None, help="latent size (default: the model's sample_size)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--no-fp8", action="store_true", help="skip the fp8 variants")
    parser.add_argument("--analysis", choices=("on", "off"), default="on",
                        help="also run the global analysis on the SD-1.5-shaped pipeline (default on)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.tiny, args.dtype, args.rounds, args.no_compile = "cpu", True, "float32", 1, True
    return args


def unet_config(model: str, width: str, tiny: bool) -> dict[str, Any]:
    config = dict(SD15 if model == "sd15" else SDXL)
    if tiny:
        config.update(TINY[model])
    elif width == "half":
        config["block_out_channels"] = tuple(c // 2 for c in config["block_out_channels"])
        if model == "sdxl":      # SDXL's heads are 64 channels wide: half width keeps the head size
            config["attention_head_dim"] = tuple(h // 2 for h in config["attention_head_dim"])
    return config


def build_unet(config: dict[str, Any], seed: int):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**config).eval()


def unet_inputs(config: dict[str, Any], batch: int, latent: int, device, dtype, seed: int) -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    def rand(*shape):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)
    inputs: dict[str, Any] = {"sample": rand(batch, 4, latent, latent),
                              "timestep": torch.full((batch,), 999, device=device),
                              "encoder_hidden_states": rand(batch, 77, config["cross_attention_dim"])}
    if config.get("addition_embed_type") == "text_time":
        text = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        inputs["added_cond_kwargs"] = {"text_embeds": rand(batch, text),
                                       "time_ids": torch.tensor([[8.0 * latent, 8.0 * latent, 0, 0, 8.0 * latent,
                                                                  8.0 * latent]] * batch, device=device, dtype=dtype)}
    return inputs


def weight_bytes(model) -> int:
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers()) if t is not None}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def deployed(fp_unet, recipe_name: str, inputs: dict[str, Any], seed: int):
    """A copy of ``fp_unet`` quantized with ``recipe_name``, calibrated on two random calls, on the torch runtime."""
    import torch

    from brevitas_ldm.quant.calibration import multi_step_calibration
    from brevitas_ldm.quant.quantize import quantize_denoiser
    from brevitas_ldm.recipe import get_recipe
    from brevitas_ldm.runtimes import deploy

    model = copy.deepcopy(fp_unet)
    quantize_denoiser(model, get_recipe(recipe_name))
    with torch.no_grad(), multi_step_calibration(model):
        for offset in range(2):
            noise = torch.Generator().manual_seed(seed + offset)
            model(**{**inputs, "sample": torch.randn(inputs["sample"].shape, generator=noise).to(inputs["sample"])})
    model.eval()
    deployment = deploy(model)
    gc.collect()
    return model, deployment


def call_peak(call, device) -> int | None:
    """Bytes one call adds at its peak above what was allocated before it (CUDA only)."""
    import torch

    if device.type != "cuda":
        call()
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    call()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def bench_model(name: str, args, device, dtype) -> dict[str, Any]:
    import torch

    from brevitas_ldm.process.timing import interleaved_latency
    from brevitas_ldm.sqnr import sqnr_db

    config = unet_config(name, args.width, args.tiny)
    latent = args.latent or config["sample_size"]
    fp = build_unet(config, args.seed).to(device=device, dtype=dtype)
    inputs = unet_inputs(config, args.batch, latent, device, dtype, args.seed + 1)
    models: dict[str, Any] = {"float": fp}
    kernels: dict[str, dict[str, int]] = {}
    notes: list[str] = []
    for kind, recipe in RECIPES.items():
        if kind == "fp8" and args.no_fp8:
            continue
        start = time.perf_counter()
        models[kind], deployment = deployed(fp, recipe, inputs, args.seed + 7)
        kernels[kind] = deployment.kernels
        notes += deployment.notes
        notes.append(f"{kind}: quantize + calibrate + deploy {time.perf_counter() - start:.1f} s")
    if device.type == "cuda":
        torch.cuda.empty_cache()

    def caller(model):
        return lambda: model(**inputs).sample

    calls = {}
    for kind, model in models.items():
        calls[f"{kind}_eager"] = caller(model)
        if not args.no_compile:
            calls[f"{kind}_compiled"] = caller(torch.compile(model))
    result: dict[str, Any] = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
                              "latent": latent, "batch": args.batch, "kernels": kernels, "notes": notes,
                              "weights_bytes": {kind: weight_bytes(m) for kind, m in models.items()}}
    with torch.no_grad():
        reference = calls["float_eager"]().float()
        result["sqnr_vs_float_db"] = {}
        for label, call in calls.items():          # also the first (compiling) call of every compiled variant
            start = time.perf_counter()
            result["sqnr_vs_float_db"][label] = sqnr_db(reference, call().float())
            result.setdefault("first_call_s", {})[label] = time.perf_counter() - start
        result["call_peak_bytes"] = {label: call_peak(call, device) for label, call in calls.items()}
        result["latency"] = interleaved_latency(calls, rounds=args.rounds, warmup=1)
    baseline = {"eager": result["latency"]["float_eager"]["median_ms"]}
    if "float_compiled" in result["latency"]:
        baseline["compiled"] = result["latency"]["float_compiled"]["median_ms"]
    result["ratio_vs_float"] = {label: {mode: timing["median_ms"] / ms for mode, ms in baseline.items()}
                                for label, timing in result["latency"].items()}
    del models, calls
    gc.collect()
    return result


def bench_analysis(args, device, dtype) -> dict[str, Any]:
    """The global analysis (W8A8/W4A8 menu) on a pipeline around the SD-1.5-shaped UNet: calls/s, peak memory."""
    import torch
    from diffusers import AutoencoderKL

    from brevitas_ldm.analysis.block_sensitivity import BlockSensitivity
    from brevitas_ldm.denoiser.sampling import SamplingSpec
    from brevitas_ldm.recipe import get_recipe
    from brevitas_ldm.zoo.tiny import sd_pipeline_around

    config = unet_config("sd15", args.width, args.tiny)
    latent = args.latent or config["sample_size"]
    unet = build_unet(config, args.seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=8 * latent).eval()
    hidden = config["cross_attention_dim"]
    pipe = sd_pipeline_around(unet, vae, hidden_size=hidden, intermediate_size=2 * hidden,
                              heads=max(1, hidden // 64), max_positions=77).to(device=device, dtype=dtype)
    model_bytes = weight_bytes(pipe.unet)
    steps = 2 if args.tiny else 4
    analysis = BlockSensitivity(get_recipe("minmax-w8a8"), ["a photo", "a cat"], [1, 2],
                                SamplingSpec(steps, 2.0, 2), menu=["w8a8", "w4a8"], progressive=[],
                                progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    report = analysis.run(pipe)
    seconds = time.perf_counter() - start
    calls = int(report.denoiser_calls["total"])
    out = {"denoiser_calls": calls, "seconds": seconds, "calls_per_s": calls / seconds, "model_bytes": model_bytes,
           "steps": steps, "menu": ["w8a8", "w4a8"], "blocks": len(report.blocks)}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        out.update(peak_bytes=peak, peak_vs_model=peak / model_bytes)
    return out


def environment(device) -> dict[str, Any]:
    import torch

    from brevitas_ldm.export.cpu import cpu_info

    info = cpu_info()
    env = {"torch": torch.__version__, "python": platform.python_version(), "cpu": info.model,
           "isa_flags": list(info.isa_flags), "threads": torch.get_num_threads(),
           "cores": len(os.sched_getaffinity(0))}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   capability=".".join(map(str, torch.cuda.get_device_capability(device))))
    return env


def markdown(results: dict[str, Any]) -> str:
    header = ("| variant | median ms | vs float eager | vs float compiled | SQNR vs float (dB) | weights MiB | "
              "call peak MiB |")
    lines = []
    for name, model in results["models"].items():
        lines += [f"### {name} (latent {model['latent']}, batch {model['batch']})", "", header,
                  "|---|---|---|---|---|---|---|"]
        for label, timing in model["latency"].items():
            ratio = model["ratio_vs_float"][label]
            peak = model["call_peak_bytes"][label]
            weights = model["weights_bytes"][label.rsplit("_", 1)[0]]
            cells = [label, f"{timing['median_ms']:.1f}", f"{ratio['eager']:.2f}x",
                     f"{ratio['compiled']:.2f}x" if "compiled" in ratio else "-",
                     f"{model['sqnr_vs_float_db'][label]:.1f}", f"{weights / 2**20:.1f}",
                     "-" if peak is None else f"{peak / 2**20:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Kernels: {json.dumps(model['kernels'])}", ""]
    if "analysis" in results:
        a = results["analysis"]
        memory = ""
        if "peak_bytes" in a:
            memory = (f", peak {a['peak_bytes'] / 2**30:.2f} GiB = {a['peak_vs_model']:.2f}x the float UNet's "
                      f"{a['model_bytes'] / 2**30:.2f} GiB")
        lines += [(f"Global analysis ({a['blocks']} blocks, menu {', '.join(a['menu'])}, {a['steps']} steps): "
                   f"{a['denoiser_calls']} denoiser calls in {a['seconds']:.1f} s = {a['calls_per_s']:.2f} "
                   f"calls/s{memory}."), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this torch has no CUDA device; run with --device cpu (or --dry-run)")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    started = time.perf_counter()
    results: dict[str, Any] = {"command": "python benchmarks/gpu.py " + " ".join(argv if argv is not None else
                                                                                 sys.argv[1:]),
                               "device": str(device), "dtype": str(dtype).removeprefix("torch."),
                               "environment": environment(device), "models": {}}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in ("sd15", "sdxl"):
            raise SystemExit(f"--models {name}: choose sd15 and/or sdxl")
        results["models"][name] = bench_model(name, args, device, dtype)
    if args.analysis == "on":
        results["analysis"] = bench_analysis(args, device, dtype)
    results["wall_s"] = time.perf_counter() - started
    text = markdown(results)
    results["markdown"] = text
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(json.dumps(results, indent=2, default=str))
        os.replace(tmp, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
