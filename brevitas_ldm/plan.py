"""From a global block report to a per-block precision plan.

**Noise-additivity model.** Let ``n_b(p)`` be the output noise-to-signal power ratio measured with block ``b``
alone quantized at precision ``p`` (``10^(-SQNR_dB/10)``). A configuration's output noise ratio is predicted as

    N(config) = sum_b n_b(p_b),        SQNR(config) = -10 log10 N(config).

Why it holds: quantization noise is small next to the signal, so the sampler's output responds to it almost
linearly; the noise each block injects is a (nearly) zero-mean error from rounding its own weights and inputs, so
the contributions of different blocks are close to uncorrelated, and the powers of uncorrelated errors add. The
model breaks when noise is large (non-linear response; it becomes optimistic) or when blocks' errors correlate
(e.g. shared biases of the same sign). The benchmark (``docs/global-analysis.md``) and the tests report its error
against measurement. It is exactly what the budget planner needs: minimising the predicted noise is a sum over
blocks, so the exact optimum is a small integer program, solved with ``scipy.optimize.milp`` (HiGHS).

Planners (``recipe.plan.method``): ``uniform`` (every block at the recipe's base precision), ``threshold``
(blocks whose progressive ``share_db`` exceeds ``threshold_db`` go to ``high_precision``), ``top_k`` (the ``k``
blocks whose move to ``high_precision`` removes the most predicted noise), ``budget`` (maximise predicted SQNR
under average weight/activation-bit budgets, weighted by parameter count and activation elements). A :class:`Plan`
is plain JSON the user may edit and feed back: ``Plan.load(path).precisions`` goes straight into
``quantize_denoiser(denoiser, recipe, precisions=...)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brevitas_ldm.errors import RecipeError
from brevitas_ldm.io import read_json_file
from brevitas_ldm.precision import FLOAT_BITS, Precision, parse_precision
from brevitas_ldm.recipe import PlanRule
from brevitas_ldm.sensitivity.global_ import BlockReport, write_atomic
from brevitas_ldm.sqnr import noise_ratio_to_db

PLAN_FILE = "plan.json"
PrecisionsLike = Mapping[str, str | Precision]


# ---------------------------------------------------------------------------------------------------------------
# Prediction and accounting
# ---------------------------------------------------------------------------------------------------------------
def _full_assignment(report: BlockReport, precisions: PrecisionsLike,
                     default: str | Precision | None = None) -> dict[str, Precision]:
    """Every block's precision: listed ones as given, the rest at ``default`` (the report's base precision)."""
    unknown = [name for name in precisions if name not in report.block_names]
    if unknown:
        raise RecipeError(f"plan names unknown blocks {', '.join(map(repr, unknown))}: the model's blocks are "
                          f"{', '.join(report.block_names)}")
    base = parse_precision(default or report.default_precision, "default precision")
    return {name: parse_precision(precisions.get(name, base), f"precision of {name!r}") for name in report.block_names}


def predict_noise_ratio(report: BlockReport, precisions: PrecisionsLike, default: str | None = None) -> float:
    """Predicted output noise-to-signal ratio: the sum of the blocks' isolated noise ratios."""
    assignment = _full_assignment(report, precisions, default)
    return math.fsum(report.block(name).noise_ratio(p) for name, p in assignment.items())


def predict_sqnr_db(report: BlockReport, precisions: PrecisionsLike, default: str | None = None) -> float:
    """Predicted final-latent SQNR (dB) of a per-block configuration (unlisted blocks at the base precision)."""
    return noise_ratio_to_db(predict_noise_ratio(report, precisions, default))


def average_bits(report: BlockReport, precisions: PrecisionsLike, default: str | None = None) -> tuple[float, float]:
    """(average weight bits weighted by parameter count, average activation bits weighted by input elements).

    Float costs 32 bits; layers the recipe skips count as float.
    """
    assignment = _full_assignment(report, precisions, default)
    params = [report.block(n).param_count for n in assignment]
    acts = [report.block(n).act_elements for n in assignment]
    weight = sum(c * p.effective_weight_bits() for c, p in zip(params, assignment.values()))
    act = sum(c * p.effective_act_bits() for c, p in zip(acts, assignment.values()))
    weight += FLOAT_BITS * report.skipped_param_count
    act += FLOAT_BITS * report.skipped_act_elements
    total_params = sum(params) + report.skipped_param_count
    total_acts = sum(acts) + report.skipped_act_elements
    return (weight / total_params if total_params else 0.0, act / total_acts if total_acts else 0.0)


