"""brevitas-ldm: SQNR-driven post-training quantization of latent diffusion models with Brevitas.

Public API (imported lazily, so ``brevitas-ldm recipes`` does not pay for torch/diffusers start-up)::

    recipe = brevitas_ldm.get_recipe("sqnr-hybrid-w8a8")
    result = brevitas_ldm.quantize_pipeline(pipe, recipe, progress=True)
    result.save("out/")                                 # checkpoint + plan + recipe
    pipe = brevitas_ldm.load_quantized(pipe, "out/")    # later, no analysis or calibration
"""

from __future__ import annotations

import importlib
import warnings

__version__ = "0.1.0"

# Brevitas warns at import time when an optional GPU kernel package is absent; it changes nothing on CPU.
warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")

_EXPORTS = {
    "Recipe": "brevitas_ldm.recipe",
    "get_recipe": "brevitas_ldm.recipe",
    "list_recipes": "brevitas_ldm.recipe",
    "register_recipe": "brevitas_ldm.recipe",
    "Precision": "brevitas_ldm.precision",
    "parse_precision": "brevitas_ldm.precision",
    "sqnr_db": "brevitas_ldm.sqnr",
    "SQNRMeter": "brevitas_ldm.sqnr",
    "get_blocks": "brevitas_ldm.denoiser.blocks",
    "quantize_denoiser": "brevitas_ldm.quant.quantize",
    "read_precisions": "brevitas_ldm.quant.quantize",
    "single_step_calibration": "brevitas_ldm.quant.calibration",
    "multi_step_calibration": "brevitas_ldm.quant.calibration",
    "load_pipeline": "brevitas_ldm.denoiser.loading",
    "BrevitasLDMError": "brevitas_ldm.errors",
    "BlockSensitivity": "brevitas_ldm.analysis.block_sensitivity",
    "BlockReport": "brevitas_ldm.analysis.block_sensitivity",
    "LayerSensitivity": "brevitas_ldm.analysis.layer_sensitivity",
    "LayerReport": "brevitas_ldm.analysis.layer_sensitivity",
    "SmoothQuantStep": "brevitas_ldm.quant.smoothquant",
    "Plan": "brevitas_ldm.planning.planners",
    "choose_plan": "brevitas_ldm.planning.planners",
    "quantize_pipeline": "brevitas_ldm.workflow",
    "QuantizationResult": "brevitas_ldm.workflow",
    "load_quantized": "brevitas_ldm.checkpoint",
    "export_denoiser": "brevitas_ldm.export",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'brevitas_ldm' has no attribute {name!r}")
