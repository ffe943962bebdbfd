"""Quantized twins of float layers, run on the float layer's own input: the local analysis' probe.

A forward hook on each float layer runs the layer's quantized twin on the very input the float layer just
received and feeds a streaming :class:`~brevitas_ldm.sqnr.SQNRMeter` with (FP output, twin output); the FP run is
never perturbed. :func:`split_twin` runs a twin with weights and activations quantized, weights only, and
activations only (Brevitas proxies toggled through their ``disable_quant`` flag), which splits each layer's noise
into a weight-caused and an activation-caused part.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.sqnr import SQNRMeter

TwinFn = Callable[[torch.Tensor], torch.Tensor]


class TwinProbe:
    """Forward hooks on float layers that run each layer's twins on the layer's FP input.

    ``twins[name][variant]`` is a callable applied to the FP input of layer ``name``; with ``measure=True`` the
    SQNR of its result against the FP output is accumulated per denoiser call and assigned to a sampling step by
    :meth:`end_call` (hook it to :func:`denoiser_step_hook`). With ``measure=False`` the twins are only fed (e.g.
    to calibrate their activation ranges). Nothing is stored but per-sample power sums. While ``active`` is False
    the twins do not run at all (the calls another rank of a distributed job measures).
    """

    def __init__(self, layers: Mapping[str, nn.Module], twins: Mapping[str, Mapping[Any, TwinFn]],
                 measure: bool = True) -> None:
        missing = [name for name in twins if name not in layers]
        if missing:
            raise BrevitasLDMError(f"no float layer for twin {missing[0]!r}: build twins from the same denoiser")
        self.layers = layers
        self.twins = twins
        self.measure = measure
        self.active = True
        self.steps: dict[str, dict[Any, dict[int, SQNRMeter]]] = {n: {v: {} for v in t} for n, t in twins.items()}
        self._pending: dict[tuple[str, Any], SQNRMeter] = {}
        self._handles: list[Any] = []

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not self.active:
                return
            x = args[0]
            with torch.no_grad():
                for variant, fn in self.twins[name].items():
                    y = fn(x)
                    if self.measure:
                        self._pending.setdefault((name, variant), SQNRMeter()).update(output, y)
        return hook

    def __enter__(self) -> "TwinProbe":
        self._handles = [self.layers[name].register_forward_hook(self._hook(name)) for name in self.twins]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def end_call(self, step: int) -> None:
        """Assign what the hooks measured during the denoiser call that just ended to sampling step ``step``."""
        for (name, variant), meter in self._pending.items():
            target = self.steps[name][variant].setdefault(step, SQNRMeter())
            target.signal.extend(meter.signal)
            target.noise.extend(meter.noise)
        self._pending = {}

    def absorb(self, steps: Mapping[str, Mapping[Any, Mapping[int, SQNRMeter]]]) -> None:
        """Add another probe's per-step meters (the same layers, measured on other calls) to this one's."""
        for name, variants in steps.items():
            for variant, by_step in variants.items():
                mine = self.steps[name][variant]
                for step, meter in by_step.items():
                    mine[step] = mine[step].merge(meter) if step in mine else meter

    def meter(self, name: str, variant: Any, step: int | None = None) -> SQNRMeter:
        """Pooled meter of one layer/variant, over all steps or at one step."""
        by_step = self.steps[name][variant]
        if step is not None:
            return by_step[step]
        merged = SQNRMeter()
        for meter in by_step.values():
            merged = merged.merge(meter)
        return merged


@contextmanager
def _quant_disabled(proxies: Sequence[nn.Module]) -> Iterator[None]:
    """Turn the given Brevitas quant proxies into pass-throughs for one call.

    Sets the same ``disable_quant`` flag Brevitas' ``quantization_status_manager`` sets, on just the twin's own
    proxies: the manager walks the whole module tree and toggles train modes on every call, which made the
    weight-only/activation-only variants cost more than the quantized layers themselves.
    """
    previous = [proxy.disable_quant for proxy in proxies]
    for proxy in proxies:
        proxy.disable_quant = True
    try:
        yield
    finally:
        for proxy, value in zip(proxies, previous):
            proxy.disable_quant = value


def split_twin(twin: nn.Module) -> dict[str, TwinFn]:
    """A Brevitas quant layer as three functions: fully quantized, weight-only, activation-only.

    A requantized output (``[deploy] requantize_conv_outputs``) counts as activation noise. An int32 bias is
    quantized at ``s_x * s_w``, so it needs both quantizers: it stays float in either partial variant.
    """
    output = [twin.output_quant] if twin.output_quant.is_quant_enabled else []
    bias = [twin.bias_quant] if twin.bias_quant.is_quant_enabled else []
    act_proxies = [twin.input_quant, *output, *bias]
    weight_proxies = [twin.weight_quant, *bias]

    def weight_only(x: torch.Tensor) -> torch.Tensor:
        with _quant_disabled(act_proxies):
            return twin(x)

    def act_only(x: torch.Tensor) -> torch.Tensor:
        with _quant_disabled(weight_proxies):
            return twin(x)

    return {"total": twin, "weight": weight_only, "act": act_only}
