"""The plan step: the precisions of every layer, from a given plan, the global analysis' plan, or the recipe's
uniform default. It makes no denoiser calls, so the plan of work has no row for it."""

from __future__ import annotations

from brevitas_ldm.denoiser.blocks import get_blocks
from brevitas_ldm.denoiser.sampling import get_denoiser
from brevitas_ldm.job.phase import JobPhase
from brevitas_ldm.job.state import JobState
from brevitas_ldm.planning.plan import Plan
from brevitas_ldm.quant.quantize import resolve_precisions


class PlanPhase(JobPhase):
    name = "plan"
    key = "plan"

    def run(self, state: JobState) -> None:
        denoiser = get_denoiser(state.pipe)
        if isinstance(state.plan, Plan):
            state.result.plan = state.plan
            # Blocks the plan does not list take the plan's default (which may differ from the recipe's).
            state.overrides = {**{block.name: state.plan.default for block in get_blocks(denoiser)},
                               **state.plan.precisions}
        elif state.plan is not None:
            state.overrides = dict(state.plan)
        state.layer_precisions = resolve_precisions(denoiser, state.recipe, state.overrides)
        state.result.precisions = state.layer_precisions
