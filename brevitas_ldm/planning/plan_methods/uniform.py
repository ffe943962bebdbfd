"""``uniform``: every block at the recipe's base precision (the paper's baseline); needs no analysis."""

from __future__ import annotations

from brevitas_ldm.planning.plan_methods.base import PlanMethod
from brevitas_ldm.registry import PLAN_METHODS


class Uniform(PlanMethod):
    name = "uniform"
    needs_global_analysis = False

    def choose(self, report, rule, default, menu):
        from brevitas_ldm.planning.planners import uniform_plan

        return uniform_plan(report, default)


PLAN_METHODS.register(Uniform())
