"""One progress bar for a whole job, so the ETA a user sees is the job's, not only the current phase's.

Every phase of a job (FP sampling, analyses, SmoothQuant, calibration, evaluation) spends its time in denoiser
calls, some on copies of the denoiser (the analysis bank, the local twins). A module-global forward pre-hook
counts every executed call of a module of the denoiser's class, whichever copy makes it, against the number of
calls the job's plan of work predicted (:mod:`brevitas_ldm.cost`); tqdm turns the rate into the job's ETA while the
phases' own bars show below it. The pre-hook and the global forward hook that ends a call run for every module call:
4.8% of a tiny-sd-digits sampling run's time (8 prompts, 20 steps, 1 thread), less on larger models whose modules do
more work per call.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from tqdm.auto import tqdm

from brevitas_ldm.process.interruption import raise_if_interrupted


class JobProgress:
    """``with JobProgress(type(denoiser), total_calls): ...`` shows ``job: n/total calls [elapsed<ETA]``.

    :meth:`active` is the innermost open one for a denoiser class, so code that only needs the count (the job's
    per-phase tally) reads it instead of adding a second global hook to every module call."""

    _open: list["JobProgress"] = []

    @classmethod
    def active(cls, denoiser_class: type[nn.Module]) -> "JobProgress | None":
        return next((item for item in reversed(cls._open) if item.denoiser_class is denoiser_class), None)

    def __init__(self, denoiser_class: type[nn.Module], total_calls: int, desc: str = "whole job",
                 enabled: bool = True) -> None:
        self.denoiser_class = denoiser_class
        self.total_calls = int(total_calls)
        self.desc = desc
        self.enabled = enabled
        self.calls = 0
        self._pending = False
        self._end_handle = None
        self._bar = None
        self._handle = None

    def _count(self, module: nn.Module, args: Any) -> None:
        # A call counts once one of its own submodules runs: single-step calibration answers the later steps' calls
        # from its cache without running the network, and those cost (and were planned as) nothing. A call ends at
        # the global forward hook, so later module calls (Brevitas finalising statistics, the text encoder) are not
        # taken for the network running (an instance hook would be deep-copied along with the denoiser).
        if type(module) is self.denoiser_class:
            raise_if_interrupted()      # a signal whose exception a library swallowed still ends the job here
            self._pending = True
        elif self._pending:
            self._pending = False
            self.calls += 1
            if self._bar is not None:
                self._bar.update(1)

    def _end(self, module: nn.Module, args: Any, output: Any) -> None:
        if type(module) is self.denoiser_class:
            self._pending = False

    def __enter__(self) -> "JobProgress":
        self._bar = tqdm(total=self.total_calls, desc=self.desc, unit="call", position=0, disable=not self.enabled,
                         dynamic_ncols=True)
        self._handle = register_module_forward_pre_hook(self._count)
        self._end_handle = register_module_forward_hook(self._end)
        JobProgress._open.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        JobProgress._open.remove(self)
        self._handle.remove()
        self._end_handle.remove()
        if self._bar is not None:
            if exc[0] is None:      # the plan's SmoothQuant figure is an upper bound: end the bar at what ran
                self._bar.total = self.calls
                self._bar.refresh()
            self._bar.close()

