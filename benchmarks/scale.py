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
import copy
import dataclasses
import gc
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

#: Stable Diffusion 1.5's UNet (runwayml/stable-diffusion-v1-5 ``unet/config.json``); the remaining settings
#: (flip_sin_to_cos, freq_shift 0, norm_num_groups 32, norm_eps 1e-5, downsample_padding 1, silu) are diffusers'
#: defaults, which match SD-1.5. 859,520,964 parameters.
SD15_UNET_CONFIG: dict[str, Any] = {
    "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
}
FIGURE_NAME = "scale-blocks.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: cuda when torch.cuda.is_available(), else cpu")
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


# ---------------------------------------------------------------------------------------------------------------
# Memory and time
# ---------------------------------------------------------------------------------------------------------------
def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``) of this process; Linux >= 4.0 only."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``), so a phase's starting RSS is what is live."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _sys_seconds() -> float:
    """CPU time this process has spent in the kernel (page faults, mmap/munmap) so far."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def gib(kb: float | None) -> str:
    return "-" if kb is None else f"{kb / 2**20:.2f}"


@dataclass
class Phase:
    """Wall time and memory of one named phase. RSS figures in kB; CUDA figures in bytes."""

    name: str
    seconds: float = 0.0
    rss_before_kb: int | None = None
    rss_after_kb: int | None = None
    peak_rss_kb: int | None = None
    peak_is_reset: bool = False
    cuda_before: int | None = None
    cuda_peak: int | None = None
    calls: int | None = None
    sys_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def transient_kb(self) -> int | None:
        """How far the peak rose above what was resident when the phase started."""
        if self.peak_rss_kb is None or self.rss_before_kb is None or not self.peak_is_reset:
            return None
        return max(self.peak_rss_kb - self.rss_before_kb, 0)


class Recorder:
    """Times phases and records their peak memory: process ``VmHWM`` (reset per phase) and CUDA peak allocation."""

    def __init__(self, device: torch.device, release_memory: bool = True) -> None:
        self.device = device
        self.release_memory = release_memory
        self.phases: list[Phase] = []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str, calls: int | None = None) -> Iterator[Phase]:
        gc.collect()
        if self.release_memory:
            _release_freed_memory()
        record = Phase(name, calls=calls)
        record.rss_before_kb = _status_kb("VmRSS")
        record.peak_is_reset = _reset_peak_rss()
        if self.device.type == "cuda":
            self._sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            record.cuda_before = torch.cuda.memory_allocated(self.device)
        start, sys_start = time.perf_counter(), _sys_seconds()
        try:
            yield record
        finally:
            self._sync()
            record.seconds = time.perf_counter() - start
            record.sys_seconds = _sys_seconds() - sys_start
            record.peak_rss_kb = _status_kb("VmHWM")
            record.rss_after_kb = _status_kb("VmRSS")
            if self.device.type == "cuda":
                record.cuda_peak = torch.cuda.max_memory_allocated(self.device)
            self.phases.append(record)

    def get(self, name: str) -> Phase:
        matches = [p for p in self.phases if p.name == name]
        if not matches:
            raise KeyError(name)
        return matches[-1]

    def all(self, name: str) -> list[Phase]:
        return [p for p in self.phases if p.name == name]


# ---------------------------------------------------------------------------------------------------------------
# The SD-1.5-shaped model
# ---------------------------------------------------------------------------------------------------------------
def build_pipeline(latent_size: int, seed: int):
    """A StableDiffusionPipeline around a random SD-1.5-shaped UNet; nothing is downloaded.

    The VAE is a tiny random AutoencoderKL with 4 levels (so ``vae_scale_factor`` is 8, as in SD-1.5, and the
    pipeline's default image size gives ``latent_size`` latents); it is never run because every sampling run here
    returns latents. The text encoder is a one-layer random CLIPTextModel with hidden size 768, so the UNet's
    cross-attention sees SD-1.5-shaped states (16 tokens, the project tokenizer's length, instead of 77).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from brevitas_ldm.errors import ModelError
    from brevitas_ldm.zoo.tokenizer import MODEL_MAX_LENGTH, write_tokenizer_files

    if latent_size < 8 or latent_size % 8:
        raise ModelError(f"--latent-size {latent_size}: the SD-1.5 UNet downsamples 3 times, pass a multiple of 8")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=latent_size, **SD15_UNET_CONFIG).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                        layers_per_block=1, latent_channels=4, norm_num_groups=4,
                        sample_size=8 * latent_size).eval()
    with tempfile.TemporaryDirectory() as tmp:
        vocab_size = write_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    vocab = tokenizer.get_vocab()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=768, intermediate_size=1024, projection_dim=768, num_hidden_layers=1,
        num_attention_heads=12, max_position_embeddings=MODEL_MAX_LENGTH, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])).eval()
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def call_inputs(pipe, prompts: list[str], latent_size: int, steps: int, seed: int,
                device: torch.device) -> dict[str, torch.Tensor]:
    """The keyword inputs of the first denoiser call of a CFG sampling run: [uncond; cond] batch, t = max noise."""
    cond, uncond = pipe.encode_prompt(prompts, device, 1, True)
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(len(prompts), 4, latent_size, latent_size, generator=generator).to(device)
    pipe.scheduler.set_timesteps(steps)
    latents = latents * pipe.scheduler.init_noise_sigma
    return {"sample": torch.cat([latents, latents]), "timestep": pipe.scheduler.timesteps[0].to(device),
            "encoder_hidden_states": torch.cat([uncond, cond])}


