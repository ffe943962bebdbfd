"""Precision planning from a block report: additivity model, planners, the MILP budget solver, plan files."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from brevitas_ldm.analysis.block_report import BlockEntry, BlockReport
from brevitas_ldm.analysis.block_sensitivity import BlockSensitivity
from brevitas_ldm.denoiser.blocks import get_blocks
from brevitas_ldm.denoiser.sampling import SamplingSpec
from brevitas_ldm.errors import RecipeError
from brevitas_ldm.planning.plan import Plan, read_plan
from brevitas_ldm.planning.planners import (
    budget_plan,
    choose_plan,
    random_budget_plans,
    random_upgrade_plans,
    top_k_plan,
)
from brevitas_ldm.planning.prediction import average_bits, predict_sqnr_db
from brevitas_ldm.planning.validation import measure_plan
from brevitas_ldm.precision import FLOAT, parse_precision
from brevitas_ldm.quant.quantize import quantize_denoiser, read_precisions
from brevitas_ldm.recipe import PlanRule, get_recipe
from brevitas_ldm.sqnr import noise_ratio_to_db
from brevitas_ldm.zoo.tiny import tiny_sd_pipeline, tiny_sd_unet

MENU = ["float", "w8a16", "w8a8", "w4a8"]
W8A8, W8A16 = parse_precision("w8a8"), parse_precision("w8a16")


def synthetic_report(num_blocks: int = 4, seed: int = 0, names: list[str] | None = None) -> BlockReport:
    """A report with random sizes and isolated SQNRs ordered as real ones are (more bits, more dB)."""
    rng = np.random.default_rng(seed)
    names = names or [f"block{i}" for i in range(num_blocks)]
    blocks = []
    for name in names:
        w8a8 = float(rng.uniform(20, 50))
        blocks.append(BlockEntry(
            name=name, kind="down", param_count=int(rng.integers(100, 10_000)),
            act_elements=float(rng.integers(100, 10_000)), num_layers=2,
            isolated_db={"w8a16": w8a8 + float(rng.uniform(0, 10)), "w8a8": w8a8,
                         "w4a8": w8a8 - float(rng.uniform(3, 12))}))
    return BlockReport(model="synthetic", recipe="test", default_precision="w8a8", high_precision="w8a16",
                       precisions=MENU, progressive_precisions=[], num_prompts=2, seeds=[0, 1], steps=2,
                       guidance_scale=4.0, blocks=blocks)


def brute_force(report: BlockReport, menu, avg_weight_bits, avg_act_bits):
    best, best_noise = None, math.inf
    for combo in itertools.product(menu, repeat=len(report.blocks)):
        precisions = dict(zip(report.block_names, combo))
        w, a = average_bits(report, precisions)
        if (avg_weight_bits and w > avg_weight_bits + 1e-9) or (avg_act_bits and a > avg_act_bits + 1e-9):
            continue
        noise = sum(report.block(n).noise_ratio(parse_precision(p)) for n, p in precisions.items())
        if noise < best_noise - 1e-15:
            best, best_noise = precisions, noise
    return best, best_noise


def test_additive_prediction_is_sum_of_noise_powers():
    report = synthetic_report()
    uniform = {n: "w8a8" for n in report.block_names}
    expected = sum(10 ** (-report.block(n).isolated_db["w8a8"] / 10) for n in report.block_names)
    assert predict_sqnr_db(report, uniform) == pytest.approx(noise_ratio_to_db(expected), abs=1e-12)
    assert predict_sqnr_db(report, {}) == predict_sqnr_db(report, uniform)  # unlisted blocks at the default
    assert predict_sqnr_db(report, {n: "float" for n in report.block_names}) == math.inf
    # two identical noise sources cost 10 log10(2) = 3.01 dB against one
    one = {n: ("w8a8" if n == "block0" else "float") for n in report.block_names}
    report.block("block1").isolated_db["w8a8"] = report.block("block0").isolated_db["w8a8"]
    two = {**one, "block1": "w8a8"}
    assert predict_sqnr_db(report, one) - predict_sqnr_db(report, two) == pytest.approx(3.0103, abs=1e-4)


def test_average_bits_weighting():
    report = synthetic_report(2)
    p0, p1 = report.blocks[0].param_count, report.blocks[1].param_count
    a0, a1 = report.blocks[0].act_elements, report.blocks[1].act_elements
    w, a = average_bits(report, {"block0": "w4a8", "block1": "float"})
    assert w == pytest.approx((4 * p0 + 32 * p1) / (p0 + p1))
    assert a == pytest.approx((8 * a0 + 32 * a1) / (a0 + a1))
    report.skipped_param_count = p0  # skipped layers count as float
    w, _ = average_bits(report, {"block0": "w4a8", "block1": "w4a8"})
    assert w == pytest.approx((4 * p0 + 4 * p1 + 32 * p0) / (2 * p0 + p1))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("budget", [(6.0, 9.0), (8.0, 0.0), (0.0, 10.0), (10.0, 12.0)])
def test_milp_respects_budget_and_matches_brute_force(seed, budget):
    report = synthetic_report(4, seed)
    avg_w, avg_a = budget
    plan = budget_plan(report, avg_w, avg_a, MENU)
    w, a = average_bits(report, plan.precisions)
    assert plan.avg_weight_bits == pytest.approx(w) and plan.avg_act_bits == pytest.approx(a)
    if avg_w:
        assert w <= avg_w + 1e-9
    if avg_a:
        assert a <= avg_a + 1e-9
    best, best_noise = brute_force(report, MENU, avg_w, avg_a)
    assert best is not None
    assert predict_sqnr_db(report, plan.precisions) == pytest.approx(noise_ratio_to_db(best_noise), abs=1e-9)
    assert plan.predicted_sqnr_db == pytest.approx(noise_ratio_to_db(best_noise), abs=1e-9)


def test_budget_beats_uniform_and_infeasible_budget_is_named():
    report = synthetic_report(6, 1)
    uniform = predict_sqnr_db(report, {})
    w8a8_bits = average_bits(report, {})
    plan = budget_plan(report, w8a8_bits[0], w8a8_bits[1] + 1.0, MENU)
    assert plan.predicted_sqnr_db >= uniform
    with pytest.raises(RecipeError, match="avg_weight_bits = 3.0"):
        budget_plan(report, 3.0, 0.0, MENU)


def test_random_plans_share_the_budget_and_are_distinct():
    report = synthetic_report(6, 2)
    plans = random_budget_plans(report, 5, 7.0, 9.0, MENU, seed=3)
    assert len({tuple(p.precisions.values()) for p in plans}) == 5
    for plan in plans:
        w, a = average_bits(report, plan.precisions)
        assert w <= 7.0 + 1e-9 and a <= 9.0 + 1e-9
    assert [p.precisions for p in plans] == [p.precisions for p in random_budget_plans(report, 5, 7.0, 9.0, MENU,
                                                                                       seed=3)]
    optimum = budget_plan(report, 7.0, 9.0, MENU).predicted_sqnr_db
    assert all(p.predicted_sqnr_db <= optimum + 1e-9 for p in plans)
    upgrades = random_upgrade_plans(report, 3, 0.0, 9.0, "w8a16", seed=0)
    for plan in upgrades:
        assert {str(p) for p in plan.precisions.values()} <= {"w8a8", "w8a16"}
        assert average_bits(report, plan.precisions)[1] <= 9.0 + 1e-9


def test_choose_plan_dispatches_on_method():
    report = synthetic_report(5, 4)
    uniform = choose_plan(report, PlanRule(method="uniform"), "w8a8")
    assert {str(p) for p in uniform.precisions.values()} == {"w8a8"} and uniform.method == "uniform"

    top = choose_plan(report, PlanRule(method="top_k", top_k=2, high_precision="w8a16"), "w8a8")
    gains = {n: report.block(n).noise_ratio(W8A8) - report.block(n).noise_ratio(W8A16) for n in report.block_names}
    assert {n for n, p in top.precisions.items() if str(p) == "w8a16"} == set(sorted(gains, key=gains.get)[-2:])
    least = top_k_plan(report, 2, "w8a16", "w8a8", least=True)
    assert least.predicted_sqnr_db < top.predicted_sqnr_db

    total = sum(report.block(n).noise_ratio(W8A8) for n in report.block_names)
    worst = max(report.block_names, key=lambda n: report.block(n).noise_ratio(W8A8))
    share = -10 * math.log10(1 - report.block(worst).noise_ratio(W8A8) / total)
    threshold = choose_plan(report, PlanRule(method="threshold", threshold_db=share - 1e-6,
                                             high_precision="float"), "w8a8")
    assert threshold.precisions[worst] == FLOAT
    assert "share" in threshold.evidence[worst]["reason"]

    budget = choose_plan(report, PlanRule(method="budget", avg_weight_bits=8.0, avg_act_bits=9.0,
                                          menu=("w8a16", "w8a8")), "w8a8")
    assert {str(p) for p in budget.precisions.values()} <= {"w8a16", "w8a8"} and budget.budget["avg_act_bits"] == 9.0


def test_unknown_names_and_precisions_are_errors():
    report = synthetic_report(3)
    with pytest.raises(RecipeError, match="'blockX'"):
        Plan({"blockX": "w8a8", "block0": "w8a8"}).check(report)
    with pytest.raises(RecipeError, match="block1=w6a6"):
        Plan({"block1": "w6a6"}).check(report)
    with pytest.raises(RecipeError, match="w2a2"):
        choose_plan(report, PlanRule(method="budget", avg_weight_bits=8.0, menu=("w8a8", "w2a2")), "w8a8")
    with pytest.raises(RecipeError, match="precision"):
        Plan({"block0": "eight bits"})
    with pytest.raises(RecipeError, match="top_k = 7"):
        choose_plan(report, PlanRule(method="top_k", top_k=7), "w8a8")


def test_plan_json_round_trip_feeds_quantize_denoiser(tmp_path):
    unet = tiny_sd_unet()
    report = synthetic_report(names=[b.name for b in get_blocks(unet)])
    plan = budget_plan(report, 7.0, 10.0, MENU)
    path = plan.save(tmp_path)
    assert path.name == "plan.json"
    data = json.loads(path.read_text())
    assert data["precisions"] == {b: str(p) for b, p in plan.precisions.items()} and data["method"] == "budget"
    loaded = Plan.load(tmp_path)
    assert loaded.to_dict() == plan.to_dict()
    # a user edit: one block to float; reading it back checks and re-predicts
    data["precisions"]["conv_out"] = "float"
    path.write_text(json.dumps(data))
    edited = read_plan(path, report)
    assert edited.predicted_sqnr_db == pytest.approx(predict_sqnr_db(report, edited.precisions))
    quantize_denoiser(unet, get_recipe("sqnr-hybrid-w8a8"), Plan.load(path).precisions)
    layers = read_precisions(unet)
    for block in get_blocks(tiny_sd_unet()):
        for layer in block.module_names:
            assert layers[layer] == parse_precision(edited.precisions[block.name])
    data["precisions"]["nowhere"] = "w8a8"
    path.write_text(json.dumps(data))
    with pytest.raises(RecipeError, match="'nowhere'"):
        read_plan(path, report)


def test_additivity_prediction_matches_measurement_on_tiny_model():
    torch.set_num_threads(1)
    pipe = tiny_sd_pipeline()
    recipe = get_recipe("sqnr-hybrid-w8a8")
    prompts, seeds = ["a handwritten digit one", "a handwritten digit four"], [0, 1]
    spec = SamplingSpec(num_inference_steps=3, guidance_scale=4.0, batch_size=2)
    analysis = BlockSensitivity(recipe, prompts, seeds, spec, menu=["w8a8", "w4a8"], progressive=[], progress=False)
    report = analysis.run(pipe)
    plans = [{n: "w8a8" for n in report.block_names}, {n: "w4a8" for n in report.block_names},
             *[p.precisions for p in random_budget_plans(report, 2, 6.0, 0.0, ["float", "w8a8", "w4a8"], seed=0)]]
    for precisions in plans:
        measured = measure_plan(pipe, recipe, precisions, bank=analysis.bank, reference=analysis.reference)
        assert abs(predict_sqnr_db(report, precisions) - measured) < 1.5, precisions
