"""Calibration context managers: which denoiser calls feed Brevitas' activation statistics.

Both managers wrap Brevitas' :class:`~brevitas.graph.calibrate.calibration_mode` (quantization off, activation
observers on, scales finalised on exit) and decide, call by call, whether the denoiser call is used:

* :class:`single_step_calibration` (the paper's choice) uses only the maximum-noise step of each sampling run,
  evaluated at t = T (``num_train_timesteps - 1``) on the initial noise latents, so the statistics do not depend on
  how many inference steps the sampler was asked for. Every later step of the run is short-circuited (the
  denoiser is not executed; the output of the calibration call is returned again) so calibration costs one
  denoiser call per batch instead of one per step.
  With ``timestep_layers="every_step"`` the timestep/class-embedding projections, whose input is the conditioning
  vector alone, also see every later step: the short-circuited steps of the first run execute on one batch row
  (their outputs discarded) so those layers' inputs at that timestep are recorded, and their range is the min-max
  over the maximum-noise call and the whole schedule.
* :class:`multi_step_calibration` (the baselines) follows the real trajectory and collects statistics at every
  step, or at a uniform sample of steps as Q-Diffusion does; the other steps run in float without observing.

Sampling runs are told apart by the timestep: it decreases within a run and jumps back up when a new run starts
(calls that repeat the same timestep, as some pipelines do for classifier-free guidance, belong to the same step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from brevitas.graph.calibrate import bias_correction_mode, calibration_mode
from brevitas.proxy.runtime_quant import ActQuantProxyFromInjectorBase
from brevitas.quant_tensor import QuantTensor

from brevitas_ldm.denoiser.blocks import quantizable_layers
from brevitas_ldm.denoiser.layer_categories import layer_category
from brevitas_ldm.denoiser.names import user_facing_names
from brevitas_ldm.denoiser.sampling import (
    StepTracker,
    find_timestep,
    first_tensor,
    generate,
    get_denoiser,
    map_tensors,
    max_noise_timestep,
    replace_argument,
    timestep_like,
)
from brevitas_ldm.errors import CalibrationError
from brevitas_ldm.registry import CALIBRATION_MODES


class _StepCalibration:
    """Shared machinery: a Brevitas data-driven mode plus a forward wrapper that tracks the sampling step.

    The mode is Brevitas' ``calibration_mode`` (activation statistics), or ``bias_correction_mode``
    (``bias_correction=True``): no observer is toggled then, and every executed call feeds the corrections (the
    maximum-noise call alone in single-step mode; every step otherwise, as Brevitas' hooks hand each layer's float
    output on, so the trajectory stays the float one).
    """

    def __init__(self, model: nn.Module, bias_correction: bool = False) -> None:
        self.model = model
        self.calls = 0            # denoiser forwards actually executed
        self.observed_calls = 0   # of which fed the activation observers
        self.sweep_calls = 0      # of which ran one batch row of a short-circuited step, for the timestep-only layers
        self.skipped_calls = 0    # short-circuited (single-step mode)
        self._tracker = StepTracker()
        # Layers without a bias keep none, so the checkpoint's state layout does not depend on the option.
        self._brevitas = (bias_correction_mode(model, skip_if_no_bias=True) if bias_correction
                          else calibration_mode(model))
        self._act_proxies = ([] if bias_correction else
                             [m for m in model.modules() if isinstance(m, ActQuantProxyFromInjectorBase)])
        self._last_output = None

    # -- per-call policy, overridden -----------------------------------------------------------------------------
    def _observe(self, step: int) -> bool:
        raise NotImplementedError

    def _prepare(self, step: int, args: tuple, kwargs: dict, where: str | int) -> tuple[tuple, dict]:
        return args, kwargs

    def _skip(self, step: int) -> bool:
        return False

    def _on_skipped(self, step: int, original_forward, args: tuple, kwargs: dict) -> None:
        """Called for every short-circuited call (nothing by default)."""

    def _before_finalising(self) -> None:
        """Called after a successful run, before Brevitas turns the statistics into scales (nothing by default)."""

    # -- mechanics ----------------------------------------------------------------------------------------------
    def _set_observing(self, observing: bool) -> None:
        for proxy in self._act_proxies:
            proxy.train(observing)

    def _forward(self, original_forward, *args, **kwargs):
        where, timestep = find_timestep(args, kwargs)
        step = self._tracker.advance(timestep)
        if self._skip(step):
            self.skipped_calls += 1
            self._on_skipped(step, original_forward, args, kwargs)
            return self._last_output
        observe = self._observe(step)
        args, kwargs = self._prepare(step, args, kwargs, where)
        sample = _first_argument(args, kwargs)
        if isinstance(sample, torch.Tensor) and not torch.isfinite(sample).all():
            raise CalibrationError(f"calibration input at sampling step {step} contains NaN/Inf: check the prompts, "
                                   f"latents and guidance scale fed to calibration")
        self._set_observing(observe)
        try:
            output = original_forward(*args, **kwargs)
        finally:
            self._set_observing(True)
        result = first_tensor(output)
        if result is not None and not torch.isfinite(result).all():
            raise CalibrationError(f"the denoiser produced NaN/Inf at sampling step {step} during calibration: "
                                   f"the calibration data or the float model is broken; check the inputs")
        self.calls += 1
        self.observed_calls += int(observe)
        self._last_output = output
        return output

    def __enter__(self) -> "_StepCalibration":
        self._brevitas.__enter__()
        self._own_forward = self.model.__dict__.get("forward")  # an instance-level forward (e.g. accelerate's)
        original = self.model.forward
        self.model.forward = lambda *a, **k: self._forward(original, *a, **k)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        del self.model.forward
        if self._own_forward is not None:
            self.model.forward = self._own_forward
        self._last_output = None
        if exc_type is None:
            self._before_finalising()
        self._brevitas.__exit__(exc_type, exc, tb)
        if exc_type is None:
            if self.observed_calls == 0:
                raise CalibrationError("calibration saw no denoiser call: run the pipeline (or the denoiser) inside "
                                       "the `with` block")
            check_activation_scales(self.model)


class single_step_calibration(_StepCalibration):
    """Calibrate activation ranges on the maximum-noise step only (t = T).

    ``timestep`` is the timestep the denoiser is evaluated at for calibration (default ``num_train_timesteps - 1``,
    the maximum noise level of DDPM/DDIM- and Karras/Euler-style schedulers); pass ``num_train_timesteps`` from the
    pipeline's scheduler config when it is not 1000. ``keep_first_timestep`` keeps the first step's own timestep
    instead: flow-matching runs (SD3, Flux) start at sigma = 1 whatever the step count, in units only the pipeline
    knows (:func:`~brevitas_ldm.denoiser.sampling.max_noise_timestep` picks for a pipeline).

    ``timestep_layers="every_step"``: the timestep/class-embedding projections see one value per timestep, so t = T
    alone shows them one point of their range (in the embedded model, ``time_embedding.linear_2``'s input peaks at
    1.10 at t = T and 1.65 over a 20-step schedule). Their inputs are recorded at the maximum-noise call (every row)
    and at every later step of the first run, each executed on one batch row (``sweep_calls`` of them); their
    ranges come from all of it at once. Usage::

        with single_step_calibration(pipe.unet, num_train_timesteps=pipe.scheduler.config.num_train_timesteps):
            pipe(prompts, output_type="latent")
    """

    def __init__(self, model: nn.Module, timestep: int | None = None, num_train_timesteps: int = 1000,
                 keep_first_timestep: bool = False, bias_correction: bool = False,
                 timestep_layers: str = "calibration_steps") -> None:
        super().__init__(model, bias_correction)
        self.timestep = num_train_timesteps - 1 if timestep is None else int(timestep)
        self.keep_first_timestep = keep_first_timestep
        sweep = timestep_layers == "every_step" and not bias_correction
        self._timestep_proxies = timestep_layer_proxies(model) if sweep else []
        # Recorded instead of observed (see _before_finalising): the per-call switch leaves them alone.
        recorded = {id(proxy) for proxy in self._timestep_proxies}
        self._act_proxies = [proxy for proxy in self._act_proxies if id(proxy) not in recorded]
        self._recorded: list[list[torch.Tensor]] = [[] for _ in self._timestep_proxies]
        self._swept_steps: set[int] = set()
        self._record_hooks: list = []

    def _observe(self, step: int) -> bool:
        return step == 0

    def _skip(self, step: int) -> bool:
        return step > 0

    def _prepare(self, step, args, kwargs, where):
        if self.keep_first_timestep:
            return args, kwargs
        old = kwargs[where] if isinstance(where, str) else args[where]
        return replace_argument(args, kwargs, where, timestep_like(old, self.timestep))

    def _on_skipped(self, step, original_forward, args, kwargs) -> None:
        if not self._timestep_proxies or self._tracker.run > 0 or step in self._swept_steps:
            return
        self._swept_steps.add(step)
        sample = _first_argument(args, kwargs)
        batch = sample.shape[0] if isinstance(sample, torch.Tensor) and sample.ndim else 1
        self._set_observing(False)
        try:
            try:
                original_forward(*_first_rows(args, batch), **_first_rows(kwargs, batch))
            except (RuntimeError, ValueError, IndexError):
                # an argument whose first dimension only looks like the batch: run the whole batch instead
                original_forward(*args, **kwargs)
        finally:
            self._set_observing(True)
        self.calls += 1
        self.sweep_calls += 1

    def _record(self, index: int):
        def hook(module: nn.Module, args: tuple) -> None:
            value = args[0].value if isinstance(args[0], QuantTensor) else args[0]
            self._recorded[index].append(value.detach().clone())
        return hook

    def __enter__(self) -> "single_step_calibration":
        super().__enter__()
        for proxy in self._timestep_proxies:   # Brevitas' calibration mode set them observing
            proxy.train(False)
        self._record_hooks = [proxy.register_forward_pre_hook(self._record(i))
                              for i, proxy in enumerate(self._timestep_proxies)]
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for handle in self._record_hooks:
            handle.remove()
        self._record_hooks = []
        super().__exit__(exc_type, exc, tb)

    @torch.no_grad()
    def _before_finalising(self) -> None:
        """One observation per timestep-only layer: every recorded input at once, so the range is their min-max."""
        for proxy, recorded in zip(self._timestep_proxies, self._recorded):
            if recorded:
                proxy.train(True)
                proxy(torch.cat(recorded))
        self._recorded = [[] for _ in self._timestep_proxies]


def timestep_layer_proxies(model: nn.Module) -> list[ActQuantProxyFromInjectorBase]:
    """The activation quantizers of ``model``'s timestep/class-embedding layers (category ``time_embedding`` of
    :func:`~brevitas_ldm.denoiser.layer_categories.layer_category`), whose input is the conditioning vector alone."""
    names = user_facing_names(model)
    return [proxy for internal, layer in quantizable_layers(model)
            if layer_category(names[internal]) == "time_embedding"
            for proxy in layer.modules()
            if isinstance(proxy, ActQuantProxyFromInjectorBase) and proxy.fused_activation_quant_proxy is not None]


def _first_argument(args: tuple, kwargs: dict):
    """The denoiser call's first argument, positional or keyword: the latent sample."""
    return args[0] if args else next(iter(kwargs.values()))


