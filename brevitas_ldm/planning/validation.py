"""Applying a plan through a precision bank and measuring it: the check that the additivity prediction holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from brevitas_ldm.analysis.block_report import BlockReport
from brevitas_ldm.denoiser.sampling import Condition, SamplingSpec
from brevitas_ldm.denoiser.trajectory import FPReference, fp_reference, measure
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.planning.planners import random_budget_plans
from brevitas_ldm.planning.prediction import average_bits, predict_sqnr_db
from brevitas_ldm.quant.precision_bank import PrecisionBank
from brevitas_ldm.recipe import Recipe


def _plan_precisions(plan: Any) -> dict[str, str]:
    precisions = getattr(plan, "precisions", plan)
    if not isinstance(precisions, Mapping):
        raise BrevitasLDMError("a plan is a Plan or a mapping block name -> precision string")
    return dict(precisions)


def _reference_and_bank(pipe: Any, recipe: Recipe, prompts: Sequence[Condition] | None,
                        seeds: Sequence[int] | None, spec: SamplingSpec | None, bank: "PrecisionBank | None",
                        reference: "FPReference | None", caller: str) -> tuple["FPReference", "PrecisionBank"]:
    """The FP run and calibrated copies a measurement needs: the given ones, or built from prompts/seeds."""
    if reference is None:
        if prompts is None or seeds is None:
            raise BrevitasLDMError(f"{caller} needs prompts and seeds, or an FPReference")
        reference = fp_reference(pipe, prompts, seeds, spec or SamplingSpec())
    if bank is None:
        bank = PrecisionBank(pipe, recipe, reference.conditions, reference.seeds, reference.spec)
    return reference, bank


def measure_plan(pipe: Any, recipe: Recipe, plan: Any, prompts: Sequence[Condition] | None = None,
                 seeds: Sequence[int] | None = None, spec: SamplingSpec | None = None,
                 bank: PrecisionBank | None = None, reference: FPReference | None = None) -> float:
    """Measured final-latent SQNR (dB) of ``plan`` (a Plan or block -> precision mapping) against FP.

    The plan is applied through the per-precision calibrated copies of ``bank`` (built and calibrated on
    ``prompts``/``seeds`` when not given); pass ``reference`` to reuse an FP run.
    """
    reference, bank = _reference_and_bank(pipe, recipe, prompts, seeds, spec, bank, reference, "measure_plan")
    block_precisions = _plan_precisions(plan)
    layers = bank.layer_precisions(block_precisions)
    bank.ensure(sorted({p for p in layers.values()}, key=str))
    return measure(pipe, reference, bank, layers).final_db


def validate_plan(pipe: Any, recipe: Recipe, report: BlockReport, plan: Any, num_random: int = 5, seed: int = 0,
                  prompts: Sequence[Condition] | None = None, seeds: Sequence[int] | None = None,
                  spec: SamplingSpec | None = None, bank: PrecisionBank | None = None,
                  reference: FPReference | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """Predicted vs measured output SQNR for ``plan`` and ``num_random`` random plans at the same budget.

    Random plans are drawn by :func:`brevitas_ldm.planning.planners.random_budget_plans` under the plan's budget (a
    budget plan's ``plan.budget``, otherwise the average weight and activation bits the plan uses). Returns one row per
    plan: name, precisions, avg bits, predicted/measured dB, error.
    """

    reference, bank = _reference_and_bank(pipe, recipe, prompts, seeds, spec, bank, reference, "validate_plan")
    chosen = _plan_precisions(plan)
    weight_bits, act_bits = average_bits(report, chosen)
    budget = getattr(plan, "budget", None) or {}
    if budget:  # a budget plan: random plans get the same budget, not just what the optimum happened to spend
        weight_bits, act_bits = budget.get("avg_weight_bits", 0.0), budget.get("avg_act_bits", 0.0)
    menu = sorted({*chosen.values()} | set(report.menu), key=str)
    candidates = [("plan", chosen)]
    randoms = random_budget_plans(report, num_random, avg_weight_bits=weight_bits, avg_act_bits=act_bits,
                                  menu=menu, seed=seed)
    candidates += [(f"random {i + 1}", p.precisions) for i, p in enumerate(randoms)]
    rows = []
    for name, precisions in tqdm(candidates, desc="validate plan", disable=not progress, leave=False):
        predicted = predict_sqnr_db(report, precisions)
        measured = measure_plan(pipe, recipe, precisions, bank=bank, reference=reference)
        w, a = average_bits(report, precisions)
        rows.append({"name": name, "precisions": dict(precisions), "avg_weight_bits": w, "avg_act_bits": a,
                     "predicted_db": predicted, "measured_db": measured, "error_db": predicted - measured})
    return rows
