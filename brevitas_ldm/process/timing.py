"""Latency of several models side by side: interleaved rounds, so a noisy neighbour slows them all alike.

Each round calls every model once, in an order that rotates from round to round; the median per model over the
rounds is the figure to compare, and ratios are taken between models timed in the same rounds. CUDA work is
synchronised around each call, so a figure is the call's device time, not its launch time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from brevitas_ldm.errors import BrevitasLDMError


def _synchronise() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved_latency(calls: Mapping[str, Callable[[], Any]], rounds: int = 5,
                        warmup: int = 1) -> dict[str, dict[str, float]]:
    """Name -> ``{"median_ms", "min_ms", "rounds"}`` for each zero-argument callable in ``calls``."""
    if rounds < 1 or warmup < 0:
        raise BrevitasLDMError(f"rounds={rounds}, warmup={warmup}: need rounds >= 1 and warmup >= 0")
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    _synchronise()
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names[index % len(names):] + names[:index % len(names)]:
            start = time.perf_counter()
            calls[name]()
            _synchronise()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: {"median_ms": statistics.median(values), "min_ms": min(values), "rounds": rounds}
            for name, values in times.items()}
