"""SmoothQuant on selected layers of a float denoiser, as a Brevitas graph equalization step.

SmoothQuant moves quantization difficulty from activations to weights: a layer ``y = W x`` becomes
``y = (W diag(s)) (x / s)`` with ``s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha)``, so the per-tensor activation
quantizer no longer has to cover a few outlier channels. Brevitas implements exactly this as *layerwise activation
equalization* (:class:`brevitas.graph.equalize.activation_equalization_mode` with ``layerwise=True,
add_mul_node=True``): it records the per-channel input max of every supported layer while calibration data runs,
then wraps each layer as ``EqualizedModule(scale=ScaleBias(1/s), layer=<layer with W*s>)``. This module restricts
that transform to the layers the local SQNR analysis picked (everything else goes on Brevitas' ``blacklist_layers``),
and optionally picks alpha per layer from a grid by the layer's relative SQNR after quantization.

It must run on the FLOAT denoiser, before :func:`brevitas_ldm.quant.quantize.quantize_denoiser`: the wrapped layer is a
plain ``nn.Linear``/``nn.Conv2d`` that ``layerwise_quantize`` then replaces by a Brevitas quant layer, whose input
quantizer sees the smoothed input ``x / s``. The wrapping renames the layer (``proj_in`` -> ``proj_in.layer``);
the helpers at the top of this module map between those *internal* names and the *user-facing* names that reports,
plans and recipes use, so a plan keeps saying ``down_blocks.0.attentions.0.proj_in``.

This module imports nothing from ``quantize.py`` or ``sensitivity`` at import time (they are imported where
needed), so ``quantize.py`` can use the name helpers without an import cycle.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, ContextManager, Iterator

import torch
import torch.nn as nn
from brevitas.graph.calibrate import calibration_mode
from brevitas.graph.equalize import activation_equalization_mode

from brevitas_ldm.compat import BREVITAS_EQUALIZATION_LAYERS as _BREVITAS_EQ_LAYERS
from brevitas_ldm.compat import EqualizedModule
from brevitas_ldm.denoiser.blocks import quantizable_layers
from brevitas_ldm.denoiser.names import (
    equalized_prefixes,
    user_facing_name,
)
from brevitas_ldm.denoiser.sampling import CallCounter, denoiser_step_hook
from brevitas_ldm.errors import ModelError, RecipeError
from brevitas_ldm.precision import Precision
from brevitas_ldm.quant.probes import TwinProbe
from brevitas_ldm.quant.quantize import quantize_denoiser, resolve_precisions
from brevitas_ldm.recipe import Recipe

#: Temporary child of the denoiser that holds the alpha-trial layers while they are calibrated (see _trial_holders).
_TRIALS_ATTR = "_brevitas_ldm_smoothquant_trials"

# Brevitas' layerwise equalization stops its region search at _BREVITAS_EQ_LAYERS; every layer of those types that is
# not selected goes on the blacklist, so only the selected layers are touched. These types are never regions.
_NOT_REGIONS = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def smoothing_scales(model: nn.Module) -> dict[str, torch.Tensor]:
    """User-facing layer name -> the per-channel input multiplier ``1/s`` Brevitas inserted in front of it."""
    return {name: module.scale.weight.detach().clone() for name, module in model.named_modules()
            if isinstance(module, EqualizedModule)}


# -- the transform ----------------------------------------------------------------------------------------------------
CalibrationFn = Callable[[nn.Module], Any]
CalibrationContext = Callable[[nn.Module], ContextManager]


@dataclass
class SmoothingResult:
    """What one SmoothQuant step did. Layer names are user-facing; SQNRs (dB) only when alphas were searched.

    ``layers``: the smoothed layers, in order; ``alphas``: the alpha each got (None: Brevitas' default);
    ``skipped``: layer -> why it was left alone; ``sqnr_before_db``/``sqnr_after_db``: each layer's relative SQNR
    unsmoothed and at the chosen alpha; ``alpha_sqnr_db``: layer -> alpha -> SQNR of every alpha tried;
    ``scale_mismatch``: relative difference between trial and final scales (non-zero means a non-deterministic
    calibration); ``denoiser_calls``, ``passes``, ``wall_time_s``: what it cost.
    """

    layers: list[str] = field(default_factory=list)
    alphas: dict[str, float | None] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    sqnr_before_db: dict[str, float] = field(default_factory=dict)
    sqnr_after_db: dict[str, float] = field(default_factory=dict)
    alpha_sqnr_db: dict[str, dict[str, float]] = field(default_factory=dict)
    scale_mismatch: dict[str, float] = field(default_factory=dict)
    denoiser_calls: int = 0
    passes: int = 0
    wall_time_s: float = 0.0


@dataclass
class SmoothQuantStep:
    """SmoothQuant (Brevitas layerwise activation equalization) on chosen layers of a float denoiser.

    ``modules``: user-facing layer names (``None`` = every Linear/Conv2d). ``alpha``: migration strength used when
    ``alpha_grid`` is empty. ``alpha_grid``: candidate alphas; each layer gets the one that maximises its relative
    SQNR (its output SQNR when only it is quantized, on its FP input), and with ``keep_if_worse=False`` a layer
    no grid alpha improves is left unsmoothed. Measuring SQNR needs ``recipe`` (and the layer ``precisions`` of
    the plan, if not the recipe's default); without a recipe the step just applies ``alpha`` and reports no SQNR.

    ``calibration``: context-manager factory that decides which denoiser calls calibrate the *trial* quantizers'
    activation ranges, e.g. ``lambda m: recipe_calibration(m, recipe, steps)`` to follow the recipe's
    single-step calibration; default Brevitas ``calibration_mode`` (every call of ``calibration_fn``).
    Brevitas' SmoothQuant statistics themselves always come from every call ``calibration_fn`` makes.
    """

    modules: Sequence[str] | None = None
    alpha: float = 0.5
    alpha_grid: Sequence[float] = ()
    recipe: Recipe | None = None
    precisions: Mapping[str, Precision | str] | None = None
    calibration: CalibrationContext | None = None
    keep_if_worse: bool = False

    def __post_init__(self) -> None:
        for value in (self.alpha, *self.alpha_grid):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
                raise RecipeError(f"SmoothQuant alpha {value!r} must be a number in [0, 1]")
        if self.alpha_grid and self.recipe is None:
            raise RecipeError("SmoothQuant alpha_grid picks alpha by quantized SQNR, which needs the recipe: pass "
                              "SmoothQuantStep(..., recipe=recipe) or drop alpha_grid")
        if self.modules is not None and isinstance(self.modules, str):
            raise ModelError("SmoothQuantStep(modules=...) takes a list of layer names, not one string: wrap it "
                             "in a list")

    @classmethod
    def from_recipe(cls, recipe: Recipe, modules: Sequence[str] | None = None,
                    precisions: Mapping[str, Precision | str] | None = None,
                    calibration: CalibrationContext | None = None) -> "SmoothQuantStep":
        """The step a recipe's ``[smoothquant]`` section asks for (``modules`` from the local analysis when the
        scope is ``sensitive``)."""
        section = recipe.smoothquant
        return cls(modules=modules, alpha=float(section.alpha), alpha_grid=tuple(section.alpha_grid),
                   recipe=recipe, precisions=precisions, calibration=calibration)

    def planned_calls(self, run_calls: int, calibration_calls: int) -> int:
        """The most denoiser calls :meth:`apply` makes when one run of ``calibration_fn`` costs ``run_calls`` calls
        (``calibration_calls`` of them under the trial calibration context): with a recipe, the three trial
        passes, then one equalization pass per distinct chosen alpha; without, one pass."""
        if self.recipe is None:
            return run_calls
        distinct_alphas = len(set(self.alpha_grid)) if self.alpha_grid else 1
        return 2 * run_calls + calibration_calls + distinct_alphas * run_calls

    # -- public ---------------------------------------------------------------------------------------------------
    def apply(self, denoiser: nn.Module, calibration_fn: CalibrationFn) -> SmoothingResult:
        """Smooth the selected layers of ``denoiser`` in place; ``calibration_fn(denoiser)`` runs calibration data.

        Returns a :class:`SmoothingResult` (what was smoothed, with which alpha, what it measured and cost).
        """
        start = time.perf_counter()
        selected = self._select(denoiser)
        calls = _CallCounter(denoiser)
        result = SmoothingResult()
        if not selected:
            result.wall_time_s = time.perf_counter() - start
            return result
        with calls:
            chosen: dict[str, float | None]
            trial_scales: dict[float, dict[str, torch.Tensor]] = {}
            if self.recipe is not None:
                sqnr, trial_scales, skipped = self._trials(denoiser, selected, calibration_fn, calls)
                result.skipped.update(skipped)
                chosen = {}
                for name in selected:
                    if name in skipped:
                        continue
                    by_alpha = sqnr[name]
                    result.alpha_sqnr_db[name] = {_alpha_key(a): db for a, db in by_alpha.items()
                                                     if a is not None}
                    result.sqnr_before_db[name] = by_alpha[None]
                    candidates = [a for a in by_alpha if a is not None]
                    best = max(candidates, key=lambda a: (by_alpha[a], -candidates.index(a)))
                    if self.alpha_grid and not self.keep_if_worse and by_alpha[best] <= by_alpha[None]:
                        result.skipped[name] = (f"no alpha in {list(self.alpha_grid)} improves its SQNR "
                                                   f"({by_alpha[None]:.2f} dB unsmoothed)")
                        result.sqnr_after_db[name] = by_alpha[None]
                        continue
                    chosen[name] = best
                    result.sqnr_after_db[name] = by_alpha[best]
            else:
                chosen = {name: float(self.alpha) for name in selected}
            self._equalize(denoiser, chosen, calibration_fn, calls)
        result.layers = [name for name in selected if name in chosen]
        result.alphas = {name: chosen[name] for name in result.layers}
        result.scale_mismatch = _scale_mismatch(denoiser, chosen, trial_scales)
        if result.scale_mismatch and max(result.scale_mismatch.values()) > 1e-3:
            warnings.warn("SmoothQuant scales differ between the alpha trial and the final pass: calibration_fn is "
                          "not deterministic (seed its sampling), so the reported SQNR may not match the model")
        result.denoiser_calls = calls.count
        result.passes = calls.passes
        result.wall_time_s = time.perf_counter() - start
        return result

    # -- steps ----------------------------------------------------------------------------------------------------
    def _select(self, denoiser: nn.Module) -> list[str]:
        """User-facing names of the layers to smooth, validated against the denoiser."""
        prefixes = equalized_prefixes(denoiser)
        layers = {user_facing_name(denoiser, n, prefixes): n for n, _ in quantizable_layers(denoiser)}
        if self.modules is None:
            return [name for name in layers if name not in prefixes]
        out = []
        for name in self.modules:
            if name in prefixes:
                raise ModelError(f"layer {name!r} is already smoothed (wrapped by SmoothQuant): smooth each layer "
                                 f"once, or start again from the float denoiser")
            if name not in layers:
                close = [n for n in layers if n.endswith(name.split(".")[-1])][:3]
                raise ModelError(f"{name!r} is not a Linear/Conv2d layer of {type(denoiser).__name__}: use names from "
                                 f"the local analysis report" + (f", e.g. {', '.join(close)}" if close else ""))
            if name not in out:
                out.append(name)
        return out

    def _layer_precisions(self, denoiser: nn.Module) -> dict[str, Any]:

        return resolve_precisions(denoiser, self.recipe, self.precisions)  # keyed by user-facing names

    def _trials(self, denoiser: nn.Module, selected: list[str], calibration_fn: CalibrationFn,
                calls: "_CallCounter") -> tuple[dict[str, dict[float | None, float]], dict, dict[str, str]]:
        """Relative SQNR of every selected layer, unsmoothed and at every candidate alpha, in three passes.

        Each candidate is a copy of the selected layers (a skeleton module with the same qualified names): pass 1
        lets Brevitas equalize every alpha copy on the layers' FP inputs, the copies are then quantized with
        ``quantize_denoiser``, pass 2 calibrates their activation ranges, pass 3 measures their output SQNR
        against the FP layer output. The float denoiser is never modified here.
        """

        precisions = self._layer_precisions(denoiser)
        skipped = {name: "planned as float: nothing to smooth" for name in selected if precisions[name].is_float}
        names = [name for name in selected if name not in skipped]
        if not names:
            return {}, {}, skipped
        float_layers = {name: denoiser.get_submodule(name) for name in names}
        alphas: list[float | None] = [None] + [float(a) for a in (self.alpha_grid or (self.alpha,))]
        holders = {alpha: _skeleton(float_layers) for alpha in alphas}

        def feed(alpha: float | None, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
            # Resolved at call time: Brevitas swaps the layer for a stats hook, then for an EqualizedModule.
            return lambda x: holders[alpha].get_submodule(name)(x)

        probe_fns = {name: {alpha: feed(alpha, name) for alpha in alphas if alpha is not None} for name in names}
        with ExitStack() as stack:  # pass 1: Brevitas equalization statistics of every alpha copy
            for alpha in alphas[1:]:
                stack.enter_context(activation_equalization_mode(holders[alpha], alpha, add_mul_node=True,
                                                                 layerwise=True))
            with TwinProbe(float_layers, probe_fns, measure=False), torch.no_grad():
                calls.pass_()
                calibration_fn(denoiser)
        scales = {alpha: smoothing_scales(holders[alpha]) for alpha in alphas[1:]}
        for holder in holders.values():
            quantize_denoiser(holder, self.recipe, {name: precisions[name] for name in names}).eval()
        all_fns = {name: {alpha: feed(alpha, name) for alpha in alphas} for name in names}
        context = self.calibration or calibration_mode
        with _attached(denoiser, list(holders.values())):  # pass 2: activation ranges of the quantized copies
            before = calls.count
            calibration_context = context(denoiser)
            with calibration_context, TwinProbe(float_layers, all_fns, measure=False), torch.no_grad():
                calls.pass_()
                calibration_fn(denoiser)
            if hasattr(calibration_context, "calls"):  # single-step calibration skips (does not run) later steps
                calls.count = before + int(calibration_context.calls)
        probe = TwinProbe(float_layers, all_fns, measure=True)  # pass 3: relative SQNR of every copy
        with probe, denoiser_step_hook(denoiser, lambda step, *_: probe.end_call(0)), torch.no_grad():
            calls.pass_()
            calibration_fn(denoiser)
        sqnr = {name: {alpha: probe.meter(name, alpha).pooled_db for alpha in alphas} for name in names}
        return sqnr, scales, skipped

    def _equalize(self, denoiser: nn.Module, chosen: Mapping[str, float | None], calibration_fn: CalibrationFn,
                  calls: "_CallCounter") -> None:
        """Brevitas layerwise activation equalization on the real denoiser, one pass per distinct alpha."""
        groups: dict[float, list[str]] = {}
        for name, alpha in chosen.items():
            if alpha is not None:
                groups.setdefault(float(alpha), []).append(name)
        for alpha, names in groups.items():
            keep = set(names)
            blacklist = [name for name, module in denoiser.named_modules()
                         if isinstance(module, _BREVITAS_EQ_LAYERS) and not isinstance(module, _NOT_REGIONS)
                         and name not in keep]
            with activation_equalization_mode(denoiser, alpha, add_mul_node=True, layerwise=True,
                                              blacklist_layers=blacklist), torch.no_grad():
                calls.pass_()
                calibration_fn(denoiser)
            prefixes = equalized_prefixes(denoiser)
            missing = [name for name in names if name not in prefixes]
            if missing:
                raise ModelError(f"SmoothQuant saw no input for {', '.join(missing[:3])}: calibration_fn(denoiser) "
                                 f"must run data through the denoiser it is given")


# -- helpers ----------------------------------------------------------------------------------------------------------
def _alpha_key(alpha: float) -> str:
    return f"{alpha:g}"


def _skeleton(layers: Mapping[str, nn.Module]) -> nn.Module:
    """Deep copies of ``layers`` under a bare module tree with the same qualified names.

    Keeping the real names lets ``quantize_denoiser`` and Brevitas' equalization work on the copies exactly as on the
    denoiser (same skip patterns, same plan keys) without copying the whole denoiser per candidate alpha.
    """
    root = nn.Module()
    for name, layer in layers.items():
        parent = root
        parts = name.split(".")
        for part in parts[:-1]:
            child = parent._modules.get(part)
            if child is None:
                child = nn.Module()
                parent.add_module(part, child)
            parent = child
        parent.add_module(parts[-1], copy.deepcopy(layer))
    return root.eval()


@contextmanager
def _attached(denoiser: nn.Module, modules: list[nn.Module]) -> Iterator[None]:
    """Temporarily make ``modules`` children of the denoiser, so calibration contexts built on the denoiser (which
    collect the quant proxies under it) also calibrate them; the denoiser's forward never calls them."""
    if hasattr(denoiser, _TRIALS_ATTR):
        raise ModelError("a SmoothQuant trial is already attached to this denoiser: do not nest SmoothQuantStep.apply")
    denoiser.add_module(_TRIALS_ATTR, nn.ModuleList(modules))
    try:
        yield
    finally:
        delattr(denoiser, _TRIALS_ATTR)


def _scale_mismatch(denoiser: nn.Module, chosen: Mapping[str, float | None],
                    trial_scales: Mapping[float, Mapping[str, torch.Tensor]]) -> dict[str, float]:
    """Max relative difference between the scales measured in the alpha trial and those finally applied."""
    if not trial_scales:
        return {}
    final = smoothing_scales(denoiser)
    out = {}
    for name, alpha in chosen.items():
        if alpha is None or name not in final or name not in trial_scales.get(float(alpha), {}):
            continue
        trial = trial_scales[float(alpha)][name].to(final[name])
        out[name] = float(((final[name] - trial).abs() / trial.abs().clamp_min(1e-12)).max())
    return out


class _CallCounter(CallCounter):
    """Counts denoiser forward calls, and the calibration passes made while smoothing."""

    def __init__(self, denoiser: nn.Module) -> None:
        super().__init__(denoiser)
        self.passes = 0

    def pass_(self) -> None:
        self.passes += 1


