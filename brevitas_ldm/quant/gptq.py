"""GPTQ weight rounding (``[weights] rounding = "gptq"``): Brevitas' GPTQ, fed by one float pass.

Rounding each weight to its nearest grid point ignores that the errors of one output channel's weights add up
through the same input. GPTQ (Frantar et al., 2022) rounds a layer's input columns one at a time and moves the
rounding error of each onto the columns not yet rounded, weighted by the inverse Hessian ``H = X Xᵀ`` of the
layer's inputs, so the layer's *output* error is what gets minimised. At 4-bit weights that is worth more than
any range setting (docs/ablation.md).

The algorithm is Brevitas' :class:`~brevitas.graph.gptq.GPTQ`. What this module adds is how it is driven on a
denoiser:

* **One float pass for every layer's Hessian.** Brevitas' ``gptq_mode`` optimises one layer per forward pass and
  stops the forward there, which means one pass per layer and a model whose forward returns nothing. A sampling
  run needs the denoiser's outputs to go on, so here every layer's Hessian is accumulated by a forward pre-hook
  during one ordinary float sampling run (the calibration prompts over every step of the trajectory), with all
  quantization off: each layer sees the float input it will see at inference, before any other layer is rounded.
  The Hessians are then independent of the plan and of the other layers' rounding.
* **Scales fixed before rounding.** GPTQ rounds against a fixed grid, and Brevitas quantizes one column at a time
  while it runs. A min-max scale recomputed from that one column (runtime statistics, the default) would put every
  weight on its own grid point and leave the weights unrounded, and a scale recomputed after the update would
  move the grid GPTQ rounded to. So a ``gptq`` recipe's weight quantizers keep their scale in a parameter
  initialised from the float weights' statistics (Brevitas' ``parameter_from_stats`` scaling,
  :func:`~brevitas_ldm.quant.quantizers.weight_quantizer`): before GPTQ it is exactly the min-max scale.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from brevitas.core.scaling.standalone import ParameterFromStatsFromParameterScaling
from brevitas.graph.calibrate import quantization_status_manager
from brevitas.graph.gptq import GPTQ
from brevitas.graph.gpxq import LayerHandler

from brevitas_ldm.denoiser.sampling import CallCounter
from brevitas_ldm.errors import RecipeError
from brevitas_ldm.quant.quantize import initialise_weight_scales, quant_layers

#: Brevitas' default damping: 1% of the Hessian's mean diagonal keeps its inverse well conditioned.
DAMPING = 0.01


class _InPlaceGPTQ(GPTQ):
    """Brevitas' GPTQ without its pinned staging buffer: that buffer speeds up copying a GPU-computed Hessian block
    to CPU memory, and on a CPU run it only doubles the memory every layer's Hessian takes."""

    @property
    def use_intermediate_buffer(self) -> bool:
        return False


@dataclass
class GptqResult:
    """What :meth:`GptqRounding.apply` did: the layers rounded, those Brevitas could not invert, and the cost."""

    layers: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)   # never run, or Hessian not invertible: left at nearest
    denoiser_calls: int = 0
    wall_time_s: float = 0.0
    rounding_time_s: float = 0.0   # of which the column-by-column rounding, after the calls


def gptq_layers(denoiser: nn.Module) -> dict[str, nn.Module]:
    """The quant layers GPTQ rounds: those whose weights are quantized (a layer planned weight-float has nothing to
    round; a ``gptq`` recipe's weights are integers, :class:`~brevitas_ldm.recipe.TensorQuant`, and layers a plan puts
    in fp8 keep nearest rounding)."""
    return {name: layer for name, layer in quant_layers(denoiser).items() if layer.weight_quant.is_quant_enabled
            and not hasattr(layer.weight_quant, "exponent_bit_width")}     # fp8 layers (plan "e4m3"): no int grid


@dataclass
class GptqRounding:
    """Round the weights of a quantized denoiser by GPTQ. ``apply(denoiser, run_calibration_data)``:
    ``run_calibration_data(denoiser)`` runs the data whose float inputs define each layer's Hessian.

    ``damping``: fraction of the Hessian's mean diagonal added to it before inversion. ``act_order``: round the
    columns with the largest input energy first (GPTQ's "act order").
    """

    damping: float = DAMPING
    act_order: bool = True

    @torch.no_grad()
    def apply(self, denoiser: nn.Module, run_calibration_data: Callable[[nn.Module], None]) -> GptqResult:
        start = time.perf_counter()
        layers = gptq_layers(denoiser)
        result = GptqResult()
        if not layers:
            return result
        for name, layer in layers.items():
            if not isinstance(layer.weight_quant.tensor_quant.scaling_impl, ParameterFromStatsFromParameterScaling):
                raise RecipeError(f"GPTQ on layer {name!r} needs weight scales fixed before rounding: quantize with "
                                  f"a recipe whose weights.rounding = \"gptq\"")
        handler = LayerHandler()
        rounders = {name: _InPlaceGPTQ(layer, name, act_order=self.act_order, len_parallel_layers=1,
                                       create_weight_orig=False, num_blocks=100)
                    for name, layer in layers.items()}
        hooks = [layer.register_forward_pre_hook(_hessian_hook(rounders[name], handler))
                 for name, layer in layers.items()]
        try:
            with quantization_status_manager(denoiser, disable_act_quant=True, disable_weight_quant=True,
                                             disable_bias_quant=True), CallCounter(denoiser) as calls:
                run_calibration_data(denoiser)
        finally:
            for hook in hooks:
                hook.remove()
        result.denoiser_calls = calls.count
        initialise_weight_scales(denoiser)   # each scale from the float weights, fixed before any rounding
        rounding_start = time.perf_counter()
        for name, rounder in rounders.items():
            layer = layers[name]
            if rounder.nsamples == 0:
                result.failed.append(name)
                continue
            before = layer.weight.detach().clone()
            rounder.single_layer_update(percdamp=self.damping)
            # Brevitas warns and returns without rounding when the damped Hessian still is not invertible.
            (result.layers if not torch.equal(before, layer.weight) else result.failed).append(name)
        result.rounding_time_s = time.perf_counter() - rounding_start
        result.wall_time_s = time.perf_counter() - start
        return result


def _hessian_hook(rounder: GPTQ, handler: LayerHandler):
    def hook(module: nn.Module, args: tuple) -> None:
        rounder.compute_iterative_covariance(module, args, handler)
    return hook