# ---------------------------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """Which precision each block gets, how it was chosen, and the SQNR figures behind each choice.

    ``precisions`` maps block names to precision strings (``"w8a8"``, ``"w8a16"``, ``"float"``); blocks that are
    not listed get the recipe's base precision, as in :func:`brevitas_ldm.quantize.quantize_denoiser`.
    ``evidence[block]`` holds the block's isolated SQNR per precision, its progressive drop/share and a one-line
    reason.
    """

    precisions: dict[str, str]
    method: str = "manual"
    default: str = "w8a8"
    predicted_sqnr_db: float = math.nan
    avg_weight_bits: float = math.nan
    avg_act_bits: float = math.nan
    budget: dict[str, float] = field(default_factory=dict)
    evidence: dict[str, dict[str, Any]] = field(default_factory=dict)
    measured_sqnr_db: float | None = None
    model: str = ""
    recipe: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.precisions, Mapping):
            raise RecipeError("plan precisions must be a table block name -> precision string")
        self.precisions = {str(k): parse_precision(v, f"plan precision of {k!r}").name
                           for k, v in self.precisions.items()}
        self.default = parse_precision(self.default, "plan default").name

    # -- checks ----------------------------------------------------------------------------------------------
    def check(self, report: BlockReport, menu: Sequence[str | Precision] | None = None) -> "Plan":
        """Raise RecipeError naming any block the model lacks or any precision outside ``menu``."""
        unknown = [name for name in self.precisions if name not in report.block_names]
        if unknown:
            raise RecipeError(f"plan names unknown blocks {', '.join(map(repr, unknown))}: the model's blocks are "
                              f"{', '.join(report.block_names)}")
        allowed = {parse_precision(p, "menu").name for p in (menu if menu is not None else report.menu)}
        allowed.add(self.default)
        outside = sorted({f"{b}={p}" for b, p in self.precisions.items() if p not in allowed})
        if outside:
            raise RecipeError(f"plan uses precisions outside the menu ({', '.join(outside)}): choose from "
                              f"{', '.join(sorted(allowed))} or add them to plan.menu and rerun the analysis")
        return self

    def refresh(self, report: BlockReport) -> "Plan":
        """Recompute the predicted SQNR, average bits and evidence (e.g. after editing the JSON by hand)."""
        self.check(report)
        self.predicted_sqnr_db = predict_sqnr_db(report, self.precisions, self.default)
        self.avg_weight_bits, self.avg_act_bits = average_bits(report, self.precisions, self.default)
        for name in report.block_names:
            self.evidence.setdefault(name, _evidence(report, name, "set by hand"))
        return self

    # -- persistence -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("predicted_sqnr_db", "avg_weight_bits", "avg_act_bits", "measured_sqnr_db"):
            value = data[key]
            if isinstance(value, float) and not math.isfinite(value):
                data[key] = None if math.isnan(value) else ("inf" if value > 0 else "-inf")
        data["evidence"] = _json_safe(data["evidence"])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "plan") -> "Plan":
        if not isinstance(data, Mapping) or "precisions" not in data:
            raise RecipeError(f"{source} is not a plan: it needs a \"precisions\" table block -> precision")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecipeError(f"{source}: unknown plan keys {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        values = dict(data)
        for key in ("predicted_sqnr_db", "avg_weight_bits", "avg_act_bits"):
            values[key] = math.nan if values.get(key) is None else float(values[key])
        if values.get("measured_sqnr_db") is not None:
            values["measured_sqnr_db"] = float(values["measured_sqnr_db"])
        return cls(**values)

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON (atomically); a folder gets ``plan.json`` inside it."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / PLAN_FILE
        write_atomic(path, (json.dumps(self.to_dict(), indent=1) + "\n").encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        path, data = read_json_file(path, PLAN_FILE, "plan", "pass a plan.json written by brevitas-ldm (or its folder)",
                                    "fix the edit or rerun the planner", RecipeError)
        return cls.from_dict(data, source=str(path))

    def to_markdown(self) -> str:
        lines = [f"Plan ({self.method}): predicted output SQNR {self.predicted_sqnr_db:.2f} dB, "
                 f"avg weight bits {self.avg_weight_bits:.2f}, avg act bits {self.avg_act_bits:.2f}", "",
                 "| block | precision | reason |", "|---|---|---|"]
        for name, precision in self.precisions.items():
            lines.append(f"| {name} | {precision} | {self.evidence.get(name, {}).get('reason', '')} |")
        return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def _evidence(report: BlockReport, name: str, reason: str) -> dict[str, Any]:
    entry = report.block(name)
    default = report.default_precision
    return {"isolated_db": dict(entry.isolated_db), "progressive_db": entry.progressive_db.get(default),
            "progressive_drop_db": entry.progressive_drop_db.get(default), "share_db": entry.share_db.get(default),
            "param_count": entry.param_count, "act_elements": entry.act_elements, "reason": reason}


def _make_plan(report: BlockReport, assignment: Mapping[str, Precision], method: str, default: Precision,
               reasons: Mapping[str, str], budget: Mapping[str, float] | None = None) -> Plan:
    precisions = {name: assignment[name].name for name in report.block_names}
    plan = Plan(precisions=precisions, method=method, default=default.name, budget=dict(budget or {}),
                evidence={n: _evidence(report, n, reasons.get(n, "")) for n in report.block_names},
                model=report.model, recipe=report.recipe)
    plan.predicted_sqnr_db = predict_sqnr_db(report, precisions, default.name)
    plan.avg_weight_bits, plan.avg_act_bits = average_bits(report, precisions, default.name)
    return plan


# ---------------------------------------------------------------------------------------------------------------
# Planners
# ---------------------------------------------------------------------------------------------------------------
def _check_measured(report: BlockReport, precisions: Sequence[Precision], what: str) -> None:
    missing = [p.name for p in precisions if not p.is_float and p.name not in report.precisions]
    if missing:
        raise RecipeError(f"{what} uses {', '.join(missing)}, which the global analysis did not measure "
                          f"(it has {', '.join(report.precisions) or 'none'}): add them to plan.menu and rerun "
                          f"the analysis")


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
    total = predict_noise_ratio(report, {}, default.name)
    after = total - upgrade_gain(report, name, default, high)
    return noise_ratio_to_db(after) - noise_ratio_to_db(total)


def block_share_db(report: BlockReport, name: str, default: Precision) -> float:
    """The threshold rule's sensitivity: the progressive ``share_db`` when measured, else the additive share."""
    entry = report.block(name)
    if default.name in entry.share_db:
        return entry.share_db[default.name]
    total = predict_noise_ratio(report, {}, default.name)
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
                  costs: np.ndarray) -> dict[str, Precision] | None:
    """argmin sum(costs[b, o] x[b, o]) s.t. one option per block and the average-bit budgets; None if infeasible."""
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
    result = milp(c=costs.reshape(-1), constraints=LinearConstraint(np.array(rows), lower, upper),
                  integrality=np.ones(num_blocks * num_options), bounds=Bounds(0, 1),
                  options={"mip_rel_gap": 0.0, "presolve": True})
    if result.status != 0 or result.x is None:
        return None
    choice = np.asarray(result.x).reshape(num_blocks, num_options).argmax(axis=1)
    return {name: menu[int(o)] for name, o in zip(names, choice)}


