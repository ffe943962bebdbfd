"""From a global block report to a per-block precision plan.

Every planner ranks configurations with the noise-additivity model of :mod:`.prediction`; minimising the
predicted noise is a sum over blocks, so the budget planner's exact optimum is a small integer program, solved with
``scipy.optimize.milp`` (HiGHS).

Planners (``recipe.plan.method``, registered by name in :data:`~brevitas_ldm.registry.PLAN_METHODS`, one module
per method in :mod:`brevitas_ldm.planning.plan_methods`): ``uniform`` (every block at the recipe's base
precision), ``threshold`` (blocks whose progressive ``share_db`` exceeds ``threshold_db`` go to
``high_precision``), ``top_k`` (the ``k`` blocks whose move to ``high_precision`` removes the most predicted
noise), ``budget`` (maximise predicted SQNR under average weight/activation-bit budgets, weighted by parameter count
and activation elements). Each returns a :class:`~brevitas_ldm.planning.plan.Plan`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from brevitas_ldm.analysis.block_report import BlockReport
from brevitas_ldm.errors import RecipeError
from brevitas_ldm.planning.latency_table import LatencyTable
from brevitas_ldm.planning.plan import Plan, _evidence
from brevitas_ldm.planning.prediction import (
    average_bits,
    predict_noise_ratio,
    predict_sqnr_db,
)
from brevitas_ldm.precision import FLOAT_BITS, Precision, menu_of, parse_precision
from brevitas_ldm.recipe import PlanRule
from brevitas_ldm.registry import PLAN_METHODS
from brevitas_ldm.sqnr import noise_ratio_to_db


def _make_plan(report: BlockReport, assignment: Mapping[str, Precision], method: str, default: Precision,
               reasons: Mapping[str, str], budget: Mapping[str, float] | None = None) -> Plan:
    precisions = {name: assignment[name] for name in report.block_names}
    plan = Plan(precisions=precisions, method=method, default=default, budget=dict(budget or {}),
                evidence={n: _evidence(report, n, reasons.get(n, "")) for n in report.block_names},
                model=report.model, recipe=report.recipe)
    plan.predicted_sqnr_db = predict_sqnr_db(report, precisions, default)
    plan.avg_weight_bits, plan.avg_act_bits = average_bits(report, precisions, default)
    return plan


# ---------------------------------------------------------------------------------------------------------------
# Planners
# ---------------------------------------------------------------------------------------------------------------
def _check_measured(report: BlockReport, precisions: Sequence[Precision], what: str) -> None:
    missing = [p.name for p in precisions if not report.measured(p)]
    if missing:
        raise RecipeError(f"{what} uses {', '.join(missing)}, which the global analysis did not measure "
                          f"(it has {', '.join(map(str, report.precisions)) or 'none'}): add them to plan.menu and "
                          f"rerun the analysis")


def upgrade_gain(report: BlockReport, name: str, default: Precision, high: Precision) -> float:
    """Predicted noise ratio removed by moving block ``name`` from ``default`` to ``high``."""
    entry = report.block(name)
    return entry.noise_ratio(default) - entry.noise_ratio(high)


def uniform_plan(report: BlockReport, default: str | Precision) -> Plan:
    default = parse_precision(default, "default precision")
    _check_measured(report, [default], "the uniform plan")
    return _make_plan(report, {n: default for n in report.block_names}, "uniform", default,
                      {n: f"uniform {default.name}" for n in report.block_names})


def top_k_plan(report: BlockReport, k: int, high: str | Precision, default: str | Precision,
               least: bool = False) -> Plan:
    """The ``k`` blocks with the largest (``least``: smallest) predicted gain from ``high`` get ``high``."""
    default, high = parse_precision(default, "default precision"), parse_precision(high, "plan.high_precision")
    _check_measured(report, [default, high], "the top-k plan")
    if k < 0:
        raise RecipeError(f"plan.top_k = {k} must be >= 0")
    order = sorted(report.block_names, key=lambda n: upgrade_gain(report, n, default, high), reverse=not least)
    chosen = set(order[:k])
    assignment = {n: (high if n in chosen else default) for n in report.block_names}
    rank = {n: i + 1 for i, n in enumerate(order)}
    reasons = {n: (f"{'least' if least else 'most'} sensitive #{rank[n]}: {high.name} removes "
                   f"{_gain_db(report, n, default, high):.2f} dB of predicted noise" if n in chosen else
                   f"rank #{rank[n]} of {len(order)}, kept at {default.name}") for n in report.block_names}
    return _make_plan(report, assignment, "top_k" if not least else "top_k_least", default, reasons)


def _gain_db(report: BlockReport, name: str, default: Precision, high: Precision) -> float:
    """dB of output SQNR the uniform-``default`` model is predicted to gain when ``name`` moves to ``high``."""
    total = predict_noise_ratio(report, {}, default)
    after = total - upgrade_gain(report, name, default, high)
    return noise_ratio_to_db(after) - noise_ratio_to_db(total)


def block_share_db(report: BlockReport, name: str, default: Precision) -> float:
    """The threshold rule's sensitivity: the progressive ``share_db`` when measured, else the additive share."""
    entry = report.block(name)
    if default.name in entry.share_db:
        return entry.share_db[default.name]
    total = predict_noise_ratio(report, {}, default)
    rest = total - entry.noise_ratio(default)
    return math.inf if rest <= 0 < total else noise_ratio_to_db(rest) - noise_ratio_to_db(total)


