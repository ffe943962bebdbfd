"""QAT from the same recipe and plan: distillation from the float denoiser lowers the loss, raises output SQNR over
the PTQ start, trains only what the recipe names, and the result saves, reloads and exports like a PTQ result."""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from brevitas_ldm.checkpoint.pretrained import from_pretrained
from brevitas_ldm.cli import main
from brevitas_ldm.denoiser.loading import load_pipeline
from brevitas_ldm.denoiser.sampling import SamplingSpec, generate, get_denoiser
from brevitas_ldm.errors import BrevitasLDMError, RecipeError
from brevitas_ldm.job import price_phases, run_phases
from brevitas_ldm.recipe import Recipe, get_recipe
from brevitas_ldm.sqnr import sqnr_db
from brevitas_ldm.training.qat import prepare_qat, qat, qat_result
from brevitas_ldm.training.qat_phases import qat_phases

SPEC = SamplingSpec(num_inference_steps=4, guidance_scale=2.0, batch_size=2)
EVAL_PROMPTS = ["a handwritten digit one", "a handwritten digit seven", "a handwritten digit three",
                "a handwritten digit eight"]
EVAL_SEEDS = [0, 1, 2, 3]


def small(recipe: str = "qat-w4a8", **qat_changes) -> Recipe:
    """A built-in QAT recipe at test size: 4 trajectories of 2 samples, 4 calibration prompts."""
    base = get_recipe(recipe)
    settings = {"num_prompts": 4, "batch_size": 2, "steps": 40, **qat_changes}
    return dataclasses.replace(base, name=f"{base.name}-test", qat=dataclasses.replace(base.qat, **settings),
                               calibration=dataclasses.replace(base.calibration, num_prompts=4, batch_size=2))


def latents(pipe):
    return generate(pipe, EVAL_PROMPTS, EVAL_SEEDS, SamplingSpec(4, 2.0, 4))


def run_qat(sd_dir, recipe: Recipe, **kwargs):
    """The FP latents, the PTQ start's latents and state, and the QAT result, on a fresh tiny pipeline."""
    pipe = load_pipeline(sd_dir)
    fp = latents(pipe)
    start = {}

    def before(result):
        start["latents"] = latents(pipe)
        start["state"] = {k: v.clone() for k, v in get_denoiser(pipe).state_dict().items()}

    result = qat(pipe, recipe, spec=SPEC, before_training=before, **kwargs)
    return fp, start, result, latents(pipe)


def test_qat_lowers_the_distillation_loss_and_raises_output_sqnr_over_its_ptq_start(sd_dir):
    fp, start, result, trained = run_qat(sd_dir, small("qat-w4a4", learnable=("weights", "act_scales"),
                                                       learning_rate=1e-3, scale_learning_rate=1e-2))
    assert len(result.log.losses) == 40 and result.denoiser_calls["training"] == 40
    assert result.denoiser_calls["recording"] == 4 * 2          # 2 trajectories (batches) x 4 steps
    assert result.loss_after < 0.6 * result.loss_before       # measured: 0.0219 -> 0.0089
    ptq_db, qat_db = sqnr_db(fp, start["latents"]), sqnr_db(fp, trained)
    assert qat_db > ptq_db + 0.5, (ptq_db, qat_db)              # measured: 13.3 -> 14.2 dB


@pytest.mark.parametrize("changes", [
    {"learnable": ("weights",), "learning_rate": 1e-3},
    {"learnable": ("weights",), "adapter_rank": 2, "learning_rate": 1e-3},
    {"learnable": ("biases",), "learning_rate": 1e-3},
    {"learnable": ("act_scales",), "scale_learning_rate": 1e-2},
    {"learnable": ("act_scales",), "scale_learning_rate": 1e-2, "timestep_sampling": "high_noise"},
], ids=["weights", "adapters", "biases", "act_scales", "high_noise"])
def test_every_learnable_choice_lowers_the_distillation_loss_and_freezes_the_rest(sd_dir, changes):
    _, start, result, _ = run_qat(sd_dir, small("qat-w4a4", steps=25, **changes))
    assert result.loss_after < result.loss_before, (result.loss_before, result.loss_after)
    after = get_denoiser(result.pipeline).state_dict()
    assert set(after) == set(start["state"])                    # adapters merged: the PTQ state layout is back
    learnable = set(changes["learnable"])

    def trained(key: str) -> bool:
        if key.endswith(".weight") and "_quant" not in key:
            return "weights" in learnable and key.rsplit(".", 1)[0] in quantized
        if key.endswith(".bias") and "_quant" not in key:
            return "biases" in learnable and key.rsplit(".", 1)[0] in quantized
        return "act_scales" in learnable and ("input_quant" in key or "output_quant" in key)

    quantized = {name for name, module in get_denoiser(result.pipeline).named_modules()
                 if hasattr(module, "weight_quant")}
    changed = {key for key in after if not torch.equal(after[key], start["state"][key])}
    assert changed and all(trained(key) for key in changed), sorted(k for k in changed if not trained(k))[:3]
    frozen = [key for key in after if not trained(key)]
    assert frozen and all(torch.equal(after[key], start["state"][key]) for key in frozen)
    if changes.get("adapter_rank"):
        assert result.merged_adapters == len(quantized)
        delta = next(after[k] - start["state"][k] for k in sorted(changed) if k.endswith(".weight")
                     and after[k].dim() == 2)
        assert torch.linalg.matrix_rank(delta).item() <= 2      # a rank-2 adapter, merged into the weight