def _menu(report: BlockReport, menu: Sequence[str | Precision] | None, extra: Sequence[Precision] = ()) -> list[Precision]:
    items = [parse_precision(p, "plan.menu") for p in (menu if menu is not None else report.menu)]
    out: list[Precision] = []
    for p in [*items, *extra]:
        if p not in out:
            out.append(p)
    _check_measured(report, out, "plan.menu")
    return out


def _budget_error(report: BlockReport, menu: Sequence[Precision], avg_weight_bits: float, avg_act_bits: float) -> str:
    low_w = average_bits(report, {n: min(menu, key=lambda p: p.effective_weight_bits()) for n in report.block_names})
    low_a = average_bits(report, {n: min(menu, key=lambda p: p.effective_act_bits()) for n in report.block_names})
    return (f"no per-block plan from menu {', '.join(p.name for p in menu)} fits plan.avg_weight_bits = "
            f"{avg_weight_bits} and plan.avg_act_bits = {avg_act_bits} (the lowest reachable are "
            f"{low_w[0]:.2f} weight bits and {low_a[1]:.2f} act bits): raise the budget or add lower precisions")


def budget_plan(report: BlockReport, avg_weight_bits: float, avg_act_bits: float,
                menu: Sequence[str | Precision] | None = None, default: str | Precision | None = None) -> Plan:
    """Exact maximiser of predicted output SQNR under the average-bit budgets (0 = no budget on that tensor).

    One binary per (block, menu option); the objective is the summed isolated noise ratio (normalised, with a
    tie-break of 1e-9 x bits towards cheaper options), the constraints are one option per block and the
    parameter-/element-weighted average bits. Solved exactly by ``scipy.optimize.milp``.
    """
    default = parse_precision(default or report.default_precision, "default precision")
    options = _menu(report, menu)
    if not avg_weight_bits and not avg_act_bits:
        raise RecipeError("the budget planner needs plan.avg_weight_bits and/or plan.avg_act_bits > 0")
    names = report.block_names
    noise = np.array([[report.block(n).noise_ratio(p) for p in options] for n in names])
    scale = noise.max() if noise.max() > 0 else 1.0
    bits = np.array([[p.effective_weight_bits() + p.effective_act_bits() for p in options] for _ in names], float)
    assignment = _solve_budget(report, options, avg_weight_bits, avg_act_bits, noise / scale + 1e-9 * bits / 64.0)
    if assignment is None:
        raise RecipeError(_budget_error(report, options, avg_weight_bits, avg_act_bits))
    reasons = {}
    for n in names:
        chosen = assignment[n]
        alternatives = ", ".join(f"{p.name} {report.block(n).isolated_db.get(p.name, math.inf):.1f} dB"
                                 for p in options if not p.is_float)
        reasons[n] = f"budget optimum {chosen.name} (isolated SQNR: {alternatives})"
    return _make_plan(report, assignment, "budget", default, reasons,
                      budget={"avg_weight_bits": float(avg_weight_bits), "avg_act_bits": float(avg_act_bits)})


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


