"""``budget``: the exact maximiser of predicted output SQNR over ``plan.menu`` under the average weight/activation
bit budgets (a small integer program, HiGHS through scipy)."""

from __future__ import annotations

from brevitas_ldm.errors import RecipeError
from brevitas_ldm.planning.plan_methods.base import PlanMethod
from brevitas_ldm.registry import PLAN_METHODS


class Budget(PlanMethod):
    name = "budget"
    adds_rule_precisions = False

    def validate(self, rule) -> None:
        if not (rule.avg_weight_bits or rule.avg_act_bits):
            raise RecipeError("plan.method = \"budget\" needs plan.avg_weight_bits and/or plan.avg_act_bits")

    def choose(self, report, rule, default, menu):
        from brevitas_ldm.planning.planners import budget_plan

        return budget_plan(report, rule.avg_weight_bits, rule.avg_act_bits, menu, default)


PLAN_METHODS.register(Budget())
