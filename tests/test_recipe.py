import pytest

from brevitas_ldm.cli import main
from brevitas_ldm.errors import RecipeError
from brevitas_ldm.precision import FLOAT, Precision, parse_precision
from brevitas_ldm.recipe import Recipe, get_recipe, list_recipes, register_recipe

REQUIRED = ["minmax-w8a8", "smoothquant-w8a8", "qdiffusion-w8a8", "sqnr-hybrid-w8a8", "sqnr-hybrid-w4a8",
            "sqnr-hybrid-w4a6", "sqnr-hybrid-w4a4", "minmax-w7a8-x86", "sqnr-hybrid-w7a8-x86",
            "sqnr-hybrid-w8a8-openvino"]


def test_builtin_recipes_are_registered_and_round_trip_through_toml():
    names = list_recipes()
    for name in REQUIRED:
        assert name in names
        recipe = get_recipe(name)
        assert Recipe.from_toml(recipe.to_toml()) == recipe
    assert get_recipe("sqnr-hybrid-w4a8").default_precision == Precision(4, 8)
    assert get_recipe("sqnr-hybrid-w8a8").calibration.mode == "single_step"
    assert get_recipe("minmax-w8a8").calibration.mode == "all_steps"
    assert get_recipe("qdiffusion-w8a8").calibration.mode == "uniform_steps"
    for low_bits, act_bits in (("sqnr-hybrid-w4a6", 6), ("sqnr-hybrid-w4a4", 4)):
        recipe = get_recipe(low_bits)
        assert recipe.default_precision == Precision(4, act_bits) and recipe.plan.granularity == "layer"
        assert recipe.calibration.bias_correction and recipe.plan.method == "budget"
    # 4-bit activations: zero-pointed ranges over every step (docs/compare.md, +3.4 dB over symmetric single-step).
    w4a4 = get_recipe("sqnr-hybrid-w4a4")
    assert not w4a4.activations.symmetric and w4a4.calibration.mode == "all_steps"
    assert not get_recipe("sqnr-hybrid-w4a6").activations.symmetric       # +0.5 dB at 6 bits
    assert get_recipe("sqnr-hybrid-w4a8").activations.symmetric           # no gain at 8 bits (31.33 vs 31.34 dB)
    # weights rounded by GPTQ (docs/ablation.md, equal bits: +0.4 / +3.4 / +2.7 dB at W8A8 / W4A8 / W4A6); at W4A4
    # it gave +0.3 dB and a worse digits-FID twice (3.60 -> 3.74, 3.67 -> 3.76), so that recipe keeps nearest
    for name in ("sqnr-hybrid-w8a8", "sqnr-hybrid-w4a8", "sqnr-hybrid-w4a6"):
        assert get_recipe(name).weights.rounding == "gptq"
    for name in ("sqnr-hybrid-w4a4", "sqnr-hybrid-w7a8-x86"):    # the latter: measured for its deployment as is
        assert get_recipe(name).weights.rounding == "nearest"


def test_the_openvino_recipe_plans_only_what_openvino_runs_fast():
    """``sqnr-hybrid-w8a8-openvino`` (issue 29, docs/deployment-openvino.md): the menu holds the integer kernel and
    float only (W8A16 runs as a float kernel with decompressed weights in OpenVINO), the plan is priced in
    OpenVINO's table, the scores run on integers and the activations take zero points (on the SD-shaped UNet's
    denoiser inputs, +1.1 dB over symmetric, docs/deployment-openvino.md), calibrated over every step (zero-pointed
    ranges from the single noisiest step clip the later steps: 25.3 vs 28.2 dB there)."""
    from brevitas_ldm.registry import LATENCY_TARGETS

    recipe = get_recipe("sqnr-hybrid-w8a8-openvino")
    target = LATENCY_TARGETS.get(recipe.plan.target)
    assert recipe.plan.target == "openvino-cpu" and recipe.plan.method == "budget"
    assert {target.kernel(precision) for precision in recipe.plan.menu} == {"float", "integer"}
    assert recipe.plan.menu == (FLOAT, Precision(8, 8)) and recipe.default_precision == Precision(8, 8)
    assert recipe.deploy.quantize_query_key and not recipe.activations.symmetric
    assert recipe.weights.rounding == "gptq" and recipe.analysis.global_ and recipe.analysis.local
    assert recipe.calibration.mode == "all_steps"