def choose_plan(report: BlockReport, rule: PlanRule, default: str | Precision | None = None) -> Plan:
    """The plan ``rule`` (``recipe.plan``) picks from ``report``; ``default`` is ``recipe.default_precision``."""
    default = parse_precision(default or report.default_precision, "default precision")
    high = rule.high_precision_value
    menu = _menu(report, rule.menu, extra=[default, high] if rule.method != "budget" else [])
    if rule.method == "uniform":
        plan = uniform_plan(report, default)
    elif rule.method == "threshold":
        plan = threshold_plan(report, float(rule.threshold_db), high, default)
    elif rule.method == "top_k":
        if rule.top_k > len(report.block_names):
            raise RecipeError(f"plan.top_k = {rule.top_k} exceeds the model's {len(report.block_names)} blocks")
        plan = top_k_plan(report, rule.top_k, high, default)
    elif rule.method == "budget":
        plan = budget_plan(report, rule.avg_weight_bits, rule.avg_act_bits, menu, default)
    else:  # PlanRule.validate() makes this unreachable
        raise RecipeError(f"plan.method = {rule.method!r} is not a planner: use uniform, threshold, top_k or budget")
    return plan.check(report, [*menu, default])


def read_plan(path: str | Path, report: BlockReport | None = None, menu: Sequence[str] | None = None) -> Plan:
    """Load a (possibly hand-edited) plan; with a report, check it and refresh its predictions."""
    plan = Plan.load(path)
    if report is not None:
        plan.check(report, menu)
        plan.refresh(report)
    return plan


__all__ = ["Plan", "average_bits", "block_share_db", "budget_plan", "choose_plan", "predict_noise_ratio",
           "predict_sqnr_db", "random_budget_plans", "random_upgrade_plans", "read_plan", "threshold_plan",
           "top_k_plan", "uniform_plan", "upgrade_gain"]
