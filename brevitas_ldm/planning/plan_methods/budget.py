"""``budget``: the exact maximiser of predicted output SQNR over ``plan.menu`` under the average weight/activation
bit budgets and, with ``plan.target``, under ``plan.max_latency_ratio`` of the target's measured latency table (a
small integer program, HiGHS through scipy)."""

from __future__ import annotations

from brevitas_ldm.errors import RecipeError
from brevitas_ldm.planning.plan_methods.base import PlanMethod
from brevitas_ldm.registry import PLAN_METHODS


class Budget(PlanMethod):
    name = "budget"
    adds_rule_precisions = False
    spends_latency = True

    def validate(self, rule) -> None:
        if not (rule.avg_weight_bits or rule.avg_act_bits or rule.max_latency_ratio):
            raise RecipeError("plan.method = \"budget\" needs plan.avg_weight_bits and/or plan.avg_act_bits, or "
                              "plan.max_latency_ratio with plan.target")

    def choose(self, report, rule, default, menu):
        from brevitas_ldm.planning.planners import budget_plan

        if rule.max_latency_ratio:
            raise RecipeError(f"plan.max_latency_ratio = {rule.max_latency_ratio} needs the latency table of "
                              f"plan.target = {rule.target!r}: run the plan through the quantize job, which measures "
                              f"it")
        return budget_plan(report, rule.avg_weight_bits, rule.avg_act_bits, menu, default)

    def choose_under_latency(self, report, rule, default, menu, table):
        from brevitas_ldm.planning.planners import budget_plan

        return budget_plan(report, rule.avg_weight_bits, rule.avg_act_bits, menu, default,
                           latency_table=table, max_latency_ratio=rule.max_latency_ratio)


PLAN_METHODS.register(Budget())
