"""Price a list of phases, or run it: the one loop both the plan of work and the job go through."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

from brevitas_ldm.cost import Phase
from brevitas_ldm.denoiser.sampling import get_denoiser
from brevitas_ldm.job.phase import JobPhase
from brevitas_ldm.job.state import JobState
from brevitas_ldm.process.job_progress import JobProgress


def price_phases(phases: Sequence[JobPhase], state: JobState) -> list[Phase]:
    """The plan of work's rows: each enabled phase's cost, in order (phases that make no denoiser calls have
    none). Call it before :func:`run_phases` on the same state."""
    priced = (phase.cost(state) for phase in phases if phase.enabled(state))
    return [cost for cost in priced if cost is not None]


def run_phases(phases: Sequence[JobPhase], state: JobState) -> JobState:
    """Run each enabled phase in order, counting the denoiser calls it executes into ``state.result.counted_calls``
    (by its plan-of-work name, so the two can be compared row by row). The count is read from the job's progress
    bar when one is open (the commands open it), else from one silent counter over the whole list."""
    denoiser_class = type(get_denoiser(state.pipe))
    outer = JobProgress.active(denoiser_class)
    with nullcontext(outer) if outer is not None else JobProgress(denoiser_class, 0, enabled=False) as counter:
        for phase in phases:
            if not phase.enabled(state):
                continue
            before = counter.calls
            phase.run(state)
            state.result.counted_calls[phase.name] = counter.calls - before
    return state
