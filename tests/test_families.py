"""Every diffusers LDM family users run, end to end, on tiny random-weight pipelines saved with save_pretrained.

SD (epsilon and v-prediction; DDIM, DPM-Solver++, Euler), SDXL, SD3, Flux, PixArt-Alpha/Sigma, DiT, DDPM and LDM:
conditioning comes from each pipeline's own call signature, blocks get the names the diffusers classes use,
single-step calibration evaluates maximum noise in every scheduler family, and the commands users run (analyze,
quantize with the SQNR strategy, evaluate --checkpoint, export to both onnxruntime forms) succeed.
"""

import dataclasses
import json
import math

import pytest
import torch

from brevitas_ldm.cli import main
from brevitas_ldm.denoiser.blocks import get_blocks
from brevitas_ldm.denoiser.layer_categories import layer_category
from brevitas_ldm.denoiser.loading import load_pipeline
from brevitas_ldm.denoiser.sampling import (
    SamplingSpec,
    _pipeline_call_kwargs,
    get_denoiser,
    max_noise_timestep,
)
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.quant.calibration import calibrate_pipeline
from brevitas_ldm.quant.quantize import quant_layers, quantize_denoiser
from brevitas_ldm.recipe import get_recipe
from brevitas_ldm.zoo.families import FAMILIES, save_family

SEVEN = "a handwritten digit seven"


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    """family -> its tiny pipeline's save_pretrained folder, built on first use (read-only)."""
    built = {}

    def get(family):
        if family not in built:
            built[family] = save_family(family, tmp_path_factory.mktemp(family))
        return built[family]

    return get


EXPECTED_CONDITIONING = {"sd-ddim": "prompt", "sd-v-dpmpp": "prompt", "sd-euler": "prompt", "sdxl": "prompt",
                         "sd3": "prompt", "flux": "prompt", "pixart-alpha": "prompt", "pixart-sigma": "prompt",
                         "dit": "class_labels", "ddpm": "batch_size", "ldm": "batch_size"}


