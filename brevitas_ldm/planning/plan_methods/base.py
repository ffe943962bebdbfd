"""What a plan method is: a rule that turns the global analysis' report into a per-block (or per-layer) plan.

A method checks the ``[plan]`` keys it reads (:meth:`PlanMethod.validate`, at recipe load, before any analysis),
says whether it needs the global analysis at all, and chooses a :class:`~brevitas_ldm.planning.plan.Plan` from a
:class:`~brevitas_ldm.analysis.block_report.BlockReport` and the recipe's menu. The building blocks every built-in
uses are in :mod:`brevitas_ldm.planning.planners` (``_make_plan`` through ``uniform_plan``, ``top_k_plan``, ...;
``Plan`` prediction and average bits come with them). Subclass it in a module of your own, then
``PLAN_METHODS.register(MyMethod())``: recipes, the command line and the report take the new name. Keep numpy and
torch imports inside the methods, so recipes validate without them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from brevitas_ldm.analysis.block_report import BlockReport
    from brevitas_ldm.planning.latency_table import LatencyTable
    from brevitas_ldm.planning.plan import Plan
    from brevitas_ldm.precision import Precision
    from brevitas_ldm.recipe import PlanRule


class PlanMethod:
    """Base class of a registered plan method (see the module docstring)."""

    #: The ``[plan] method`` value.
    name: str = ""
    #: Whether the method reads the global analysis (every method but ``uniform``): a recipe that turns the analysis
    #: off is refused up front.
    needs_global_analysis: bool = True
    #: Whether the recipe's base precision and ``plan.high_precision`` join ``plan.menu`` (rule-based methods); a
    #: budget method picks from the menu alone.
    adds_rule_precisions: bool = True
    #: Whether the method spends ``plan.max_latency_ratio`` (through :meth:`choose_under_latency`); a recipe that
    #: sets one for a method that does not is refused up front.
    spends_latency: bool = False

    def validate(self, rule: "PlanRule") -> None:
        """Refuse ``[plan]`` settings this method cannot honour, naming the key (nothing by default)."""

    def choose(self, report: "BlockReport", rule: "PlanRule", default: "Precision",
               menu: Sequence["Precision"]) -> "Plan":
        """The plan for ``report``; ``menu`` is measured in the report (checked by the caller)."""
        raise NotImplementedError(f"plan method {self.name!r} does not choose a plan")

    def choose_under_latency(self, report: "BlockReport", rule: "PlanRule", default: "Precision",
                             menu: Sequence["Precision"], table: "LatencyTable") -> "Plan":
        """The plan for ``report`` whose predicted latency in ``table``'s target stays within
        ``rule.max_latency_ratio`` (only methods with :attr:`spends_latency` are asked)."""
        raise NotImplementedError(f"plan method {self.name!r} does not spend a latency budget")