def threshold_plan(report: BlockReport, threshold_db: float, high: str | Precision, default: str | Precision) -> Plan:
    """Blocks whose share of the fully quantized model's noise is worth more than ``threshold_db`` get ``high``."""
    default, high = parse_precision(default, "default precision"), parse_precision(high, "plan.high_precision")
    _check_measured(report, [default, high], "the threshold plan")
    shares = {n: block_share_db(report, n, default) for n in report.block_names}
    assignment = {n: (high if shares[n] > threshold_db else default) for n in report.block_names}
    reasons = {n: f"share {shares[n]:.2f} dB {'>' if shares[n] > threshold_db else '<='} threshold {threshold_db} dB"
               for n in report.block_names}
    return _make_plan(report, assignment, "threshold", default, reasons)


def _solve_budget(report: BlockReport, menu: Sequence[Precision], avg_weight_bits: float, avg_act_bits: float,
                  costs: np.ndarray, latency: tuple[np.ndarray, float] | None = None) -> dict[str, Precision] | None:
    """argmin sum(costs[b, o] x[b, o]) s.t. one option per block, the average-bit budgets and, with ``latency``
    ``(ms[b, o], limit)``, sum(ms[b, o] x[b, o]) <= limit; None if infeasible."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    names = report.block_names
    num_blocks, num_options = len(names), len(menu)
    rows, lower, upper = [], [], []
    for b in range(num_blocks):
        row = np.zeros(num_blocks * num_options)
        row[b * num_options:(b + 1) * num_options] = 1.0
        rows.append(row)
        lower.append(1.0)
        upper.append(1.0)
    params = np.array([report.block(n).param_count for n in names], dtype=float)
    acts = np.array([report.block(n).act_elements for n in names], dtype=float)
    for budget, sizes, skipped, bits_of in (
            (avg_weight_bits, params, report.skipped_param_count, Precision.effective_weight_bits),
            (avg_act_bits, acts, report.skipped_act_elements, Precision.effective_act_bits)):
        if not budget:
            continue
        total = sizes.sum() + skipped
        bits = np.array([bits_of(p) for p in menu], dtype=float)
        row = (sizes[:, None] * bits[None, :]).reshape(-1) / total
        rows.append(row)
        lower.append(-np.inf)
        upper.append(budget - FLOAT_BITS * skipped / total + 1e-9)
    if latency is not None:
        milliseconds, limit = latency
        scale = max(float(np.abs(milliseconds).max()), 1e-12)
        rows.append(milliseconds.reshape(-1) / scale)
        lower.append(-np.inf)
        upper.append(limit / scale + 1e-9)
    result = milp(c=costs.reshape(-1), constraints=LinearConstraint(np.array(rows), lower, upper),
                  integrality=np.ones(num_blocks * num_options), bounds=Bounds(0, 1),
                  options={"mip_rel_gap": 0.0, "presolve": True})
    if result.status != 0 or result.x is None:
        return None
    choice = np.asarray(result.x).reshape(num_blocks, num_options).argmax(axis=1)
    return {name: menu[int(o)] for name, o in zip(names, choice)}


def _menu(report: BlockReport, menu: Sequence[str | Precision] | None,
          extra: Sequence[Precision] = ()) -> list[Precision]:
    out = menu_of([*(menu if menu is not None else report.menu), *extra], "plan.menu")
    _check_measured(report, out, "plan.menu")
    return out


def _budget_error(report: BlockReport, menu: Sequence[Precision], avg_weight_bits: float, avg_act_bits: float) -> str:
    low_w = average_bits(report, {n: min(menu, key=lambda p: p.effective_weight_bits()) for n in report.block_names})
    low_a = average_bits(report, {n: min(menu, key=lambda p: p.effective_act_bits()) for n in report.block_names})
    return (f"no per-block plan from menu {', '.join(p.name for p in menu)} fits plan.avg_weight_bits = "
            f"{avg_weight_bits} and plan.avg_act_bits = {avg_act_bits} (the lowest reachable are "
            f"{low_w[0]:.2f} weight bits and {low_a[1]:.2f} act bits): raise the budget or add lower precisions")


def _latency_error(report: BlockReport, menu: Sequence[Precision], table: LatencyTable, max_latency_ratio: float,
                   avg_weight_bits: float, avg_act_bits: float, milliseconds: np.ndarray) -> str:
    """The refusal of an unreachable latency budget, naming the fastest plan the bit budgets allow."""
    fastest = _solve_budget(report, menu, avg_weight_bits, avg_act_bits, milliseconds / milliseconds.max())
    bits = (f" and the bit budgets ({avg_weight_bits or '-'} weight / {avg_act_bits or '-'} act bits)"
            if avg_weight_bits or avg_act_bits else "")
    within = " within the bit budgets" if bits else ""
    return (f"no plan from menu {', '.join(p.name for p in menu)} fits plan.max_latency_ratio = {max_latency_ratio}"
            f"{bits} on {table.target} (the fastest plan{within} is predicted at {table.predict_ratio(fastest):.3f}x "
            f"the float denoiser, of which {table.fixed_ms(report.block_names) / table.fp_ms:.3f}x is work no plan "
            f"changes): raise plan.max_latency_ratio{' or the bit budgets' if bits else ''}")


def budget_plan(report: BlockReport, avg_weight_bits: float, avg_act_bits: float,
                menu: Sequence[str | Precision] | None = None, default: str | Precision | None = None,
                latency_table: LatencyTable | None = None, max_latency_ratio: float = 0.0) -> Plan:
    """Exact maximiser of predicted output SQNR under the average-bit budgets (0 = no budget on that tensor) and,
    with a ``latency_table``, under ``max_latency_ratio`` of the float denoiser's latency in its target.

    One binary per (block, menu option); the objective is the summed isolated noise ratio (normalised, with a
    tie-break of 1e-9 x bits towards cheaper options), the constraints are one option per block, the
    parameter-/element-weighted average bits and the table's predicted milliseconds (``rest_ms`` and layers in no
    block are fixed; each block's option adds its layers' cost at the option's kernel). Solved exactly by
    ``scipy.optimize.milp``.
    """
    default = parse_precision(default or report.default_precision, "default precision")
    options = _menu(report, menu)
    if not avg_weight_bits and not avg_act_bits and not max_latency_ratio:
        raise RecipeError("the budget planner needs plan.avg_weight_bits and/or plan.avg_act_bits > 0, or "
                          "plan.max_latency_ratio with plan.target")
    if max_latency_ratio and latency_table is None:
        raise RecipeError("plan.max_latency_ratio needs the latency table of plan.target: pass latency_table")
    names = report.block_names
    noise = np.array([[report.block(n).noise_ratio(p) for p in options] for n in names])
    scale = noise.max() if noise.max() > 0 else 1.0
    bits = np.array([[p.effective_weight_bits() + p.effective_act_bits() for p in options] for _ in names], float)
    latency = None
    if max_latency_ratio:
        milliseconds = np.array([[latency_table.unit_ms(n, p) for p in options] for n in names])
        latency = (milliseconds, max_latency_ratio * latency_table.fp_ms - latency_table.fixed_ms(names))
    assignment = _solve_budget(report, options, avg_weight_bits, avg_act_bits, noise / scale + 1e-9 * bits / 64.0,
                               latency)
    if assignment is None:
        if max_latency_ratio and _solve_budget(report, options, avg_weight_bits, avg_act_bits, noise) is not None:
            raise RecipeError(_latency_error(report, options, latency_table, max_latency_ratio, avg_weight_bits,
                                             avg_act_bits, latency[0]))
        raise RecipeError(_budget_error(report, options, avg_weight_bits, avg_act_bits))
    reasons = {}
    for n in names:
        chosen = assignment[n]
        alternatives = ", ".join(f"{p.name} {report.block(n).isolated_db.get(p.name, math.inf):.1f} dB"
                                 for p in options if not p.is_float)
        cost = (f"; {latency_table.unit_ms(n, chosen):.3f} ms in {latency_table.target}"
                if latency_table is not None else "")
        reasons[n] = f"budget optimum {chosen.name} (isolated SQNR: {alternatives}{cost})"
    budget = {"avg_weight_bits": float(avg_weight_bits), "avg_act_bits": float(avg_act_bits)}
    if max_latency_ratio:
        budget["max_latency_ratio"] = float(max_latency_ratio)
    return _make_plan(report, assignment, "budget", default, reasons, budget=budget)


def random_budget_plans(report: BlockReport, count: int, avg_weight_bits: float, avg_act_bits: float,
                        menu: Sequence[str | Precision] | None = None, seed: int = 0,
                        default: str | Precision | None = None) -> list[Plan]:
    """``count`` distinct random plans under the same budgets: vertices of the budget polytope picked by random
    objectives (so, like the optimum, they tend to spend the whole budget). Deterministic in ``seed``."""
    default = parse_precision(default or report.default_precision, "default precision")
    options = _menu(report, menu)
    rng = np.random.default_rng(seed)
    plans: list[Plan] = []
    seen: set[tuple[str, ...]] = set()
    for _ in range(count * 20):
        if len(plans) == count:
            break
        costs = rng.random((len(report.block_names), len(options)))
        assignment = _solve_budget(report, options, avg_weight_bits, avg_act_bits, costs)
        if assignment is None:
            raise RecipeError(_budget_error(report, options, avg_weight_bits, avg_act_bits))
        key = tuple(assignment[n].name for n in report.block_names)
        if key in seen:
            continue
        seen.add(key)
        plans.append(_make_plan(report, assignment, "random", default, {n: "random" for n in assignment},
                                budget={"avg_weight_bits": avg_weight_bits, "avg_act_bits": avg_act_bits}))
    return plans


def random_upgrade_plans(report: BlockReport, count: int, avg_weight_bits: float, avg_act_bits: float,
                         high: str | Precision, default: str | Precision | None = None, seed: int = 0) -> list[Plan]:
    """Uniform ``default`` plus ``high`` at random blocks while the budgets allow (the "same extra bits at random
    blocks" baseline). Blocks are visited in a random order; a block is upgraded if the plan stays in budget."""
    default = parse_precision(default or report.default_precision, "default precision")
    high = parse_precision(high, "plan.high_precision")
    _check_measured(report, [default, high], "the random-upgrade baseline")
    rng = np.random.default_rng(seed)
    plans: list[Plan] = []
    draws: list[dict[str, Precision]] = []
    for _ in range(count * 50):
        if len(draws) == count:
            break
        assignment = {n: default for n in report.block_names}
        for index in rng.permutation(len(report.block_names)):
            name = report.block_names[int(index)]
            trial = {**assignment, name: high}
            w, a = average_bits(report, trial)
            if (not avg_weight_bits or w <= avg_weight_bits + 1e-9) and (not avg_act_bits or a <= avg_act_bits + 1e-9):
                assignment = trial
        if assignment not in draws:
            draws.append(assignment)
    while len(draws) < count:  # fewer distinct upgrade sets exist than draws asked for: repeat them in order
        draws.append(draws[len(draws) % max(1, len(draws))])
    for assignment in draws:
        plans.append(_make_plan(report, assignment, "random_upgrade", default,
                                {n: "random upgrade" if p == high else "" for n, p in assignment.items()}))
    return plans


def choose_plan(report: BlockReport, rule: PlanRule, default: str | Precision | None = None,
                latency_table: LatencyTable | None = None) -> Plan:
    """The plan ``rule`` (``recipe.plan``) picks from ``report`` through its registered method
    (:data:`~brevitas_ldm.registry.PLAN_METHODS`); ``default`` is ``recipe.default_precision``.

    With ``rule.target``, ``latency_table`` is that target's table (measured by the job): the method spends
    ``rule.max_latency_ratio`` of it, and the plan carries its predicted latency ratio there."""
    default = parse_precision(default or report.default_precision, "default precision")
    method = PLAN_METHODS.get(rule.method)
    menu = _menu(report, rule.menu, extra=[default, rule.high_precision] if method.adds_rule_precisions else [])
    if latency_table is not None and rule.max_latency_ratio:
        plan = method.choose_under_latency(report, rule, default, menu, latency_table)
    else:
        plan = method.choose(report, rule, default, menu)
    plan.check(report, [*menu, default])
    if latency_table is not None:
        annotate_latency(plan, report, latency_table)
    return plan


def annotate_latency(plan: Plan, report: BlockReport, table: LatencyTable) -> Plan:
    """Set ``plan.target`` and ``plan.predicted_latency_ratio`` from ``table`` (blocks the plan omits at its
    default)."""
    precisions = {name: plan.precisions.get(name, plan.default) for name in report.block_names}
    plan.target = table.target
    plan.predicted_latency_ratio = table.predict_ratio(precisions)
    return plan
