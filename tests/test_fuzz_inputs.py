"""Fuzzed input files through the real command line: any recipe TOML, plan JSON or model_index.json either works
(exit 0) or is refused in exactly one line on stderr (exit 2), never a traceback. The commands chosen fail early
(``recipes show``, ``quantize --dry-run`` on the tiny pipeline), so each example takes milliseconds to a second."""

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import brevitas_ldm.commands.common as common_options
from brevitas_ldm.cli import main
from brevitas_ldm.denoiser.blocks import get_blocks
from brevitas_ldm.denoiser.loading import load_pipeline
from brevitas_ldm.recipe import _SECTIONS, Recipe

# Generation only: a failure is reported as found (shrinking a failing dry run can take minutes).
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
                report_multiple_bugs=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
DRY_RUN = ["--dry-run", "--recipe", "minmax-w8a8", "--num-samples", "2", "--steps", "2", "--batch-size", "2",
           "--calibration-prompts", "2", "--calibration-batch-size", "2"]


def _outcome(argv: list[str]) -> tuple[int, str]:
    """Exit code and stderr of the command line run in-process; a traceback (an exception out of main) fails."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def _assert_clean(argv: list[str]) -> int:
    code, err = _outcome(argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    if code == 2:
        assert len(lines) == 1 and ": error: " in lines[0], err
    return code


scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from(["w8a8", "w4a8", "float", "w8", "int", "minmax", "gptq", "all",
                                                      "single_step", "budget", "threshold", "per_channel", "e4m3"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


# -- recipe TOML ---------------------------------------------------------------------------------------------------

def _section_keys(section: str) -> list[str]:
    import dataclasses

    return [{"global_": "global"}.get(f.name, f.name) for f in dataclasses.fields(_SECTIONS[section])]


toml_scalars = (st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
                | st.text(max_size=12) | st.sampled_from(["w8a8", "w4a8", "float", "int", "minmax", "mse", "gptq",
                                                           "single_step", "uniform_steps", "budget", "threshold",
                                                           "top_k", "layer", "per_tensor", "e4m3", "sensitive"]))
toml_values = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)
#: A valid value of every section key (a built-in recipe's), drawn half the time, so that many fuzzed recipes are
#: accepted and go on to the next check instead of all failing at the first key.
VALID = Recipe(name="fuzz").to_dict()
sections = st.sampled_from(sorted(_SECTIONS)).flatmap(
    lambda name: st.tuples(st.just(name), st.dictionaries(
        st.sampled_from(_section_keys(name)) | st.text(max_size=6),
        toml_values, max_size=3).flatmap(
        lambda table: st.fixed_dictionaries({key: st.just(VALID[name][key]) | st.just(value) if key in VALID[name]
                                             else st.just(value) for key, value in table.items()}))))
recipe_tables = st.builds(
    lambda name, top, parts: {**({"name": name} if name is not None else {}), **top, **dict(parts)},
    st.just("fuzz") | st.none() | st.text(max_size=10),
    st.dictionaries(st.sampled_from(["description", "skip_layers", "type_precisions", "nonsense"]),
                    toml_values | st.dictionaries(st.sampled_from(["Linear", "Conv2d", "Foo"]), toml_scalars,
                                                  max_size=2), max_size=3),
    st.lists(sections, max_size=4))
recipe_files = (recipe_tables.map(lambda table: tomli_w.dumps(table).encode())
                | st.text(max_size=200).map(str.encode)
                | st.binary(max_size=200)
                | st.integers(1, 3000).map(lambda d: ('name = "deep"\nx = ' + "[" * d + "]" * d + "\n").encode()))


@FUZZ
@given(content=recipe_files)
@example(content=tomli_w.dumps({"name": "fuzz", "weights": {"bits": 4}, "plan": {"threshold_db": 2.5}}).encode())
def test_any_recipe_file_is_a_recipe_or_one_line(tmp_path, content):
    path = tmp_path / "fuzz.toml"
    path.write_bytes(content)
    if _assert_clean(["recipes", "show", str(path)]) == 0:
        Recipe.from_file(path)      # what showed is a recipe


def test_the_accepted_path_is_exercised_too(tmp_path):
    """A file the command accepts exits 0 through the same check (the fuzz's exit-0 branch is not dead)."""
    path = tmp_path / "ok.toml"
    path.write_bytes(tomli_w.dumps({**VALID, "name": "fuzz-ok"}).encode())
    assert _assert_clean(["recipes", "show", str(path)]) == 0


# -- plan JSON -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_pipe(sd_dir):
    return load_pipeline(sd_dir)


def _plans(block_names: list[str]):
    names = st.sampled_from(block_names + ["conv_in", "down_blocks.9", "mid_block.attentions.0.proj_in", ""]) \
        | st.text(max_size=8)
    precisions = st.sampled_from(["w8a8", "w4a8", "w8a16", "float", "w8", "w2a2", "w8a8x", ""]) | scalars
    plan = st.fixed_dictionaries(
        {"precisions": st.dictionaries(names, precisions, max_size=4) | json_values},
        optional={"method": scalars, "default": precisions, "predicted_sqnr_db": scalars, "avg_weight_bits": scalars,
                  "evidence": json_values | st.dictionaries(names, json_values, max_size=2), "budget": json_values,
                  "measured_sqnr_db": scalars, "model": scalars, "recipe": scalars, "unknown": scalars})
    return (plan.map(lambda p: json.dumps(p, allow_nan=True)) | json_values.map(json.dumps)
            | st.text(max_size=100) | st.integers(1, 5000).map(lambda d: "[" * d + "]" * d))


@FUZZ
@given(data=st.data())
def test_any_plan_file_is_a_plan_or_one_line(tmp_path, sd_dir, tiny_pipe, monkeypatch, data):
    monkeypatch.setattr(common_options, "load_pipeline", lambda *args, **kwargs: tiny_pipe)
    text = data.draw(_plans([block.name for block in get_blocks(tiny_pipe.unet)]))
    path = tmp_path / "plan.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _assert_clean(["quantize", "--model", str(sd_dir), "--plan", str(path), *DRY_RUN])


# -- model_index.json ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_copy(sd_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-model") / "sd"
    shutil.copytree(sd_dir, folder)
    shutil.copy(folder / "model_index.json", folder.parent)        # the original, beside the copy
    return folder


components = st.sampled_from(["unet", "vae", "text_encoder", "tokenizer", "scheduler", "safety_checker",
                              "feature_extractor", "transformer", "image_encoder"])
libraries = st.sampled_from([["diffusers", "UNet2DConditionModel"], ["diffusers", "AutoencoderKL"],
                             ["transformers", "CLIPTextModel"], ["transformers", "CLIPTokenizer"],
                             ["diffusers", "DDIMScheduler"], ["diffusers", "UNet2DModel"], [None, None],
                             ["diffusers", "NoSuchModel"], ["nolibrary", "X"]]) | json_values
model_indexes = st.builds(
    lambda head, parts: {**head, **parts},
    st.fixed_dictionaries({}, optional={"_class_name": st.sampled_from(["StableDiffusionPipeline", "DiTPipeline",
                                                                        "DDPMPipeline", "LDMPipeline",
                                                                        "NoSuchPipeline", "UNet2DModel"]) | scalars,
                                        "_diffusers_version": st.just("0.35.0") | scalars}),
    st.dictionaries(components, libraries, max_size=6))


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_any_model_index_is_a_pipeline_or_one_line(model_copy, data):
    """Random indexes, and the folder's own index with components dropped or swapped (which reach diffusers'
    loader and the pipeline itself)."""
    real = json.loads((model_copy.parent / "model_index.json").read_text())
    mutated = st.builds(lambda drop, changes: {**{k: v for k, v in real.items() if k not in drop}, **changes},
                        st.sets(st.sampled_from(sorted(real))), st.dictionaries(components, libraries, max_size=2))
    index = data.draw(mutated | model_indexes | json_values)
    (model_copy / "model_index.json").write_text(json.dumps(index, allow_nan=True))
    _assert_clean(["quantize", "--model", str(model_copy), *DRY_RUN])


def test_the_real_model_index_still_loads(sd_dir, capsys):
    """The fuzz's folder is the tiny SD pipeline: with its own model_index.json the dry run goes through."""
    assert main(["quantize", "--model", str(sd_dir), *DRY_RUN]) == 0
    assert "plan of work" in capsys.readouterr().out
