"""brevitas-ldm: SQNR-driven post-training quantization of latent diffusion models with Brevitas.

Public API (imported lazily, so ``brevitas-ldm recipes`` does not pay for torch/diffusers start-up)::

    recipe = brevitas_ldm.get_recipe("sqnr-hybrid-w8a8")
    result = brevitas_ldm.quantize_pipeline(pipe, recipe, progress=True)
    result.save("out/")                                 # a diffusers pipeline folder, denoiser as integer codes
    pipe = DiffusionPipeline.from_pretrained("out/")    # later, plain diffusers (import brevitas_ldm registers
                                                        # its "brevitas" quantization backend with diffusers)

Names are defined in the package's layers (``denoiser/``, ``quant/``, ``analysis/``, ``planning/``, the
workflow, ``export/``, ``runtimes/``; see ``docs/design.md``) and re-exported here.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING

from brevitas_ldm.checkpoint import diffusers_registration as _diffusers_registration

__version__ = "0.7.0"

# diffusers finds the "brevitas" quantization_config backend once its quantizers load (torch is not imported here).
_diffusers_registration.install()

# Brevitas warns at import time when an optional GPU kernel package is absent; it changes nothing on CPU.
warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")

#: The public API: name -> the module that defines it. The one list: ``__all__``, the lazy loader below, the
#: ``TYPE_CHECKING`` imports (kept equal by a test) and ``docs/gen_api.py`` all read it.
_EXPORTS = {
    "BrevitasLDMError": "brevitas_ldm.errors",
    "Recipe": "brevitas_ldm.recipe",
    "get_recipe": "brevitas_ldm.recipe",
    "list_recipes": "brevitas_ldm.recipe",
    "register_recipe": "brevitas_ldm.recipe",
    "Precision": "brevitas_ldm.precision",
    "parse_precision": "brevitas_ldm.precision",
    "CALIBRATION_MODES": "brevitas_ldm.registry",
    "PLAN_METHODS": "brevitas_ldm.registry",
    "EXPORT_FORMATS": "brevitas_ldm.registry",
    "SQNRMeter": "brevitas_ldm.sqnr",
    "sqnr_db": "brevitas_ldm.sqnr",
    "Ranks": "brevitas_ldm.process.ranks",
    "current_ranks": "brevitas_ldm.process.ranks",
    "load_pipeline": "brevitas_ldm.denoiser.loading",
    "get_blocks": "brevitas_ldm.denoiser.blocks",
    "SamplingSpec": "brevitas_ldm.denoiser.sampling",
    "generate": "brevitas_ldm.denoiser.sampling",
    "quantize_denoiser": "brevitas_ldm.quant.quantize",
    "read_precisions": "brevitas_ldm.quant.quantize",
    "multi_step_calibration": "brevitas_ldm.quant.calibration",
    "single_step_calibration": "brevitas_ldm.quant.calibration",
    "SmoothQuantStep": "brevitas_ldm.quant.smoothquant",
    "SmoothingResult": "brevitas_ldm.quant.smoothquant",
    "BlockReport": "brevitas_ldm.analysis.block_report",
    "BlockSensitivity": "brevitas_ldm.analysis.block_sensitivity",
    "LayerReport": "brevitas_ldm.analysis.layer_report",
    "LayerSensitivity": "brevitas_ldm.analysis.layer_sensitivity",
    "Plan": "brevitas_ldm.planning.plan",
    "read_plan": "brevitas_ldm.planning.plan",
    "choose_plan": "brevitas_ldm.planning.planners",
    "measure_plan": "brevitas_ldm.planning.validation",
    "validate_plan": "brevitas_ldm.planning.validation",
    "QuantizationResult": "brevitas_ldm.job.result",
    "quantize_pipeline": "brevitas_ldm.workflow",
    "load_quantized": "brevitas_ldm.checkpoint.folder",
    "from_pretrained": "brevitas_ldm.checkpoint.pretrained",
    "BrevitasConfig": "brevitas_ldm.checkpoint.diffusers_quantizer",
    "BrevitasQuantizer": "brevitas_ldm.checkpoint.diffusers_quantizer",
    "qat": "brevitas_ldm.training.qat",
    "QATResult": "brevitas_ldm.training.qat",
    "export_denoiser": "brevitas_ldm.export",
    "verify_onnx": "brevitas_ldm.export",
    "deploy": "brevitas_ldm.runtimes",
    "Deployment": "brevitas_ldm.runtimes.torch_runtime",
}

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time names load on first use (__getattr__)
    from brevitas_ldm.analysis.block_report import BlockReport  # noqa: F401
    from brevitas_ldm.analysis.block_sensitivity import BlockSensitivity  # noqa: F401
    from brevitas_ldm.analysis.layer_report import LayerReport  # noqa: F401
    from brevitas_ldm.analysis.layer_sensitivity import LayerSensitivity  # noqa: F401
    from brevitas_ldm.checkpoint.diffusers_quantizer import (  # noqa: F401
        BrevitasConfig,
        BrevitasQuantizer,
    )
    from brevitas_ldm.checkpoint.folder import load_quantized  # noqa: F401
    from brevitas_ldm.checkpoint.pretrained import from_pretrained  # noqa: F401
    from brevitas_ldm.denoiser.blocks import get_blocks  # noqa: F401
    from brevitas_ldm.denoiser.loading import load_pipeline  # noqa: F401
    from brevitas_ldm.denoiser.sampling import SamplingSpec, generate  # noqa: F401
    from brevitas_ldm.errors import BrevitasLDMError  # noqa: F401
    from brevitas_ldm.export import export_denoiser, verify_onnx  # noqa: F401
    from brevitas_ldm.job.result import QuantizationResult  # noqa: F401
    from brevitas_ldm.planning.plan import Plan, read_plan  # noqa: F401
    from brevitas_ldm.planning.planners import choose_plan  # noqa: F401
    from brevitas_ldm.planning.validation import measure_plan, validate_plan  # noqa: F401
    from brevitas_ldm.precision import Precision, parse_precision  # noqa: F401
    from brevitas_ldm.process.ranks import Ranks, current_ranks  # noqa: F401
    from brevitas_ldm.quant.calibration import (  # noqa: F401
        multi_step_calibration,
        single_step_calibration,
    )
    from brevitas_ldm.quant.quantize import quantize_denoiser, read_precisions  # noqa: F401
    from brevitas_ldm.quant.smoothquant import SmoothingResult, SmoothQuantStep  # noqa: F401
    from brevitas_ldm.recipe import Recipe, get_recipe, list_recipes, register_recipe  # noqa: F401
    from brevitas_ldm.registry import CALIBRATION_MODES, EXPORT_FORMATS, PLAN_METHODS  # noqa: F401
    from brevitas_ldm.runtimes import deploy  # noqa: F401
    from brevitas_ldm.runtimes.torch_runtime import Deployment  # noqa: F401
    from brevitas_ldm.sqnr import SQNRMeter, sqnr_db  # noqa: F401
    from brevitas_ldm.training.qat import QATResult, qat  # noqa: F401
    from brevitas_ldm.workflow import quantize_pipeline  # noqa: F401

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'brevitas_ldm' has no attribute {name!r}")