def _first_rows(value, batch: int):
    """``value`` with every tensor whose first dimension is ``batch`` cut to its first row (containers followed)."""
    return map_tensors(value, lambda tensor: tensor[:1] if tensor.ndim and tensor.shape[0] == batch else tensor)


def uniform_step_indices(num_inference_steps: int, count: int) -> list[int]:
    """``count`` step indices spread uniformly over ``num_inference_steps`` (first and last included)."""
    if count >= num_inference_steps:
        return list(range(num_inference_steps))
    if count == 1:
        return [0]
    return sorted({round(i * (num_inference_steps - 1) / (count - 1)) for i in range(count)})


class multi_step_calibration(_StepCalibration):
    """Calibrate on the real trajectory: every step (``steps=None``), a uniform sample of ``steps`` steps out of
    ``num_inference_steps`` (Q-Diffusion), or the explicit step indices ``steps``."""

    def __init__(self, model: nn.Module, steps: int | Sequence[int] | None = None,
                 num_inference_steps: int | None = None, bias_correction: bool = False) -> None:
        super().__init__(model, bias_correction)
        if isinstance(steps, int):
            if num_inference_steps is None:
                raise CalibrationError("multi_step_calibration(steps=N) needs num_inference_steps to spread N steps "
                                       "uniformly; pass it, or pass explicit step indices")
            self.steps: set[int] | None = set(uniform_step_indices(num_inference_steps, steps))
        else:
            self.steps = None if steps is None else {int(s) for s in steps}

    def _observe(self, step: int) -> bool:
        return self.steps is None or step in self.steps


