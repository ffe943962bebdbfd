"""``threshold``: blocks whose share of the fully quantized model's noise exceeds ``plan.threshold_db`` get
``plan.high_precision`` (the paper's rule)."""

from __future__ import annotations

from brevitas_ldm.planning.plan_methods.base import PlanMethod
from brevitas_ldm.registry import PLAN_METHODS


class Threshold(PlanMethod):
    name = "threshold"

    def choose(self, report, rule, default, menu):
        from brevitas_ldm.planning.planners import threshold_plan

        return threshold_plan(report, float(rule.threshold_db), rule.high_precision, default)


PLAN_METHODS.register(Threshold())
