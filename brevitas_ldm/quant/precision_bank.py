"""Per-precision calibrated copies of a denoiser's layers, swapped into the FP denoiser on demand.

Re-quantizing and re-calibrating per analysed configuration would dominate the global analysis, so
:class:`PrecisionBank` quantizes and calibrates one copy of the denoiser per precision of the recipe's menu,
*once*, and a configuration is applied by swapping the Brevitas quant layers of those copies into the FP denoiser
(restored afterwards). Because Brevitas' calibration runs with quantization disabled, each copy's activation
ranges are those of the float network, so a swapped-in configuration is exactly the model
``quantize_denoiser(..., precisions=config)`` + calibration would build. Runs use Brevitas'
``quant_inference_mode`` (cached quantized weights, through :func:`fast_inference`), which gives identical outputs
at a fraction of the cost.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch.nn as nn

from brevitas_ldm.denoiser.blocks import Block, expand_to_layers, quantizable_layers
from brevitas_ldm.denoiser.sampling import (
    Condition,
    SamplingSpec,
    generate,
    get_denoiser,
    max_noise_timestep,
)
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.precision import Precision, parse_precision
from brevitas_ldm.quant.calibration import recipe_calibration
from brevitas_ldm.quant.quantize import (
    fast_inference,
    quantize_denoiser,
    resolve_precisions,
)
from brevitas_ldm.recipe import Recipe

LayerPrecisions = Mapping[str, Precision]


class PrecisionBank:
    """The FP denoiser of ``pipe`` plus one quantized, calibrated copy of its layers per precision.

    ``configured(layer_precisions)`` swaps the matching Brevitas layers into the FP denoiser for the duration of a
    ``with`` block, so any per-block or per-layer mix of the bank's precisions runs without re-quantizing. Layers
    the recipe's ``skip_layers`` keep in float are never swapped. Copies are built lazily by :meth:`ensure`.

    The copies share their weight tensors with the FP denoiser: changing its weights in place (SmoothQuant) after
    building a bank changes the bank's layers too, so build a new bank after smoothing.
    """

    def __init__(self, pipe: Any, recipe: Recipe, calibration_prompts: Sequence[Condition],
                 calibration_seeds: Sequence[int], spec: SamplingSpec, progress: bool = False) -> None:
        self.pipe = pipe
        self.recipe = recipe
        self.denoiser = get_denoiser(pipe)
        self.calibration_prompts = list(calibration_prompts)
        self.calibration_seeds = list(calibration_seeds)
        self.calibration_spec = dataclasses.replace(spec, batch_size=recipe.calibration.batch_size)
        self.progress = progress
        self.fp_layers: dict[str, nn.Module] = dict(quantizable_layers(self.denoiser))
        base = resolve_precisions(self.denoiser, recipe)
        self.skipped: frozenset[str] = frozenset(n for n, p in base.items() if p.is_float)
        self.layers: dict[Precision, dict[str, nn.Module]] = {}
        self.calibration_calls = 0
        self.calibration_s = 0.0
        self._active = False

    @property
    def precisions(self) -> list[Precision]:
        return list(self.layers)

    def ensure(self, precisions: Sequence[Precision | str]) -> "PrecisionBank":
        """Quantize and calibrate a copy for every precision not in the bank yet (float needs none)."""
        for precision in precisions:
            precision = parse_precision(precision)
            if not precision.is_float and precision not in self.layers:
                self._build(precision)
        return self

    def _build(self, precision: Precision) -> None:
        if self._active:
            raise BrevitasLDMError("cannot add a precision to the bank while a configuration is applied")
        start = time.perf_counter()
        # The copy shares every tensor with the FP denoiser (the memo maps each to itself) and Brevitas' quant
        # layers keep the weight storage they replace, so a precision costs its quantizers, not a weight copy: the
        # bank holds one set of weights whatever the menu size.
        shared = {id(t): t for t in (*self.denoiser.parameters(), *self.denoiser.buffers())}
        clone = copy.deepcopy(self.denoiser, shared)
        targets = [name for name in self.fp_layers if name not in self.skipped]
        quantize_denoiser(clone, self.recipe, {name: precision for name in targets})
        layers = {name: clone.get_submodule(name) for name in targets}
        self.layers[precision] = layers
        if any(getattr(layer, "input_quant", None) is not None and layer.input_quant.is_quant_enabled
               for layer in layers.values()):
            with self.configured({name: precision for name in targets}, inference_mode=False):
                context = recipe_calibration(self.denoiser, self.recipe, self.calibration_spec.num_inference_steps,
                                             max_noise_timestep(self.pipe))
                with context:
                    generate(self.pipe, self.calibration_prompts, self.calibration_seeds, self.calibration_spec,
                             progress=False)
                self.calibration_calls += context.calls
        self.calibration_s += time.perf_counter() - start

    def layer_precisions(self, block_precisions: Mapping[str, Precision | str],
                         blocks: Sequence[Block] | None = None) -> dict[str, Precision]:
        """Expand block names (or layer names) to a layer -> precision map; unlisted layers stay float."""
        typed = {key: parse_precision(value, f"precision of {key!r}") for key, value in block_precisions.items()}
        from_blocks, from_layers = expand_to_layers(self.denoiser, typed, blocks=blocks)
        return {**from_blocks, **from_layers}

    @contextmanager
    def configured(self, layer_precisions: LayerPrecisions, inference_mode: bool = True) -> Iterator[nn.Module]:
        """Swap the bank's quant layers in for ``layer_precisions`` (layer name -> precision), restore on exit."""
        if self._active:
            raise BrevitasLDMError("a bank configuration is already applied: nest no configured() blocks")
        swaps = {}
        for name, precision in layer_precisions.items():
            precision = parse_precision(precision)
            if precision.is_float or name in self.skipped:
                continue
            if precision not in self.layers:
                raise BrevitasLDMError(f"precision {precision} is not in the bank: call ensure([{str(precision)!r}])")
            if name not in self.layers[precision]:
                raise BrevitasLDMError(f"layer {name!r} is not a quantizable layer of the denoiser")
            swaps[name] = self.layers[precision][name]
        self._active = True
        try:
            for name, layer in swaps.items():
                self.denoiser.set_submodule(name, layer)
            with ExitStack() as stack:
                if inference_mode and swaps:
                    stack.enter_context(fast_inference(self.denoiser))
                yield self.denoiser
        finally:
            for name in swaps:
                self.denoiser.set_submodule(name, self.fp_layers[name])
            self._active = False