def test_every_family_is_covered():
    assert set(EXPECTED_CONDITIONING) == set(FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_conditioning_comes_from_the_pipelines_call_signature(family, family_dirs):
    pipe = load_pipeline(family_dirs(family))
    kwargs = _pipeline_call_kwargs(pipe, [SEVEN, "digit two"], SamplingSpec())
    expected = {"prompt": [SEVEN, "digit two"], "class_labels": [7, 2], "batch_size": 2}[EXPECTED_CONDITIONING[family]]
    assert kwargs[EXPECTED_CONDITIONING[family]] == expected
    # Guidance is passed to the conditional pipelines only (DDPM/LDM have no such argument).
    assert ("guidance_scale" in kwargs) == (EXPECTED_CONDITIONING[family] != "batch_size")


def test_class_conditional_prompts_map_to_label_ids(family_dirs):
    pipe = load_pipeline(family_dirs("dit"))
    kwargs = _pipeline_call_kwargs(pipe, ["three", "412", 5, SEVEN], SamplingSpec())
    assert kwargs["class_labels"] == [3, 412, 5, 7]       # a label name, an id as text, an id, a digit prompt
    with pytest.raises(BrevitasLDMError, match="names no class of DiTPipeline"):
        _pipeline_call_kwargs(pipe, ["a photo of a cat"], SamplingSpec())


EXPECTED_BLOCKS = {
    "sd-ddim": ["conv_in", "time_embedding", "down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0",
                "up_blocks.1", "conv_out"],
    "sdxl": ["conv_in", "time_embedding", "add_embedding", "down_blocks.0", "down_blocks.1", "mid_block",
             "up_blocks.0", "up_blocks.1", "conv_out"],
    "sd3": ["pos_embed", "time_text_embed", "context_embedder", "transformer_blocks.0", "transformer_blocks.1",
            "norm_out", "proj_out"],
    "flux": ["x_embedder", "time_text_embed", "context_embedder", "transformer_blocks.0",
             "single_transformer_blocks.0", "norm_out", "proj_out"],
    "pixart-alpha": ["pos_embed", "adaln_single", "caption_projection", "transformer_blocks.0",
                     "transformer_blocks.1", "proj_out"],
    "dit": ["pos_embed", "transformer_blocks.0", "transformer_blocks.1", "proj_out_1", "proj_out_2"],
    "ddpm": ["conv_in", "time_embedding", "down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0",
             "up_blocks.1", "conv_out"],
}


@pytest.mark.parametrize("family", sorted(EXPECTED_BLOCKS))
def test_blocks_are_found_with_the_names_users_know(family, family_dirs):
    denoiser = get_denoiser(load_pipeline(family_dirs(family)))
    blocks = get_blocks(denoiser)
    assert [b.name for b in blocks] == EXPECTED_BLOCKS[family]
    # Every quantizable layer belongs to exactly one named block (nothing left in an "other" block).
    members = [m for b in blocks for m in b.module_names]
    assert len(members) == len(set(members)) == len(quant_layers(quantize_denoiser(denoiser, get_recipe(
        "minmax-w8a8"))))


# -- maximum-noise calibration in every scheduler family ----------------------------------------------------------

#: family -> the timestep the denoiser sees at maximum noise: t = T - 1 for DDPM/DDIM- and Karras/Euler-style
#: schedulers, sigma = 1 for flow matching (SD3 passes 1000 * sigma, Flux sigma).
MAX_NOISE_SEEN = {"sd-ddim": 999.0, "sd-euler": 999.0, "sd-v-dpmpp": 999.0, "ddpm": 999.0, "dit": 999.0,
                  "sd3": 1000.0, "flux": 1.0}


def _calibrated_scales_and_timesteps(pipe, steps):
    denoiser = get_denoiser(pipe)
    quantize_denoiser(denoiser, get_recipe("minmax-w8a8"))
    seen = []
    original = denoiser.forward

    def recording_forward(*args, **kwargs):      # inside the calibration wrapper: sees the timestep it substituted
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        seen.append(float(timestep.flatten()[0]))
        return original(*args, **kwargs)

    denoiser.forward = recording_forward
    recipe = get_recipe("sqnr-hybrid-w8a8")     # without the one-row sweep, whose calls see every later timestep
    recipe = recipe.replace(calibration=dataclasses.replace(recipe.calibration, timestep_layers="calibration_steps"))
    context = calibrate_pipeline(pipe, recipe, ["digit one", SEVEN, "digit two"], [1, 2, 3],
                                 SamplingSpec(num_inference_steps=steps, batch_size=2))
    del denoiser.forward
    scales = {name: layer.input_quant.scale().flatten() for name, layer in quant_layers(denoiser).items()}
    return scales, seen, context


@pytest.mark.parametrize("family", sorted(MAX_NOISE_SEEN))
@torch.no_grad()
def test_single_step_calibration_is_maximum_noise_in_every_scheduler_family(family, family_dirs):
    results = {steps: _calibrated_scales_and_timesteps(load_pipeline(family_dirs(family)), steps) for steps in (3, 8)}
    for steps, (scales, seen, context) in results.items():
        # One denoiser call per calibration batch (3 samples in batches of 2), at the maximum-noise timestep.
        assert context.calls == context.observed_calls == 2
        assert seen == [pytest.approx(MAX_NOISE_SEEN[family], rel=1e-6)] * 2
        assert all(bool((s > 0).all()) for s in scales.values())
    # The calibrated scales do not depend on how many steps the run was asked for.
    for name, scale in results[3][0].items():
        torch.testing.assert_close(results[8][0][name], scale, rtol=1e-6, atol=0, msg=name)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@torch.no_grad()
def test_every_step_sweep_calibrates_the_timestep_layers_of_every_family(family, family_dirs):
    """The one-row sweep runs on each family's own call signature (SDXL's added conditions, Flux's ids, DiT's
    labels) and widens, never narrows, the timestep-only layers' ranges; every other scale stays as it was."""
    base = get_recipe("sqnr-hybrid-w8a8")
    spec = SamplingSpec(num_inference_steps=4, batch_size=2)
    scales, contexts = {}, {}
    for mode in ("calibration_steps", "every_step"):
        recipe = base.replace(calibration=dataclasses.replace(base.calibration, timestep_layers=mode))
        denoiser = get_denoiser(pipe := load_pipeline(family_dirs(family)))
        quantize_denoiser(denoiser, recipe)
        contexts[mode] = calibrate_pipeline(pipe, recipe, ["digit one", SEVEN, "digit two"], [1, 2, 3], spec)
        scales[mode] = {name: layer.input_quant.scale().item() for name, layer in quant_layers(denoiser).items()}
        timestep_layers = {name for name in quant_layers(denoiser) if layer_category(name) == "time_embedding"}
    assert timestep_layers, family
    assert contexts["every_step"].sweep_calls == spec.num_inference_steps - 1
    assert contexts["every_step"].calls == contexts["calibration_steps"].calls + spec.num_inference_steps - 1 == 5
    for name, scale in scales["calibration_steps"].items():
        if name in timestep_layers:
            assert scales["every_step"][name] >= scale * (1 - 1e-6), name
        else:
            assert scales["every_step"][name] == scale, name
    # Later timesteps reach past t = T's range in every family but PixArt (whose random adaLN inputs peak at t = T).
    widened = any(scales["every_step"][n] > scales["calibration_steps"][n] * 1.01 for n in timestep_layers)
    assert widened or family.startswith("pixart"), family


def test_flow_matching_keeps_the_first_step_and_the_others_substitute_t_max(family_dirs):
    assert max_noise_timestep(load_pipeline(family_dirs("sd3"))) is None
    assert max_noise_timestep(load_pipeline(family_dirs("flux"))) is None
    assert max_noise_timestep(load_pipeline(family_dirs("sd-euler"))) == 999


# -- the commands, end to end --------------------------------------------------------------------------------------

SAMPLING = ["--steps", "2", "--batch-size", "2"]
EVALUATION = [*SAMPLING, "--num-samples", "2", "--seed", "3"]


def _small_hybrid_recipe(path):
    """sqnr-hybrid-w8a8 with small analysis settings (2 analysis prompts)."""
    from importlib.resources import files

    text = (files("brevitas_ldm.recipes") / "sqnr-hybrid-w8a8.toml").read_text()
    path.write_text(text.replace('name = "sqnr-hybrid-w8a8"', 'name = "tiny-sqnr-hybrid"')
                    .replace("num_prompts = 8", "num_prompts = 2").replace("steps = 6", "steps = 2"))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_command_works_on_every_family(family, family_dirs, tmp_path):
    model = str(family_dirs(family))
    recipe = str(_small_hybrid_recipe(tmp_path / "recipe.toml"))
    common = ["--model", model, *EVALUATION]
    cache = str(tmp_path / "cache")

    assert main(["analyze", "--model", model, *SAMPLING, "--recipe", recipe, "--cache-dir", cache, "--out",
                 str(tmp_path / "a")]) == 0
    analysis = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert analysis["denoiser_calls"]["global_analysis"] > 0
    block_report = json.loads((tmp_path / "a" / "block_report.json").read_text())
    assert [b["name"] for b in block_report["blocks"]] == [b.name for b in get_blocks(get_denoiser(
        load_pipeline(model)))]

    assert main(["quantize", *common, "--recipe", recipe, "--cache-dir", cache, "--calibration-prompts", "2",
                 "--out", str(tmp_path / "q")]) == 0
    metrics = json.loads((tmp_path / "q" / "metrics.json").read_text())
    quantized = metrics["quantized"]
    assert metrics["denoiser_calls"]["global_analysis"] == 0          # analyze's global analysis was reused
    assert 8.0 < quantized["output_sqnr_db"] < 120.0 and math.isfinite(quantized["image_psnr_db"])
    assert quantized["avg_weight_bits"] <= 8.0 + 1e-9 and quantized["avg_act_bits"] <= 9.0 + 1e-9
    assert (tmp_path / "q" / "figures" / "samples.png").is_file()

    checkpoint = str(tmp_path / "q" / "checkpoint")
    assert main(["evaluate", *common, "--checkpoint", checkpoint, "--out", str(tmp_path / "e")]) == 0
    evaluated = json.loads((tmp_path / "e" / "metrics.json").read_text())["quantized"]
    assert evaluated["output_sqnr_db"] == quantized["output_sqnr_db"]   # the reloaded model is the same model

    from brevitas_ldm.export import cpu_info

    # OpenVINO's int8 kernels are exact for 8-bit weights only with VNNI/AMX (AVX2 saturates them, and the export
    # refuses the file there: tests/test_openvino.py checks that refusal and 7-bit exactness on both kinds)
    for fmt in ("onnx-qcdq", "onnx-int8") + (("openvino",) if cpu_info().has_vnni else ()):
        out = tmp_path / fmt
        # Random weights amplify one-step rounding flips more than trained ones: 20 dB, not the default 30.
        assert main(["export", "--model", model, "--checkpoint", checkpoint, "--format", fmt, "--min-sqnr-db", "20",
                     "--out", str(out)]) == 0
        summary = json.loads((out / "export.json").read_text())
        assert summary["verification"]["sqnr_db"] >= 20.0
        if fmt in ("onnx-int8", "openvino"):
            assert sum(summary["kernels"]["integer"].values()) > 0
