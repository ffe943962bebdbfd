"""Measurement half of the scale benchmark (``benchmarks/scale.py``): memory/time recorder, the SD-1.5-shaped
UNet, and the timed phases (denoiser calls, calibration, global and local analysis). Writes nothing.
"""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
def build_pipeline(latent_size: int, seed: int, block_out_channels: tuple[int, ...] | None = None):
    """A StableDiffusionPipeline around a random SD-1.5-shaped UNet (SD-1.5's channel widths unless
    ``block_out_channels`` says otherwise); nothing is downloaded.

    The VAE is a tiny random AutoencoderKL with 4 levels (so ``vae_scale_factor`` is 8, as in SD-1.5, and the
    pipeline's default image size gives ``latent_size`` latents); it is never run because every sampling run here
    returns latents. The text encoder is a one-layer random CLIPTextModel with hidden size 768, so the UNet's
    cross-attention sees SD-1.5-shaped states (16 tokens, the project tokenizer's length, instead of 77).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from brevitas_ldm.errors import ModelError
    from brevitas_ldm.zoo.tiny import sd_pipeline_around
    from brevitas_ldm.zoo.tokenizer import MODEL_MAX_LENGTH

    if latent_size < 8 or latent_size % 8:
        raise ModelError(f"--latent-size {latent_size}: the SD-1.5 UNet downsamples 3 times, pass a multiple of 8")
    torch.manual_seed(seed)
    config = dict(SD15_UNET_CONFIG, **({"block_out_channels": block_out_channels} if block_out_channels else {}))
    unet = UNet2DConditionModel(sample_size=latent_size, **config).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                        layers_per_block=1, latent_channels=4, norm_num_groups=4,
                        sample_size=8 * latent_size).eval()
    return sd_pipeline_around(unet, vae, hidden_size=768, intermediate_size=1024, heads=12,
                              max_positions=MODEL_MAX_LENGTH)


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


# -- allocator settings --------------------------------------------------------------------------------------------
#: glibc serves every allocation above its mmap threshold (dynamic, at most 32 MiB on 64-bit) with a fresh mmap
#: whose pages fault in (zeroed) on first touch and are unmapped on free. SD-1.5's 1280-channel 3x3 convs have
#: 59 MB weights, so every weight-sized temporary of Brevitas' weight quantization pays that. Raising the
#: thresholds keeps freed memory in the heap for reuse.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(16 * 2**30), "MALLOC_TRIM_THRESHOLD_": str(16 * 2**30)}