def test_the_quickstart_analysis_costs_under_a_third_of_the_20_step_one():
    """Issue 13, item 6 (docs/global-analysis.md): 6-step analysis runs, the timestep-only layers calibrated over
    every step (with them, 4-, 6- and 8-step analyses give one plan, measured as good as the 20-step one)."""
    import dataclasses

    from brevitas_ldm.analysis.block_sensitivity import BlockSensitivity
    from brevitas_ldm.denoiser.sampling import SamplingSpec

    quickstart = get_recipe("sqnr-hybrid-w8a8")
    assert quickstart.calibration.timestep_layers == "every_step" and quickstart.analysis.progressive
    full = quickstart.replace(analysis=dataclasses.replace(quickstart.analysis, steps=0))
    prompts, seeds, spec = ["digit"] * 8, list(range(8)), SamplingSpec(num_inference_steps=20, batch_size=8)
    calls = {recipe.analysis.steps: BlockSensitivity(recipe, prompts, seeds, spec, progress=False).planned_calls(10)
             for recipe in (quickstart, full)}
    # 0.5.0's 20-step analysis made 803 calls; the one-row sweep calls count too (3 calibrations x 5 later steps).
    assert calls[6]["total"] == 243 + 3 * 5 <= 803 / 3 and calls[0]["total"] == 803 + 3 * 19
    # The other single-step recipes keep their published calibration.
    for name in ("sqnr-hybrid-w4a8", "sqnr-hybrid-w4a6", "sqnr-hybrid-w7a8-x86"):
        assert get_recipe(name).calibration.timestep_layers == "calibration_steps"


@pytest.mark.parametrize("text, message", [
    ('name = "x"\nbogus = 1', "unknown key 'bogus'"),
    ('name = "x"\n[weights]\nbitz = 8', "unknown key weights.'bitz'"),
    ('name = "x"\n[weights]\nbits = 1', "weights.bits = 1 is out of range"),
    ('name = "x"\n[activations]\nbits = 17', "activations.bits = 17 is out of range"),
    ('name = "x"\n[weights]\nformat = "fp4"', "weights.format = 'fp4' is not allowed: choose one of int, e4m3, e5m2"),
    ('name = "x"\n[weights]\nformat = "e4m3"\nbits = 4', "weights.bits = 4 does not fit format 'e4m3'"),
    ('name = "x"\n[calibration]\nmode = "sometimes"', "calibration.mode = 'sometimes' is not allowed"),
    ('name = "x"\n[calibration]\ntimestep_layers = "all"', "calibration.timestep_layers = 'all' is not allowed"),
    ('name = "x"\n[calibration]\nmode = "all_steps"\ntimestep_layers = "every_step"',
     'calibration.timestep_layers = "every_step" needs calibration.mode = "single_step"'),
    ('name = "x"\n[smoothquant]\nalpha = 1.5', "smoothquant.alpha = 1.5 must be in"),
    ('name = "x"\n[plan]\nmethod = "budget"\navg_weight_bits = 6.0', "needs the global analysis"),
    ('name = "x"\n[plan]\nmenu = ["w8a8", "w99a8"]', "plan.menu[1] = 'w99a8'"),
    ('name = "x"\n[weights', "does not parse as TOML"),
    ('description = "no name"', "name is missing"),
    ('name = "x"\n[deploy]\nrequantize_conv_outputs = "yes"', "deploy.requantize_conv_outputs"),
    ('name = "x"\n[activations]\nformat = "e4m3"\n[deploy]\nrequantize_conv_outputs = true',
     "deploy.requantize_conv_outputs needs integer activations"),
    ('name = "x"\n[deploy]\nquantize_query_key = 1', "deploy.quantize_query_key"),
    ('name = "x"\n[activations]\nformat = "e4m3"\n[deploy]\nquantize_query_key = true',
     "deploy.quantize_query_key needs integer activations"),
])
def test_bad_recipes_name_the_key(text, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace("[", r"\[").replace(".", r"\.")):
        Recipe.from_toml(text)


def test_register_file_and_unknown_names(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(get_recipe("minmax-w8a8").to_toml().replace('name = "minmax-w8a8"', 'name = "my-w6a8"')
                    .replace("bits = 8", "bits = 6", 1))
    recipe = Recipe.from_file(path)
    assert recipe.default_precision == Precision(6, 8)
    assert get_recipe(str(path)) == recipe
    register_recipe(recipe)
    assert "my-w6a8" in list_recipes()
    with pytest.raises(RecipeError, match="already registered"):
        register_recipe(recipe)
    with pytest.raises(RecipeError, match="unknown recipe 'nope': choose one of"):
        get_recipe("nope")
    with pytest.raises(RecipeError, match="does not exist"):
        Recipe.from_file(tmp_path / "missing.toml")


def test_precision_strings():
    assert parse_precision("float") == FLOAT
    assert parse_precision("w4a8") == Precision(4, 8)
    assert parse_precision("W8") == Precision(8, None)
    assert str(Precision(8, 16)) == "w8a16"
    for bad in ("w1a8", "w8a17", "int8", "a8"):
        with pytest.raises(RecipeError):
            parse_precision(bad)


def test_cli_lists_and_shows_recipes(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == sorted(line.split("\t")[0] for line in lines)
    assert {line.split("\t")[0] for line in lines} >= set(REQUIRED)
    assert main(["recipes", "show", "sqnr-hybrid-w8a8"]) == 0
    shown = capsys.readouterr().out
    assert Recipe.from_toml(shown) == get_recipe("sqnr-hybrid-w8a8")
    assert main(["recipes", "show", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown recipe 'nope'" in err and "Traceback" not in err
