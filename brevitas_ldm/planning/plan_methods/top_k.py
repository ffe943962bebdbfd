"""``top_k``: the ``plan.top_k`` blocks whose move to ``plan.high_precision`` removes the most predicted noise."""

from __future__ import annotations

from brevitas_ldm.errors import RecipeError
from brevitas_ldm.planning.plan_methods.base import PlanMethod
from brevitas_ldm.registry import PLAN_METHODS


class TopK(PlanMethod):
    name = "top_k"

    def choose(self, report, rule, default, menu):
        from brevitas_ldm.planning.planners import top_k_plan

        if rule.top_k > len(report.block_names):
            raise RecipeError(f"plan.top_k = {rule.top_k} exceeds the model's {len(report.block_names)} blocks")
        return top_k_plan(report, rule.top_k, rule.high_precision, default)


PLAN_METHODS.register(TopK())
