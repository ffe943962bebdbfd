"""Global (block-level) SQNR analysis on a tiny random-weight StableDiffusionPipeline."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from plain_single_step import plain_single_step

from brevitas_ldm.analysis.block_report import BlockReport
from brevitas_ldm.analysis.block_sensitivity import BlockSensitivity
from brevitas_ldm.denoiser.blocks import get_blocks
from brevitas_ldm.denoiser.sampling import (
    CallCounter,
    SamplingSpec,
    generate,
    get_denoiser,
)
from brevitas_ldm.denoiser.trajectory import fp_reference, measure
from brevitas_ldm.errors import BrevitasLDMError, RecipeError
from brevitas_ldm.planning.validation import measure_plan
from brevitas_ldm.precision import Precision
from brevitas_ldm.quant.calibration import single_step_calibration
from brevitas_ldm.quant.precision_bank import PrecisionBank
from brevitas_ldm.quant.quantize import quantize_denoiser
from brevitas_ldm.sqnr import sqnr_db
from brevitas_ldm.zoo.tiny import tiny_sd_pipeline

PROMPTS = ["a handwritten digit seven", "a handwritten digit two"]
SEEDS = [3, 11]
SPEC = SamplingSpec(num_inference_steps=2, guidance_scale=4.0, batch_size=2)
RECIPE = plain_single_step()  # single-step calibration, W8A8 base


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return tiny_sd_pipeline()


@pytest.fixture(scope="module")
def analysed(pipe, tmp_path_factory):
    cache = tmp_path_factory.mktemp("global-cache")
    analysis = BlockSensitivity(RECIPE, PROMPTS, SEEDS, SPEC, menu=["w8a8", "w4a8"], progress=False)
    report = analysis.run(pipe, cache_dir=cache)
    return analysis, report, cache


def _quantized_latents(pipe, precisions=None) -> torch.Tensor:
    """The reference path: quantize a copy with quantize_denoiser, calibrate it as the recipe says, sample."""
    original = pipe.unet
    quantized = quantize_denoiser(copy.deepcopy(original), RECIPE, precisions)
    pipe.unet = quantized
    try:
        calibration_spec = SamplingSpec(SPEC.num_inference_steps, SPEC.guidance_scale, RECIPE.calibration.batch_size)
        with single_step_calibration(quantized, num_train_timesteps=pipe.scheduler.config.num_train_timesteps):
            generate(pipe, PROMPTS, SEEDS, calibration_spec)
        return generate(pipe, PROMPTS, SEEDS, SPEC)
    finally:
        pipe.unet = original


def test_hooks_do_not_change_fp_outputs(pipe, analysed):
    plain = generate(pipe, PROMPTS, SEEDS, SPEC)
    reference = fp_reference(pipe, PROMPTS, SEEDS, SPEC)
    assert torch.equal(plain, reference.latents)
    # the FP model is intact after the analysis swapped quant layers in and out
    analysis, _, _ = analysed
    assert torch.equal(plain, analysis.reference.latents)
    assert not any("Quant" in type(m).__name__ for m in pipe.unet.modules())
    # one stored output per (run, step): 1 batch x 2 steps
    assert sorted(reference.outputs) == [(0, 0), (0, 1)]
    assert reference.calls == 2


def test_empty_prefix_is_lossless(pipe, analysed):
    analysis, _, _ = analysed
    result = measure(pipe, analysis.reference, analysis.bank, {})
    assert result.final_db == math.inf
    assert result.steps_db == [math.inf, math.inf]


def test_full_prefix_equals_fully_quantized_model(pipe, analysed):
    analysis, report, _ = analysed
    expected = sqnr_db(analysis.reference.latents, _quantized_latents(pipe))
    assert math.isfinite(expected)
    assert report.full_db["w8a8"] == pytest.approx(expected, abs=1e-3)
    assert report.blocks[-1].progressive_db["w8a8"] == report.full_db["w8a8"]


def test_mixed_plan_through_bank_equals_quantize_denoiser(pipe, analysed):
    analysis, report, _ = analysed
    plan = {name: "w8a8" for name in report.block_names}
    plan.update({"down_blocks.0": "w4a8", "conv_out": "float"})
    expected = sqnr_db(analysis.reference.latents, _quantized_latents(pipe, plan))
    measured = measure_plan(pipe, RECIPE, plan, bank=analysis.bank, reference=analysis.reference)
    assert measured == pytest.approx(expected, abs=1e-3)


def test_isolated_sqnr_is_finite_and_per_step(analysed):
    _, report, _ = analysed
    assert report.block_names == [b.name for b in get_blocks(tiny_sd_pipeline().unet)]
    for entry in report.blocks:
        for precision in ("w8a8", "w4a8"):
            assert math.isfinite(entry.isolated_db[precision]) and entry.isolated_db[precision] > 0
            assert len(entry.isolated_steps_db[precision]) == 2
        # 4-bit weights cannot be better than 8-bit ones by much (same activations)
        assert entry.isolated_db["w4a8"] < entry.isolated_db["w8a8"] + 1.0
        assert entry.param_count > 0 and entry.act_elements > 0
    # the first progressive prefix is the first block alone
    first = report.blocks[0]
    assert first.progressive_db["w8a8"] == first.isolated_db["w8a8"]
    assert first.progressive_drop_db["w8a8"] == math.inf


def test_counts_and_timing(analysed):
    _, report, _ = analysed
    blocks = len(report.blocks)
    calls = report.denoiser_calls
    assert calls["fp_reference"] == 2
    assert calls["isolated"] == 2 * blocks * 2           # 2 precisions x blocks x 2 steps (1 batch)
    assert calls["progressive"] == (blocks - 1) * 2      # prefix of 1 block reused from the isolated run
    assert calls["calibration"] == 2                     # single step: 1 call per precision
    assert calls["total"] == sum(v for k, v in calls.items() if k != "total")
    assert report.timing_s["total"] > 0
    # The plan of work printed before a job is the count the analysis itself makes.
    analysis, _, _ = analysed
    assert analysis.planned_calls(blocks) == calls


def test_report_round_trip_markdown_and_figures(analysed, tmp_path):
    _, report, _ = analysed
    report.save(tmp_path)
    assert (tmp_path / "global_progressive_sqnr.png").stat().st_size > 1000
    assert (tmp_path / "global_isolated_heatmap.png").stat().st_size > 1000
    data = json.loads((tmp_path / "block_report.json").read_text())  # strict JSON: no Infinity tokens
    assert data["blocks"][0]["progressive_drop_db"]["w8a8"] == "inf"
    loaded = BlockReport.load(tmp_path)
    assert loaded.to_dict() == report.to_dict()
    table = report.to_markdown()
    assert all(f"| {name} |" in table for name in report.block_names)
    assert report.ranking()[0] == min(report.block_names, key=lambda n: report.block(n).isolated_db["w8a8"])


def test_added_noise_shares_show_every_blocks_contribution(analysed, tmp_path):
    _, report, _ = analysed
    shares = report.added_noise_shares(Precision(8, 8))
    assert list(shares) == report.block_names
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-9)       # the increments add up to the full noise
    first = report.block_names[0]
    # The first block's share is its noise alone: 10^(-SQNR_first/10) / 10^(-SQNR_full/10).
    full_db = report.block(report.block_names[-1]).progressive_db["w8a8"]
    assert shares[first] == pytest.approx(10 ** ((full_db - report.block(first).progressive_db["w8a8"]) / 10))
    # A later block whose total SQNR barely moves still shows the noise power it adds.
    later = report.block_names[1:]
    assert any(abs(report.block(n).progressive_drop_db["w8a8"]) < 1.0 and shares[n] > 0.01 for n in later)
    assert report.added_noise_shares(Precision(4, 8)) == {}                    # no progressive sweep at that precision
    report.save(tmp_path)
    assert (tmp_path / "global_added_noise.png").stat().st_size > 1000


def test_cached_rerun_is_fast_and_identical(pipe, analysed):
    _, report, cache = analysed
    with CallCounter(get_denoiser(pipe)) as calls:
        again = BlockSensitivity(RECIPE, PROMPTS, SEEDS, SPEC, menu=["w8a8", "w4a8"], progress=False).run(pipe, cache)
    assert calls.count == 0                      # nothing sampled: the cache answered
    assert again.from_cache and "cache_load" in again.timing_s
    assert {**again.to_dict(), "timing_s": None} == {**report.to_dict(), "timing_s": None}
    # a different budget is not part of the key; different seeds are
    budget = RECIPE.replace(plan=RECIPE.plan.__class__(method="budget", avg_weight_bits=6.0))
    same = BlockSensitivity(budget, PROMPTS, SEEDS, SPEC, menu=["w8a8", "w4a8"], progress=False)
    other = BlockSensitivity(RECIPE, PROMPTS, [5, 6], SPEC, menu=["w8a8", "w4a8"], progress=False)
    assert same.cache_key(pipe) == report.cache_key != other.cache_key(pipe)


def test_bank_restores_fp_layers_on_error(pipe):
    bank = PrecisionBank(pipe, RECIPE, PROMPTS, SEEDS, SPEC).ensure(["w8a8"])
    before = dict(pipe.unet.named_modules())["conv_in"]
    with pytest.raises(RuntimeError):
        with bank.configured(bank.layer_precisions({"conv_in": "w8a8"})):
            assert "Quant" in type(pipe.unet.conv_in).__name__
            raise RuntimeError("boom")
    assert pipe.unet.conv_in is before
    with pytest.raises(RecipeError, match="nonexistent_block"):
        bank.layer_precisions({"nonexistent_block": "w8a8"})
    with pytest.raises(BrevitasLDMError, match="w4a8"):
        with bank.configured(bank.layer_precisions({"conv_in": "w4a8"})):
            pass


def test_bad_inputs():
    with pytest.raises(BrevitasLDMError, match="seed"):
        BlockSensitivity(RECIPE, PROMPTS, [1], SPEC)
    with pytest.raises(RecipeError, match="menu"):
        BlockSensitivity(RECIPE, PROMPTS, SEEDS, SPEC, menu=["w8x"])