def test_the_qat_job_is_one_phase_list_whose_price_is_what_it_runs(sd_dir):
    """Recording, the quantize job's phases and training run through run_phases; each priced row's calls are the
    calls counted while that phase ran (training: its steps plus the loss before and after on the recorded calls)."""
    recipe = small("qat-w4a8", steps=6)
    state = prepare_qat(load_pipeline(sd_dir), recipe, spec=SPEC)
    phases = qat_phases(state)
    enabled = [phase.name for phase in phases if phase.enabled(state)]
    assert enabled[0] == "recording" and enabled[-1] == "training" and "calibration" in enabled
    priced = price_phases(phases, state)
    result = qat_result(run_phases(phases, state))
    counted = result.quantization.counted_calls
    assert {row.name for row in priced} >= {"recording", "calibration", "training"}
    for row in priced:
        assert counted[row.name] == row.calls, (row, counted)
    # 4 trajectories of 2 samples, 4 steps each: 8 recorded calls, the loss on each of them before and after
    assert counted["recording"] == len(result.data) == 8 and counted["training"] == 6 + 2 * 8
    assert result.log.denoiser_calls == 6 and result.denoiser_calls["training"] == 6


def test_the_same_call_twice_gives_the_same_model(sd_dir):
    *_, first = run_qat(sd_dir, small("qat-w4a8", steps=10, learnable=("weights", "act_scales")))
    *_, second = run_qat(sd_dir, small("qat-w4a8", steps=10, learnable=("weights", "act_scales")))
    assert torch.equal(first, second)


@pytest.mark.parametrize("text, message", [
    ('name = "x"\n[qat]\nsteps = -1', "qat.steps = -1 must be >= 0"),
    ('name = "x"\n[qat]\nlearning_rate = 0', "qat.learning_rate = 0 must be in (0, 1)"),
    ('name = "x"\n[qat]\nscale_learning_rate = 2.0', "qat.scale_learning_rate = 2.0 must be in (0, 1)"),
    ('name = "x"\n[qat]\nlearnable = ["everything"]', "qat.learnable[0] = 'everything' is not allowed"),
    ('name = "x"\n[qat]\nlearnable = []', "qat.learnable = () must be a non-empty list"),
    ('name = "x"\n[qat]\nlearnable = ["biases"]\nadapter_rank = 4', "qat.adapter_rank = 4 trains the weights"),
    ('name = "x"\n[qat]\ntimestep_sampling = "late"', "qat.timestep_sampling = 'late' is not allowed"),
    ('name = "x"\n[qat]\nbatch_size = 0', "qat.batch_size = 0 must be a positive integer"),
    ('name = "x"\n[qat]\nrank = 4', "unknown key qat.'rank'"),
])
def test_bad_qat_values_are_refused_with_the_key_named(text, message):
    with pytest.raises(RecipeError, match=re.escape(message)):
        Recipe.from_toml(text)


def test_a_recipe_without_qat_and_a_quantized_pipeline_are_refused(sd_dir):
    with pytest.raises(RecipeError, match="recipe 'minmax-w8a8' has no QAT"):
        qat(load_pipeline(sd_dir), "minmax-w8a8")
    _, _, result, _ = run_qat(sd_dir, small(steps=2))
    with pytest.raises(BrevitasLDMError, match="qat\\(\\) takes the float pipeline"):
        qat(result.pipeline, small(steps=2))