def check_activation_scales(model: nn.Module) -> None:
    """Every calibrated activation scale must be finite and positive, or the model would emit NaN."""
    for name, module in model.named_modules():
        if isinstance(module, ActQuantProxyFromInjectorBase) and module.is_quant_enabled:
            scale = module.scale() if callable(getattr(module, "scale", None)) else None
            if scale is not None and (not torch.isfinite(scale).all() or (scale <= 0).any()):
                raise CalibrationError(f"activation scale of {name} is {scale.flatten()[:4].tolist()} after "
                                       f"calibration: the calibration data gives no usable range; check for NaN "
                                       f"or all-zero inputs")


def recipe_calibration(denoiser: nn.Module, recipe, num_inference_steps: int,
                       max_noise: int | None = 999, bias_correction: bool = False) -> _StepCalibration:
    """The calibration context a recipe asks for (``[calibration] mode``, a registered
    :class:`~brevitas_ldm.quant.calibration_modes.base.CalibrationMode`), for ``denoiser``.

    ``max_noise`` is the timestep of maximum noise the single-step mode evaluates at, or None to keep the first
    step's own (flow matching); :func:`~brevitas_ldm.denoiser.sampling.max_noise_timestep` gives it for a pipeline.
    ``bias_correction``: the same choice of calls, under Brevitas' bias correction instead of calibration.
    """
    mode = CALIBRATION_MODES.get(recipe.calibration.mode)
    return mode.context(denoiser, recipe, num_inference_steps, max_noise, bias_correction)


