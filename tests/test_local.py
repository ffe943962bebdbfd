"""Local (module-level) SQNR analysis: one FP pass, exact agreement with quantizing one layer at a time."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from plain_single_step import plain_single_step

from brevitas_ldm.analysis.layer_report import LayerReport, select_for_smoothing
from brevitas_ldm.analysis.layer_sensitivity import LayerSensitivity
from brevitas_ldm.denoiser.blocks import quantizable_layers
from brevitas_ldm.denoiser.layer_categories import CATEGORIES, layer_category
from brevitas_ldm.denoiser.sampling import (
    SamplingSpec,
    denoiser_step_hook,
    generate,
    pipeline_denoiser,
)
from brevitas_ldm.errors import BrevitasLDMError, RecipeError
from brevitas_ldm.quant.calibration import recipe_calibration
from brevitas_ldm.quant.quantize import quantize_denoiser
from brevitas_ldm.sqnr import SQNRMeter
from brevitas_ldm.zoo.tiny import tiny_dit, tiny_sd_pipeline, tiny_sd_unet

PROMPTS = ["a handwritten digit seven", "a handwritten digit one", "a handwritten digit three",
           "a handwritten digit zero"]
SEEDS = [0, 1, 2, 3]
SPEC = SamplingSpec(num_inference_steps=3, guidance_scale=4.0, batch_size=2)  # 2 batches x 3 steps
RECIPE = plain_single_step()  # single-step calibration
PLAN = {"conv_in": "w8", "conv_out": "float"}  # a weight-only layer and a float layer besides the default w8a8


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd_pipeline()


@pytest.fixture(scope="module")
def analysis(pipe):
    """The report plus the number of FP denoiser forwards counted independently during the analysis."""
    unet = pipe.unet
    counted = {"n": 0}

    def hook(module, args):
        counted["n"] += module is unet

    handle = unet.register_forward_pre_hook(hook)
    try:
        report = LayerSensitivity(RECIPE, PROMPTS, SEEDS, SPEC, precisions=PLAN, progress=False).run(pipe)
    finally:
        handle.remove()
    return report, counted["n"]


def test_one_fp_denoiser_call_per_step_and_batch(analysis, pipe):
    report, fp_calls = analysis
    batches = math.ceil(len(PROMPTS) / SPEC.batch_size)
    # all 82 quantized layers measured from 3 steps x 2 batches = 6 FP calls; calibration: 1 call per batch
    assert report.denoiser_calls == {"calibration": batches, "analysis": SPEC.num_inference_steps * batches}
    planned = LayerSensitivity(RECIPE, PROMPTS, SEEDS, SPEC, precisions=PLAN, progress=False).planned_calls()
    assert planned == report.denoiser_calls
    assert fp_calls == 6  # the float denoiser itself ran exactly once per step and batch
    assert len(report.modules) == len(quantizable_layers(pipe.unet)) - 1 == 82  # conv_out stays float
    assert len(report.timesteps) == 3 and report.timesteps == sorted(report.timesteps, reverse=True)
    assert all(len(e.step_sqnr_db) == 3 for e in report.modules)


def _fp_calls(pipe):
    """(args, kwargs) of every FP denoiser call of the analysis run, with its step."""
    calls = []
    with denoiser_step_hook(pipe.unet, lambda step, t, args, kwargs, out: calls.append((step, args, kwargs))):
        generate(pipe, PROMPTS, SEEDS, SPEC)
    return calls


@pytest.mark.parametrize("name", ["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
                                  "up_blocks.1.resnets.1.conv_shortcut", "time_embedding.linear_1"])
def test_matches_brute_force_single_layer_quantization(analysis, pipe, name):
    """Quantize only ``name`` (others float), calibrate it the same way, replay every FP denoiser input."""
    report, _ = analysis
    unet = pipe.unet
    others = {n: "float" for n, _ in quantizable_layers(unet) if n != name}  # `name` keeps the recipe's w8a8
    single = quantize_denoiser(copy.deepcopy(unet), RECIPE, others).eval()
    with pipeline_denoiser(pipe, single), recipe_calibration(single, RECIPE, SPEC.num_inference_steps):
        generate(pipe, PROMPTS, SEEDS, SPEC)
    meters: dict[int, SQNRMeter] = {}
    calls = _fp_calls(pipe)
    fp_layer, q_layer = unet.get_submodule(name), single.get_submodule(name)
    with torch.no_grad():
        for step, args, kwargs in calls:
            seen = {}
            handles = [fp_layer.register_forward_hook(lambda m, a, o: seen.__setitem__("fp", o)),
                       q_layer.register_forward_hook(lambda m, a, o: seen.__setitem__("q", o))]
            unet(*args, **kwargs)
            single(*args, **kwargs)  # the same denoiser input: only `name` is quantized, so it gets its FP input
            for h in handles:
                h.remove()
            meters.setdefault(step, SQNRMeter()).update(seen["fp"], seen["q"])
    entry = report[name]
    for step, meter in meters.items():
        assert entry.step_sqnr_db[step] == pytest.approx(meter.pooled_db, abs=0.1)
    pooled = SQNRMeter()
    for meter in meters.values():
        pooled = pooled.merge(meter)
    assert entry.sqnr_db == pytest.approx(pooled.pooled_db, abs=0.1)


def test_weight_activation_split_is_consistent(analysis):
    report, _ = analysis
    for e in report.modules:
        # each part alone is less noisy than both together, and the two parts add up to the total noise
        assert e.weight_sqnr_db >= e.sqnr_db - 0.5 and e.act_sqnr_db >= e.sqnr_db - 0.5
        assert abs(e.interaction_db) < 1.0, (e.name, e.interaction_db)
        assert 0.0 <= e.activation_share <= 1.0
    # W8A8 with per-tensor activations: activation noise dominates in almost every layer
    assert sum(e.activation_share > 0.5 for e in report.modules) > 0.9 * len(report.modules)


def test_precision_plan_weight_only_and_float_layers(analysis):
    """A weight-only layer has no activation noise (total == weight-only); a float layer is not reported."""
    report, _ = analysis
    conv_in = report["conv_in"]
    assert conv_in.precision.name == "w8" and math.isinf(conv_in.act_sqnr_db) and conv_in.activation_share == 0.0
    assert conv_in.sqnr_db == pytest.approx(conv_in.weight_sqnr_db, abs=1e-9)
    with pytest.raises(KeyError):
        report["conv_out"]
    assert {e.precision.name for e in report.modules} == {"w8a8", "w8"}
    assert "conv_in" not in select_for_smoothing(report, max_modules=100, min_activation_share=0.0)


def test_time_sensitivity_flag_follows_the_criterion(analysis):
    report, _ = analysis
    for e in report.modules:
        assert e.time_sensitive == (e.step_range_db > report.time_sensitive_db)
    flagged = report.time_sensitive()
    assert flagged and all(a.step_range_db >= b.step_range_db for a, b in zip(flagged, flagged[1:]))


def test_report_save_load_markdown(analysis, tmp_path):
    report, _ = analysis
    path = report.save(tmp_path)
    assert path.name == "layer_report.json"
    assert (tmp_path / "layer_sqnr.png").stat().st_size > 1000
    assert (tmp_path / "layer_sqnr_steps.png").stat().st_size > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left behind
    data = json.loads(path.read_text())
    assert data["denoiser_calls"] == report.denoiser_calls and len(data["modules"]) == 82
    assert data["modules"][0]["name"] == "conv_in" and data["modules"][0]["act_sqnr_db"] == "inf"  # no noise
    loaded = LayerReport.load(tmp_path)
    assert loaded["conv_in"].act_sqnr_db == math.inf
    assert [e.name for e in loaded.ranked()] == [e.name for e in report.ranked()]
    worst = report.ranked()[0]
    assert loaded[worst.name].sqnr_db == pytest.approx(worst.sqnr_db)
    assert loaded[worst.name].step_sqnr_db == pytest.approx(worst.step_sqnr_db)
    text = report.to_markdown(top=5)
    assert f"`{worst.name}`" in text and "attention query" in text and "resnet conv" in text
    summary = report.category_summary()
    assert sum(s["count"] for s in summary.values()) == 82
    assert summary["attn_q"]["count"] == 8 and summary["resnet_conv"]["count"] == 16
    with pytest.raises(BrevitasLDMError, match="no layer report"):
        LayerReport.load(tmp_path / "missing")


def test_non_finite_figures_survive_a_round_trip(analysis, tmp_path):
    """+inf (no noise) stays +inf and NaN (step not measured) stays NaN: the one JSON codec, for every report."""
    report = copy.deepcopy(analysis[0])     # the fixture is shared: edit a copy
    entry = report.modules[0]
    entry.step_sqnr_db = [math.nan, math.inf, *entry.step_sqnr_db[2:]]
    loaded = LayerReport.load(report.save(tmp_path))
    assert math.isnan(loaded[entry.name].step_sqnr_db[0]) and loaded[entry.name].step_sqnr_db[1] == math.inf
    assert json.loads((tmp_path / "layer_report.json").read_text())["modules"][0]["step_sqnr_db"][:2] == ["nan", "inf"]


def test_select_for_smoothing(analysis):
    report, _ = analysis
    chosen = select_for_smoothing(report, max_modules=4, min_activation_share=0.5)
    assert len(chosen) == 4
    sqnr = [report[n].sqnr_db for n in chosen]
    assert sqnr == sorted(sqnr) and all(report[n].activation_share >= 0.5 for n in chosen)
    eligible = [e for e in report.modules if e.activation_share >= 0.5 and math.isfinite(e.act_sqnr_db)]
    assert max(sqnr) <= sorted(e.sqnr_db for e in eligible)[3] + 1e-12
    assert select_for_smoothing(report, 0, 0.5) == []
    assert select_for_smoothing(report, 100, 1.0) == [e.name for e in report.ranked() if e.activation_share >= 1.0]
    with pytest.raises(RecipeError):
        select_for_smoothing(report, 4, 1.5)


def test_categories_of_diffusers_layers():
    unet = {n: layer_category(n) for n, _ in quantizable_layers(tiny_sd_unet())}
    assert unet["conv_in"] == unet["conv_out"] == "in_out"
    assert unet["time_embedding.linear_1"] == unet["down_blocks.0.resnets.0.time_emb_proj"] == "time_embedding"
    assert unet["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"] == "attn_k"
    assert unet["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"] == "attn_out"
    assert unet["down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj"] == "feed_forward"
    assert unet["down_blocks.0.attentions.0.proj_in"] == "transformer_io"
    assert unet["down_blocks.0.resnets.0.conv1"] == "resnet_conv"
    assert unet["down_blocks.1.resnets.0.conv_shortcut"] == "shortcut_conv"
    assert unet["down_blocks.0.downsamplers.0.conv"] == unet["up_blocks.0.upsamplers.0.conv"] == "sampler"
    assert "other" not in unet.values()
    dit = {n: layer_category(n) for n, _ in quantizable_layers(tiny_dit())}
    assert dit["pos_embed.proj"] == dit["proj_out_2"] == "in_out"
    assert dit["transformer_blocks.0.norm1.linear"] == "time_embedding"
    assert dit["transformer_blocks.0.attn1.to_q"] == "attn_q"
    assert "other" not in dit.values()
    assert set(unet.values()) | set(dit.values()) <= set(CATEGORIES)


def test_rejects_mismatched_prompts_and_seeds(pipe):
    with pytest.raises(BrevitasLDMError, match="one seed per"):
        LayerSensitivity(RECIPE, PROMPTS, SEEDS[:2], SPEC, progress=False).run(pipe)