def write_image_folder(folder, count=4):
    folder.mkdir()
    generator = np.random.default_rng(0)
    for i in range(count):
        pixels = (generator.random((32, 32, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(f"a handwritten digit {['one', 'two', 'three', 'four'][i]}")
    return folder


CLI_FAST = ["--num-samples", "4", "--steps", "4", "--batch-size", "4"]


def write_recipe(path, recipe: Recipe):
    path.write_text(recipe.to_toml())
    return path


@pytest.mark.slow
def test_qat_command_writes_a_folder_that_reloads_bit_identically_and_exports(sd_dir, tmp_path):
    recipe = write_recipe(tmp_path / "qat.toml", small("qat-w4a8", steps=20, learnable=("weights", "act_scales")))
    out = tmp_path / "q"
    assert main(["qat", "--model", str(sd_dir), "--recipe", str(recipe), "--out", str(out), *CLI_FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["qat"]["steps"] == 20 and metrics["denoiser_calls"]["training"] == 20
    assert metrics["qat"]["distillation_loss_after"] < metrics["qat"]["distillation_loss_before"]
    assert metrics["ptq"]["avg_weight_bits"] == metrics["quantized"]["avg_weight_bits"]      # same bits
    assert (out / "figures" / "qat_loss.png").is_file() and "PTQ start" in (out / "report.md").read_text()
    assert "[qat]" in (out / "checkpoint" / "recipe.toml").read_text()

    # evaluate reloads the folder and reproduces the QAT SQNR exactly: the saved model is the trained one.
    again = tmp_path / "e"
    assert main(["evaluate", "--model", str(out), "--out", str(again), *CLI_FAST]) == 0
    assert json.loads((again / "metrics.json").read_text())["quantized"]["output_sqnr_db"] == \
        metrics["quantized"]["output_sqnr_db"]
    exported = tmp_path / "x"
    assert main(["export", "--model", str(out), "--out", str(exported), "--format", "onnx-qcdq",
                 "--min-sqnr-db", "20"]) == 0
    assert any(exported.glob("*.onnx"))

    # A PTQ checkpoint as the start: its quant layers and scales, the QAT recipe's training.
    ptq = tmp_path / "p"
    assert main(["quantize", "--model", str(sd_dir), "--recipe", "minmax-w8a8", "--out", str(ptq),
                 "--calibration-prompts", "2", *CLI_FAST]) == 0
    resumed = tmp_path / "r"
    assert main(["qat", "--model", str(sd_dir), "--checkpoint", str(ptq), "--recipe", str(recipe),
                 "--out", str(resumed), *CLI_FAST]) == 0
    # --model naming the PTQ folder is the same start; a --plan beside it is refused before any work.
    assert main(["qat", "--model", str(ptq), "--plan", str(ptq / "plan.json"), "--recipe", str(recipe), "--out",
                 str(tmp_path / "refused"), *CLI_FAST]) == 2
    assert not (tmp_path / "refused").exists()
    resumed_metrics = json.loads((resumed / "metrics.json").read_text())
    assert resumed_metrics["recipe"] == "minmax-w8a8+qat-w4a8-test"
    assert resumed_metrics["ptq"]["output_sqnr_db"] == json.loads((ptq / "metrics.json").read_text())["quantized"][
        "output_sqnr_db"]
    assert resumed_metrics["quantized"]["avg_weight_bits"] == 8.0


def test_from_pretrained_of_a_saved_qat_result_is_bit_identical(sd_dir, tmp_path):
    _, _, result, trained = run_qat(sd_dir, small("qat-w4a8", steps=10, learnable=("weights", "act_scales"),
                                                  adapter_rank=2))
    result.save(tmp_path / "q", model=str(sd_dir))
    assert torch.equal(latents(from_pretrained(tmp_path / "q")), trained)


def test_qat_on_a_folder_of_captioned_images(sd_dir, tmp_path):
    from brevitas_ldm.training.image_folder import record_image_folder

    folder = write_image_folder(tmp_path / "data")
    pipe = load_pipeline(sd_dir)
    data = record_image_folder(pipe, folder, SPEC, seed=0)
    assert len(data) == 2 * 4 and data.source.startswith("images in")      # 2 batches x 4 schedule steps
    assert data.calls[0].args[0].shape[0] == 4                               # guidance: both halves, like sampling
    result = qat(pipe, small(steps=15), data=data, spec=SPEC)
    assert result.loss_after < result.loss_before


@pytest.mark.parametrize("args, message", [
    (["--recipe", "minmax-w8a8"], "recipe 'minmax-w8a8' has no QAT"),
    (["--qat-steps", "0"], "--qat-steps 0 must be at least 1"),
    (["--data", "nowhere"], "--data nowhere is not a folder"),
    (["--checkpoint", "nowhere"], "is not a brevitas-ldm checkpoint"),
    (["--plan", "nowhere.json"], "nowhere.json"),
])
def test_qat_command_refuses_bad_input_in_one_line_before_any_work(sd_dir, tmp_path, capsys, args, message):
    out = tmp_path / "q"
    assert main(["qat", "--model", str(sd_dir), "--out", str(out), *args, *CLI_FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_qat_command_refuses_data_for_a_flow_matching_pipeline(tmp_path, capsys):
    from brevitas_ldm.zoo.families import save_family

    model = save_family("sd3", tmp_path / "sd3")
    folder = write_image_folder(tmp_path / "data")
    assert main(["qat", "--model", str(model), "--data", str(folder), "--out", str(tmp_path / "q"), *CLI_FAST]) == 2
    assert "--data needs a DDPM-family scheduler" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["brevitas_ldm.training.qat_phases.distil",
                                   "brevitas_ldm.commands.qat.write_qat_report"])
def test_an_interrupted_qat_run_leaves_nothing_behind(sd_dir, tmp_path, monkeypatch, where):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt        # Ctrl-C while training, or while the folder is being written

    module, _, name = where.rpartition(".")
    monkeypatch.setattr(module + "." + name, interrupt)
    recipe = write_recipe(tmp_path / "qat.toml", small(steps=5))
    out = tmp_path / "run"
    assert main(["qat", "--model", str(sd_dir), "--recipe", str(recipe), "--out", str(out), *CLI_FAST]) == 130
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qat.toml"]
