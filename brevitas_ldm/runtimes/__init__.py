"""Deployment runtimes: the quantized denoiser computed with real integer/fp8 kernels instead of fake quantization.

``deploy(pipe, runtime="torch")`` replaces, in place, every calibrated Brevitas layer of the pipeline's denoiser
(or of a denoiser passed directly) by a module holding the layer's integer or fp8 codes and scales and computing
with fused kernels (``torch._int_mm`` for integer W8A8/W4A8, ``torch._scaled_mm`` for fp8 e4m3, weight-only
kernels for W8A16/W4A16), and returns a :class:`Deployment` saying which kernel each layer got. Its outputs are the
fake-quantized model's within float accumulation order, so every SQNR the analysis and evaluation measured is the
deployed model's. Runtimes are a registry: one module per runtime, registered by name in :data:`RUNTIMES`
(:data:`brevitas_ldm.registry.RUNTIMES`; a new runtime is a module here that calls ``RUNTIMES.register``).

One concept per module: :mod:`.codes` (Brevitas layer -> codes, scales, zero points, through Brevitas'
accessors), :mod:`.kernels` (the kernel modules), :mod:`.torch_runtime` (the transform).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from brevitas_ldm.denoiser.sampling import get_denoiser
from brevitas_ldm.registry import RUNTIMES
from brevitas_ldm.runtimes.torch_runtime import Deployment, TorchRuntime


def deploy(pipe_or_denoiser: Any, runtime: str = "torch", **options: Any) -> Deployment:
    """Swap the Brevitas fake-quant layers of ``pipe_or_denoiser`` (a diffusers pipeline or its denoiser) for
    ``runtime``'s kernels, in place; the pipeline then samples with them. Deploy after the model is on its final
    device and dtype (the kernels keep their codes and float32 scales under later ``.to(dtype)`` calls)."""
    runtime_class = RUNTIMES.get(runtime)
    denoiser = pipe_or_denoiser if isinstance(pipe_or_denoiser, nn.Module) else get_denoiser(pipe_or_denoiser)
    layers = runtime_class(**options).apply(denoiser)
    deployment = Deployment(pipe_or_denoiser, denoiser, runtime, layers)
    if "fp8-dequant" in deployment.kernels:
        deployment.notes.append("fp8 layers run their e4m3/e5m2 codes as a float product: torch._scaled_mm is not "
                                "available on this device for them (CUDA needs compute capability 8.9+)")
    return deployment


__all__ = ["RUNTIMES", "Deployment", "TorchRuntime", "deploy"]