def calibration_calls(recipe, num_samples: int, spec) -> int:
    """Denoiser calls a recipe's calibration makes on ``num_samples`` samples drawn with ``spec``: the mode's own
    (one per batch in single-step mode, every step otherwise) plus its one-row sweep calls
    (:func:`timestep_sweep_calls`)."""
    mode = CALIBRATION_MODES.get(recipe.calibration.mode)
    return mode.calls(recipe, num_samples, spec) + mode.sweep_calls(recipe, spec)


def timestep_sweep_calls(recipe, spec) -> int:
    """One-row denoiser calls a recipe's single-step calibration adds for its timestep-only layers (``[calibration]
    timestep_layers = "every_step"``): one per later step of the first calibration run."""
    return CALIBRATION_MODES.get(recipe.calibration.mode).sweep_calls(recipe, spec)


def bias_correction_calls(recipe, num_samples: int, spec) -> int:
    """Denoiser calls the recipe's bias correction adds after calibration: it runs the calibration's own calls again
    (:func:`recipe_calibration` with ``bias_correction=True``), without the one-row sweep."""
    if not recipe.calibration.bias_correction:
        return 0
    return calibration_calls(recipe, num_samples, spec) - timestep_sweep_calls(recipe, spec)


@torch.no_grad()
def calibrate_pipeline(pipe, recipe, prompts: Sequence, seeds: Sequence[int], spec,
                       progress: bool = False) -> _StepCalibration:
    """Run the calibration set through ``pipe`` under the recipe's calibration context, then its bias correction
    when the recipe asks for it; return the calibration context (``calls`` counts both passes' denoiser calls)."""
    denoiser = get_denoiser(pipe)
    max_noise = max_noise_timestep(pipe)
    prompts, seeds = list(prompts), list(seeds)
    context = recipe_calibration(denoiser, recipe, spec.num_inference_steps, max_noise)
    with context:
        generate(pipe, prompts, seeds, spec, output_type="latent", progress=progress,
                 desc=f"calibration ({recipe.calibration.mode})")
    if recipe.calibration.bias_correction:
        correction = recipe_calibration(denoiser, recipe, spec.num_inference_steps, max_noise, bias_correction=True)
        with correction:
            generate(pipe, prompts, seeds, spec, output_type="latent", progress=progress, desc="bias correction")
        context.calls += correction.calls
    return context