@torch.no_grad()
def denoiser_call(denoiser: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return denoiser(**inputs).sample


# ---------------------------------------------------------------------------------------------------------------
# The measurements
# ---------------------------------------------------------------------------------------------------------------
def quantized_copy(pipe, recipe, rec: Recorder, label: str) -> torch.nn.Module:
    from brevitas_ldm.quant.quantize import quantize_denoiser

    with rec.phase(f"quantize ({label})"):
        model = quantize_denoiser(copy.deepcopy(pipe.unet), recipe).eval()
    return model


@contextmanager
def swapped_unet(pipe, unet: torch.nn.Module) -> Iterator[None]:
    original = pipe.unet
    pipe.unet = unet
    try:
        yield
    finally:
        pipe.unet = original


def calibrate(pipe, model, recipe, prompts, seeds, spec, rec: Recorder, label: str):
    from brevitas_ldm.quant.calibration import calibrate_pipeline

    with swapped_unet(pipe, model), rec.phase(f"calibration ({label})") as record:
        context = calibrate_pipeline(pipe, recipe, prompts, seeds, spec, progress=True)
        record.calls = context.calls
        record.extra = {"observed": context.observed_calls, "skipped": context.skipped_calls}
    return context


def bench_denoiser_call(pipe, qmodel, inputs, rounds: int, rec: Recorder) -> dict[str, Any]:
    """FP, fake-quant and fast_inference calls in alternating rounds (one warm-up call each first)."""
    from brevitas_ldm.quant.quantize import fast_inference
    from brevitas_ldm.sqnr import sqnr_db

    fp_out = denoiser_call(pipe.unet, inputs)  # warm-ups (not recorded)
    fq_out = denoiser_call(qmodel, inputs)
    for _ in tqdm(range(rounds), desc="denoiser call rounds (fp | fake-quant | fast_inference)"):
        with rec.phase("call fp"):
            fp_out = denoiser_call(pipe.unet, inputs)
        with rec.phase("call fake-quant"):
            fq_out = denoiser_call(qmodel, inputs)
        with fast_inference(qmodel):
            with rec.phase("call fast_inference (first: fills weight cache)"):
                denoiser_call(qmodel, inputs)
            with rec.phase("call fast_inference"):
                fast_out = denoiser_call(qmodel, inputs)
        gc.collect()
    return {"sqnr_db": sqnr_db(fp_out, fq_out), "fast_max_abs_diff": float((fast_out - fq_out).abs().max()),
            "fp_out_std": float(fp_out.float().std()), "fp_out_abs_mean": float(fp_out.float().abs().mean())}


@torch.no_grad()
def time_weight_quantization(qmodel: torch.nn.Module, rec: Recorder) -> None:
    """Quantize every layer's weight once (``quant_weight()``): what plain fake-quant repeats at every call."""
    from brevitas_ldm.quant.quantize import quant_layers

    with rec.phase("quantize all weights once (quant_weight)"):
        for layer in quant_layers(qmodel).values():
            layer.quant_weight()


@torch.no_grad()
def trajectory_stats(pipe, prompts, seeds, spec) -> list[dict[str, float]]:
    """Per sampling step of the FP pipeline: timestep, std and max |x| of the latents the denoiser receives."""
    from brevitas_ldm.denoiser.sampling import denoiser_step_hook, generate

    rows: list[dict[str, float]] = []

    def on_step(step, timestep, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        out = output[0] if isinstance(output, tuple) else output.sample
        rows.append({"step": step, "timestep": timestep, "std": float(sample.float().std()),
                     "absmax": float(sample.float().abs().max()), "out_std": float(out.float().std())})

    with denoiser_step_hook(pipe.unet, on_step):
        generate(pipe, prompts, seeds, spec)
    return rows


def run_global(pipe, recipe, prompts, seeds, spec, rec: Recorder):
    from brevitas_ldm.analysis.block_sensitivity import BlockSensitivity

    analysis = BlockSensitivity(recipe, prompts, seeds, spec, menu=[recipe.default_precision],
                                progressive=[recipe.default_precision], progress=True)
    with rec.phase("global analysis") as record:
        report = analysis.run(pipe)
        record.calls = report.denoiser_calls.get("total")
    del analysis  # drops the calibrated copy held by the PrecisionBank
    return report


class CallTimer:
    """Accumulated wall time of the FP denoiser's own forward calls (hooks included), e.g. the local analysis'
    FP pass with the twin hooks on; the twins' calibration runs on a hook-free copy and is not counted."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.module, self.device = module, device
        self.seconds, self.calls, self._start, self._handles = 0.0, 0, 0.0, []

    def __enter__(self) -> "CallTimer":
        def pre(*_):
            self._start = time.perf_counter()

        def post(*_):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds += time.perf_counter() - self._start
            self.calls += 1

        self._handles = [self.module.register_forward_pre_hook(pre), self.module.register_forward_hook(post)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()


def run_local(pipe, recipe, prompts, seeds, spec, rec: Recorder, device: torch.device):
    from brevitas_ldm.analysis.layer_sensitivity import LayerSensitivity

    with rec.phase("local analysis") as record, CallTimer(pipe.unet, device) as timer:
        report = LayerSensitivity(recipe, prompts, seeds, spec, progress=True).run(pipe)
        record.calls = sum(report.denoiser_calls.values())
        record.extra = {"fp_pass_s": timer.seconds, "fp_pass_calls": timer.calls}
    return report


# ---------------------------------------------------------------------------------------------------------------
# Write-up
# ---------------------------------------------------------------------------------------------------------------
def machine_lines(device: torch.device, threads: int, load_start: float) -> list[str]:
    import brevitas
    import diffusers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    mem_kb = None
    try:
        with open("/proc/meminfo") as handle:
            mem_kb = next(int(line.split()[1]) for line in handle if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        pass
    line = (f"Machine: {os.cpu_count()} CPU cores ({cpu}), {gib(mem_kb)} GiB RAM; torch {torch.__version__} with "
            f"{threads} thread(s), diffusers {diffusers.__version__}, brevitas {brevitas.__version__}; device "
            f"`{device}`")
    if device.type == "cuda":
        line += f" ({torch.cuda.get_device_name(device)})"
    line += (". Other jobs shared the machine: 1-minute load average "
             f"{load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end (timings are side by side in one "
             f"process, so ratios are more reliable than absolute seconds)")
    return [line + "."]


def _median(phases: list[Phase]) -> float:
    return statistics.median(p.seconds for p in phases)


def _max_kb(phases: list[Phase], attr: str) -> int | None:
    values = [getattr(p, attr) for p in phases if getattr(p, attr) is not None]
    return max(values) if values else None


def fmt_db(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.2f}"


def memory_table(rec: Recorder, cuda: bool) -> list[str]:
    header = ("| phase | runs | wall time (s, median) | kernel CPU time (s, median) | RSS before (GiB) "
              "| peak RSS (GiB) | peak above start (GiB) |")
    rule = "|---|---|---|---|---|---|---|"
    if cuda:
        header += " CUDA peak allocated (GiB) |"
        rule += "---|"
    lines = [header, rule]
    names: list[str] = []
    for p in rec.phases:
        if p.name not in names:
            names.append(p.name)
    for name in names:
        phases = rec.all(name)
        row = (f"| {name} | {len(phases)} | {_median(phases):.2f} | "
               f"{statistics.median(p.sys_seconds for p in phases):.2f} | {gib(_max_kb(phases, 'rss_before_kb'))} | "
               f"{gib(_max_kb(phases, 'peak_rss_kb'))} | {gib(_max_kb(phases, 'transient_kb'))} |")
        if cuda:
            peaks = [p.cuda_peak for p in phases if p.cuda_peak is not None]
            row += f" {max(peaks) / 2**30:.2f} |" if peaks else " - |"
        lines.append(row)
    return lines


def kind_summary(report) -> dict[str, dict[str, float]]:
    """Per block kind: block count, parameters, mean/min isolated SQNR and summed progressive share (dB)."""
    default = report.default_precision
    out: dict[str, dict[str, float]] = {}
    for entry in report.blocks:
        row = out.setdefault(entry.kind, {"blocks": 0, "params": 0, "isolated": [], "share": 0.0})
        row["blocks"] += 1
        row["params"] += entry.param_count
        value = entry.isolated_db.get(default, math.nan)
        if math.isfinite(value):
            row["isolated"].append(value)
        share = entry.share_db.get(default, 0.0)
        row["share"] += share if math.isfinite(share) else 0.0
    for row in out.values():
        values = row.pop("isolated")
        row["mean_isolated"] = statistics.fmean(values) if values else math.inf
        row["min_isolated"] = min(values) if values else math.inf
    return out


def save_blocks_figure(report, path: Path) -> None:
    """Isolated and progressive output SQNR per block (execution order), parameters as bars on a second axis."""
    from brevitas_ldm.analysis.figures import plt, save_figure

    default = report.default_precision
    names = report.block_names
    x = list(range(len(names)))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.65 * len(names)), 4.2))
    params = ax.twinx()
    params.bar(x, [report.block(n).param_count / 1e6 for n in names], color="0.85", width=0.6, zorder=0)
    params.set_ylabel("parameters (M)", color="0.45")
    ax.set_zorder(params.get_zorder() + 1)
    ax.patch.set_visible(False)

    def finite(values):
        return [v if math.isfinite(v) else math.nan for v in values]

    ax.plot(x, finite([report.block(n).isolated_db.get(default, math.nan) for n in names]), marker="o",
            label=f"isolated {default} (only this block quantized)")
    ax.plot(x, finite([report.block(n).progressive_db.get(default, math.nan) for n in names]), marker="s",
            label=f"progressive {default} (this block and all before it)")
    ax.set_xticks(x, names, rotation=50, ha="right")
    ax.set_ylabel("final-latent SQNR vs FP (dB)")
    ax.set_title(f"SD-1.5-shaped UNet (random weights): global analysis, {report.steps} steps, "
                 f"{report.num_prompts} prompt(s)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    save_figure(fig, path)


def cost_notes(fp_s: float, fq_s: float, fast_s: float, fill_s: float, block_report, layer_report,
               rec: Recorder) -> list[str]:
    """Where the time goes, derived from the measured phases (estimates are labelled as such)."""
    wq = rec.get("quantize all weights once (quant_weight)").seconds
    lines = ["## Where the time goes", "",
             f"* Plain fake-quant runs every layer through Brevitas' quant layers and re-quantizes all ~860M "
             f"weights at every call: {fq_s:.2f} s vs {fast_s:.2f} s with the weights cached ({fq_s / fp_s:.1f}x "
             f"vs {fast_s / fp_s:.2f}x the FP call). Quantizing every weight once (`quant_weight()` on each layer) "
             f"takes {wq:.1f} s by itself; filling the `fast_inference` cache (first call minus a cached call) "
             f"{max(fill_s - fast_s, 0.0):.1f} s.",
             ]
    if block_report is not None:
        calls, timing = block_report.denoiser_calls, block_report.timing_s
        sweep_calls = calls["isolated"] + calls["progressive"]
        sweep_s = timing["isolated"] + timing["progressive"]
        lines.append(
            f"* Global analysis: every configuration enters `quant_inference_mode` afresh, so its swapped layers' "
            f"weights are quantized and cached again per configuration; progressive prefixes cover most of the "
            f"model, hence {timing['progressive'] / max(calls['progressive'], 1):.2f} s per progressive call vs "
            f"{timing['isolated'] / max(calls['isolated'], 1):.2f} s per isolated call. Estimate: with the "
            f"PrecisionBank's quantized weights cached once for the whole sweep, the {sweep_calls} sweep calls "
            f"would cost about {sweep_calls} x {fast_s:.2f} s = {sweep_calls * fast_s:.0f} s instead of "
            f"{sweep_s:.0f} s; the gap grows with the number of configurations per sampling step (fewer steps, "
            f"a larger menu).")
    if layer_report is not None:
        loc = rec.get("local analysis")
        per = loc.extra["fp_pass_s"] / max(loc.extra["fp_pass_calls"], 1)
        lines.append(
            f"* Local analysis: the twins run in plain fake-quant mode, each layer's twin 3 times per call (W+A, "
            f"W-only, A-only; two of them quantize the weight): {per:.2f} s per call, {per / fq_s:.2f}x a plain "
            f"fake-quant call. Caching each twin's quantized weight for the pass (the weights do not change "
            f"during it) would remove up to 2 x {wq:.1f} s of weight quantization per call.")
    return lines + [""]


def trajectory_lines(rows: list[dict[str, float]]) -> list[str]:
    """The FP trajectory's latent statistics, and what their growth means for a range calibrated at t = T."""
    lines = ["FP sampling trajectory (what the denoiser receives at each step):", "",
             "| step | timestep | latent std | latent max abs | denoiser output std |", "|---|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['timestep']:.0f} | {r['std']:.2f} | {r['absmax']:.2f} | {r['out_std']:.3f} |"
              for r in rows]
    growth = max(r["absmax"] for r in rows) / max(rows[0]["absmax"], 1e-12)
    lines.append("")
    if growth > 1.5:
        lines += [
            f"A random network does not predict the noise (its output std is ~{rows[0]['out_std']:.2f}, not ~1, and "
            f"uncorrelated with the latents), so DDIM's x0 estimate divides the latents by sqrt(alpha_bar) and "
            f"the latents grow along the trajectory (max |x| x{growth:.1f}). A trained SD-1.5 keeps them near unit "
            f"scale. Single-step calibration sets every activation range at t = T, so layers whose input scales "
            f"with the latents (above all `conv_in`, whose input *is* the latents) clip at later steps: that is an "
            f"artefact of the random weights, visible below as `conv_in`'s low activation-only SQNR.", ""]
    return lines


def allocator_lines(probe: dict[str, float] | str, fp_s: float, fq_s: float, rec: Recorder,
                    have_local: bool) -> list[str]:
    """Default glibc malloc vs raised mmap/trim thresholds (measured in a child process)."""
    lines = ["## Allocator sensitivity (glibc malloc)", ""]
    if isinstance(probe, str):
        return lines + [f"Not measured: {probe}.", ""]
    env = ", ".join(f"`{k}={v}`" for k, v in ALLOCATOR_ENV.items())
    lines += [
        "Large temporaries (Brevitas' weight-quantization intermediates, weight-sized: SD-1.5's 1280-channel 3x3 "
        "convs hold 59 MB each; and the FP network's own large buffers) come from glibc malloc, which serves "
        "allocations above its mmap threshold (dynamic, at most 32 MiB on 64-bit) with fresh mappings whose pages "
        "fault in, zeroed, on first touch and are unmapped again on free. The "
        f"same measurements in a child process started with {env} (freed memory stays in the heap for reuse):",
        "",
        "| measurement | default glibc (this run) | raised thresholds (child) | speed-up |",
        "|---|---|---|---|",
        f"| FP denoiser call (s) | {fp_s:.2f} | {probe['fp_s']:.2f} | {fp_s / probe['fp_s']:.2f}x |",
        f"| fake-quant W8A8 call (s) | {fq_s:.2f} | {probe['fq_s']:.2f} | {fq_s / probe['fq_s']:.2f}x |",
        f"| of which kernel CPU time (s) | "
        f"{statistics.median(p.sys_seconds for p in rec.all('call fake-quant')):.2f} | {probe['fq_sys_s']:.2f} | - |",
    ]
    wq = rec.get("quantize all weights once (quant_weight)").seconds
    lines.append(f"| quantize all weights once (s) | {wq:.2f} | {probe['weight_quant_s']:.2f} | "
                 f"{wq / probe['weight_quant_s']:.2f}x |")
    if have_local:
        loc = rec.get("local analysis")
        per = loc.extra["fp_pass_s"] / max(loc.extra["fp_pass_calls"], 1)
        lines.append(f"| local analysis, s per denoiser call | {per:.2f} | {probe['local_per_call_s']:.2f} "
                     f"({int(probe['local_calls'])} calls) | {per / probe['local_per_call_s']:.2f}x |")
        lines.append(f"| local analysis peak RSS (GiB) | {gib(loc.peak_rss_kb)} | {gib(probe['local_peak_rss_kb'])} "
                     f"| - |")
    lines += ["", "The child runs after the main measurements, not interleaved with them; how much a page fault costs "
                  "depends on the machine (this one is a VM).", ""]
    return lines


def write_report(args, argv, device, rec: Recorder, info: dict[str, Any], block_report, layer_report,
                 local_error: str | None, global_error: str | None, figure: Path | None) -> str:
    fp, fq = rec.all("call fp"), rec.all("call fake-quant")
    fast, fill = rec.all("call fast_inference"), rec.all("call fast_inference (first: fills weight cache)")
    fp_s, fq_s, fast_s, fill_s = _median(fp), _median(fq), _median(fast), _median(fill)
    cuda = device.type == "cuda"
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/scale.py", *argv])
    single, multi = rec.get("calibration (single_step)"), rec.get("calibration (all_steps)")
    lines = [
        "# brevitas-ldm at Stable Diffusion 1.5 scale",
        "",
        f"Command: `{command}`",
        "",
        *machine_lines(device, args.threads, info['load_start']),
        "",
        f"Model: random-weight `UNet2DConditionModel` with SD-1.5's block structure and widths "
        f"(block_out_channels (320, 640, 1280, 1280), 2 layers per block, CrossAttnDownBlock2D x3 + DownBlock2D, "
        f"UpBlock2D + CrossAttnUpBlock2D x3, cross_attention_dim 768, attention_head_dim 8): "
        f"**{info['params']:,} parameters** in {info['layers']} quantizable Linear/Conv2d layers and "
        f"{info['blocks']} blocks, seeded (`--seed {args.seed}`), diffusers' default initialisation. It runs inside a "
        f"real `StableDiffusionPipeline` built in memory (nothing downloaded): a tiny random AutoencoderKL "
        f"(vae_scale_factor 8, never run: every run here returns latents), a one-layer random CLIPTextModel "
        f"with hidden size 768 (16-token prompts from the project's tokenizer instead of SD's 77) and DDIM. "
        f"Latents {args.latent_size}x{args.latent_size} (images would be {8 * args.latent_size}px), "
        f"{args.prompts} prompt(s) with classifier-free guidance {args.guidance_scale:g} (denoiser batch "
        f"{2 * args.prompts}), {args.steps} DDIM steps, recipe `{args.recipe}` (base precision "
        f"{info['precision']}, calibration `{info['calibration']}`).",
        "",
        f"Random weights give non-degenerate outputs: the FP denoiser output has std {info['fp_out_std']:.3f} "
        f"(mean |x| {info['fp_out_abs_mean']:.3f}) for unit-variance latents, so no rescaling was applied. "
        f"SQNR figures below are those of *this random network*; they show where the tooling's costs and the "
        f"analysis' mechanics land at scale, not how a trained SD-1.5 behaves.",
        "",
        *trajectory_lines(info["trajectory"]),
        f"Setup: building the model took {rec.get('build model').seconds:.1f} s; one W8A8 quantized copy "
        f"(deepcopy + Brevitas `layerwise_quantize`) {rec.get('quantize (single_step)').seconds:.1f} s.",
        "",
        "## 1. One denoiser call: FP vs fake-quantized W8A8",
        "",
        f"Batch {2 * args.prompts} (CFG), the first sampling step's inputs (t = {info['call_timestep']:.0f}), "
        f"{args.rounds} alternating rounds after one warm-up "
        f"call each; median wall time. Peak memory is the process' peak RSS during the call (VmHWM reset right "
        f"before it) minus the RSS when the call started, i.e. what the call itself adds on top of the resident "
        f"models (here: the FP UNet and one quantized copy are resident).",
        "",
        "| call | time (s) | vs FP | peak above start (GiB) |" + (" CUDA peak (GiB) |" if cuda else ""),
        "|---|---|---|---|" + ("---|" if cuda else ""),
    ]

    def row(label, phases, seconds):
        cells = (f"| {label} | {seconds:.2f} | {seconds / fp_s:.2f}x | "
                 f"{gib(_max_kb(phases, 'transient_kb'))} |")
        if cuda:
            cells += f" {max(p.cuda_peak for p in phases) / 2**30:.2f} |"
        lines.append(cells)

    row("FP", fp, fp_s)
    row("fake-quant W8A8 (Brevitas quant layers)", fq, fq_s)
    row("fake-quant W8A8 in `fast_inference`, first call (quantizes + caches weights)", fill, fill_s)
    row("fake-quant W8A8 in `fast_inference`, cached", fast, fast_s)
    lines += [
        "",
        f"`fast_inference` vs plain fake-quant: {fq_s / fast_s:.2f}x faster per cached call; the cache it holds "
        f"while active is one dequantized copy of the weights (the first call's extra memory above). "
        f"Max |fast_inference - fake-quant| = {info['fast_max_abs_diff']:.3g}; fake-quant W8A8 (single-step "
        f"calibration) vs FP on this call: {fmt_db(info['call_sqnr_db'])} dB SQNR.",
        "",
    ]

    # -- global ---------------------------------------------------------------------------------------------------
    lines += ["## 2. Global analysis (block-level, progressive + isolated)", ""]
    if block_report is None:
        lines += [f"Not run: {global_error}", ""]
    else:
        calls, timing = block_report.denoiser_calls, block_report.timing_s
        g = rec.get("global analysis")
        total_calls = calls["total"]
        default = block_report.default_precision
        lines += [
            f"Menu restricted to the base precision ({default}): {len(block_report.blocks)} isolated + "
            f"{len(block_report.blocks) - 1} progressive configurations, each a full {args.steps}-step sampling "
            f"run; quantized configurations run in Brevitas' `quant_inference_mode` (cached weights).",
            "",
            "| phase | wall time (s) | denoiser calls | s per call | vs FP call |",
            "|---|---|---|---|---|",
        ]
        for key, call_key, label in (("fp_reference", "fp_reference", "FP reference"),
                                     ("quantize_calibrate", "calibration", "quantize + calibrate the bank's copy"),
                                     ("isolated", "isolated", "isolated sweep"),
                                     ("progressive", "progressive", "progressive sweep")):
            n = calls.get(call_key, 0)
            if key == "quantize_calibrate" or not n:
                lines.append(f"| {label} | {timing[key]:.1f} | {n} | - | - |")
            else:
                per = timing[key] / n
                lines.append(f"| {label} | {timing[key]:.1f} | {n} | {per:.2f} | {per / fp_s:.2f}x |")
        lines += [
            f"| **total** | **{g.seconds:.1f}** | **{total_calls}** | **{g.seconds / total_calls:.2f}** | "
            f"**{g.seconds / total_calls / fp_s:.2f}x** |",
            "",
            f"Peak RSS during the analysis: {gib(g.peak_rss_kb)} GiB ({gib(g.transient_kb)} GiB above the "
            f"{gib(g.rss_before_kb)} GiB resident at its start: one quantized copy in the PrecisionBank plus the "
            f"weight cache of the configuration being measured).",
            "",
            block_report.to_markdown(),
            "",
            "Ranking, most sensitive first (isolated output SQNR at the base precision): "
            + ", ".join(f"{n} ({fmt_db(block_report.block(n).isolated_db[default])} dB)"
                        for n in block_report.ranking()),
            "",
            "| kind | blocks | params (M) | mean isolated (dB) | min isolated (dB) | summed progressive share (dB) |",
            "|---|---|---|---|---|---|",
        ]
        for kind, s in kind_summary(block_report).items():
            lines.append(f"| {kind} | {s['blocks']} | {s['params'] / 1e6:.1f} | {fmt_db(s['mean_isolated'])} | "
                         f"{fmt_db(s['min_isolated'])} | {fmt_db(s['share'])} |")
        lines += [""]
        if figure is not None:
            rel = os.path.relpath(figure, args.out.parent)
            lines += [f"![isolated and progressive SQNR per block]({rel})", ""]

    # -- local ----------------------------------------------------------------------------------------------------
    lines += ["## 3. Local analysis (module-level, one FP pass with quantized twins)", ""]
    if layer_report is None:
        lines += [f"Not run / failed: {local_error}", ""]
    else:
        loc = rec.get("local analysis")
        fp_pass_s, fp_pass_calls = loc.extra["fp_pass_s"], loc.extra["fp_pass_calls"]
        per = fp_pass_s / max(fp_pass_calls, 1)
        calls = layer_report.denoiser_calls
        lines += [
            f"{len(layer_report.modules)} layers measured; each layer's twin runs 3 times per call (W+A, W only, "
            f"A only) on the FP input the layer just received.",
            "",
            "| phase | wall time (s) | denoiser calls | s per call | vs FP call |",
            "|---|---|---|---|---|",
            f"| quantize twins + calibrate (`{layer_report.calibration_mode}`) + report | "
            f"{loc.seconds - fp_pass_s:.1f} | {calls.get('calibration', 0)} | - | - |",
            f"| FP pass with twins | {fp_pass_s:.1f} | {fp_pass_calls} | {per:.2f} | {per / fp_s:.2f}x |",
            f"| **total** | **{loc.seconds:.1f}** | **{sum(calls.values())}** | - | - |",
            "",
            f"Peak RSS: {gib(loc.peak_rss_kb)} GiB ({gib(loc.transient_kb)} GiB above the start: the twin copy "
            f"plus per-call temporaries).",
            "",
            "Worst 10 layers (lowest relative SQNR):",
            "",
            "| layer | block | category | SQNR (dB) | W-only (dB) | A-only (dB) | act share |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in layer_report.ranked()[:10]:
            lines.append(f"| `{e.name}` | {e.block} | {e.category} | {fmt_db(e.sqnr_db)} | "
                         f"{fmt_db(e.weight_sqnr_db)} | {fmt_db(e.act_sqnr_db)} | {e.activation_share:.2f} |")
        lines += ["", "| category | layers | mean SQNR (dB) | min SQNR (dB) | mean act share |",
                  "|---|---|---|---|---|"]
        from brevitas_ldm.analysis.layer_report import CATEGORY_LABELS

        for category, s in layer_report.category_summary().items():
            lines.append(f"| {CATEGORY_LABELS[category]} | {s['count']} | {fmt_db(s['mean_sqnr_db'])} | "
                         f"{fmt_db(s['min_sqnr_db'])} | {s['mean_activation_share']:.2f} |")
        lines += [""]

    # -- calibration ----------------------------------------------------------------------------------------------
    lines += [
        "## 4. Single-step vs all-steps calibration",
        "",
        f"Same quantized model (fresh copy each), same {args.prompts} prompt(s), {args.steps} DDIM steps. Single-step "
        f"runs the denoiser once per batch at t = T and short-circuits the remaining steps.",
        "",
        "| calibration | denoiser calls executed | calls observed | wall time (s) | "
        "SQNR vs FP of the W8A8 call of section 1 (dB) |",
        "|---|---|---|---|---|",
        f"| single_step | {single.calls} | {single.extra['observed']} | {single.seconds:.2f} | "
        f"{fmt_db(info['call_sqnr_db'])} |",
        f"| all_steps | {multi.calls} | {multi.extra['observed']} | {multi.seconds:.2f} | "
        f"{fmt_db(info['multi_call_sqnr_db'])} |",
        "",
        f"Single-step / all-steps: {single.calls / multi.calls:.2f}x the denoiser calls, "
        f"{single.seconds / multi.seconds:.2f}x the wall time (the rest is text encoding and pipeline overhead). "
        f"At 50 steps the call ratio would be 1/50.",
        "",
        *cost_notes(fp_s, fq_s, fast_s, fill_s, block_report, layer_report, rec),
        *allocator_lines(info["allocator_probe"], fp_s, fq_s, rec, layer_report is not None),
        "## Memory and time of every phase",
        "",
        "Peak RSS is the kernel's high-water mark (`VmHWM`), reset through `/proc/self/clear_refs` at the start "
        "of each phase, so each row is that phase's own peak. Resident: the FP pipeline (~"
        f"{gib(rec.get('build model').rss_after_kb)} GiB after building), plus a quantized copy where one is alive.",
        "",
        *memory_table(rec, cuda),
        "",
        f"Highest peak of the run: {gib(max(p.peak_rss_kb or 0 for p in rec.phases))} GiB RSS. Total wall time "
        f"{info['total_s'] / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
@dataclass
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


# -- allocator probe --------------------------------------------------------------------------------------------
#: glibc serves every allocation above its mmap threshold (dynamic, at most 32 MiB on 64-bit) with a fresh mmap
#: whose pages fault in (zeroed) on first touch and are unmapped on free. SD-1.5's 1280-channel 3x3 convs have
#: 59 MB weights, so every weight-sized temporary of Brevitas' weight quantization pays that. Raising the
#: thresholds keeps freed memory in the heap for reuse.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(16 * 2**30), "MALLOC_TRIM_THRESHOLD_": str(16 * 2**30)}
PROBE_MARKER = "ALLOCATOR_PROBE_RESULT "


def allocator_probe(args: argparse.Namespace) -> dict[str, float]:
    """(Child process.) FP and fake-quant call times and the local analysis' cost per call, nothing else."""
    setup = make_setup(args)
    rec = Recorder(setup.device, release_memory=False)  # trimming the heap would undo the allocator settings
    pipe = build_pipeline(args.latent_size, args.seed).to(setup.device)
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
                            "calibration": single_recipe.calibration.mode}

    with rec.phase("build model"):
        pipe = build_pipeline(args.latent_size, args.seed).to(device)
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
