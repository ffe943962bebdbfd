"""Every bad input is one line, exit 2, naming the file or flag and the fix, and where it can be checked up front it
is refused before the model loads or before the FP sampling (which the tests prove by making that step fail)."""

import dataclasses
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from cli_args import FAST, one_line_error
from safetensors.torch import load_file, save_file

import brevitas_ldm.commands.qat as qat_command
import brevitas_ldm.evaluation.comparison as comparison
import brevitas_ldm.job.evaluation as evaluation_phases
from brevitas_ldm.checkpoint.folder import (
    HASH_METADATA_KEY,
    META_FILE,
    file_sha256,
    hashed_files,
    tensors_sha256,
)
from brevitas_ldm.cli import main
from brevitas_ldm.denoiser.loading import load_pipeline
from brevitas_ldm.denoiser.sampling import SamplingSpec
from brevitas_ldm.errors import BrevitasLDMError, RecipeError
from brevitas_ldm.io import check_safetensors_file
from brevitas_ldm.quant.quantize import check_skip_layers
from brevitas_ldm.recipe import Recipe, get_recipe
from brevitas_ldm.workflow import quantize_pipeline


@pytest.fixture
def no_fp_sampling(monkeypatch):
    """Proves an error came before the FP sampling of evaluate/quantize: running it fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the FP reference was sampled before the input was checked")

    monkeypatch.setattr(comparison, "fp_reference", refuse)
    monkeypatch.setattr(evaluation_phases, "fp_reference", refuse)
    monkeypatch.setattr(qat_command, "fp_reference", refuse)


@pytest.fixture(scope="module")
def quantized_dir(sd_dir, tmp_path_factory) -> Path:
    """A SmoothQuant W8A8 pipeline folder of the tiny SD pipeline (2 prompts, 2 steps: seconds)."""
    pipe = load_pipeline(sd_dir)
    result = quantize_pipeline(pipe, get_recipe("smoothquant-w8a8"), ["digit one", "digit two"], [1, 2],
                               SamplingSpec(num_inference_steps=2, batch_size=2))
    return result.save(tmp_path_factory.mktemp("q") / "checkpoint", model=str(sd_dir))


CONFIG, STATE_FILE = hashed_files("unet")      # the denoiser's config.json and weights file in the folder


def _tampered(quantized_dir: Path, tmp_path: Path, name: str, content: bytes) -> Path:
    """A copy of the folder with ``name`` replaced and its hash in meta.json updated, so only the content is wrong."""
    folder = tmp_path / "copy"
    shutil.copytree(quantized_dir, folder)
    (folder / name).write_bytes(content)
    meta = json.loads((folder / META_FILE).read_text())
    meta["files"][name] = file_sha256(folder / name)
    (folder / META_FILE).write_text(json.dumps(meta))
    return folder


def _safetensors(header: dict, data: bytes = b"", length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def test_safetensors_headers_are_read_against_the_file_size(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.int8)}, str(good))
    assert check_safetensors_file(good) == {"w": ("F32", (2, 3)), "b": ("I8", (4,))}
    pickled = tmp_path / "pickled.safetensors"
    torch.save({"w": torch.zeros(2)}, pickled)              # a zip file renamed
    cases = {
        "huge header": (_safetensors({}, length=2**62), "header claims 4,611,686,018,427,387,904 bytes"),
        "out of bounds": (_safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 10**12]}}, bytes(8)),
                          "lies at bytes 0..1,000,000,000,000 of a 8-byte data section"),
        "huge shape": (_safetensors({"w": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 8]}},
                                    bytes(8)), "needs 4,000,000,000,000,000,000 bytes, its range holds 8"),
        "not JSON": (struct.pack("<Q", 4) + b"\xff\xfe{[", "header is not JSON"),
        "short": (b"\x01\x02", "shorter than the 8-byte header length"),
        "bad entry": (_safetensors({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}),
                      "no valid dtype, shape and data_offsets"),
        "pickle": (pickled.read_bytes(), "header claims"),
    }
    for case, (content, reason) in cases.items():
        path = tmp_path / f"{case}.safetensors"
        path.write_bytes(content)
        with pytest.raises(BrevitasLDMError) as error:
            check_safetensors_file(path, "write it again")
        message = str(error.value)
        assert "\n" not in message and str(path) in message and reason in message and "write it again" in message, \
            (case, message)


def test_an_untrustworthy_state_file_is_refused_before_the_model_loads(quantized_dir, tmp_path, capsys,
                                                                      no_model_loading):
    state = _safetensors({"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}, bytes(16))
    for i, content in enumerate([state, _safetensors({}, length=2**40), (quantized_dir / "recipe.toml").read_bytes()]):
        folder = _tampered(quantized_dir, tmp_path / str(i), STATE_FILE, content)
        one_line_error(capsys, ["evaluate", "--model", str(folder), "--out", str(tmp_path / "e")], STATE_FILE,
                       "not a valid safetensors file", "re-run `brevitas-ldm quantize`")
    assert not (tmp_path / "e").exists()


def test_a_state_that_does_not_fit_is_refused_before_fp_sampling(quantized_dir, sd_dir, tmp_path, capsys,
                                                                  no_fp_sampling):
    state = load_file(str(quantized_dir / STATE_FILE))
    name = next(k for k in state if k.startswith("conv_in") and k.endswith(".bias"))    # weights are codes
    state[name] = torch.zeros(state[name].shape[0] + 1)
    save_file(state, str(tmp_path / "reshaped.safetensors"),
              metadata={"format": "pt", HASH_METADATA_KEY: tensors_sha256(state)})   # only the shape is wrong
    folder = _tampered(quantized_dir, tmp_path, STATE_FILE, (tmp_path / "reshaped.safetensors").read_bytes())
    one_line_error(capsys, ["evaluate", "--model", str(folder), "--out", str(tmp_path / "e"), *FAST[:6]], name, "shape")
    # qat starts from the checkpoint after its FP evaluation: the state is rebuilt once on a copy before that
    for start in (["--model", str(folder)], ["--model", str(sd_dir), "--checkpoint", str(folder)]):
        one_line_error(capsys, ["qat", *start, "--out", str(tmp_path / "t"), *FAST[:6], "--qat-steps", "1"], name,
                       "shape")
    assert not (tmp_path / "e").exists() and not (tmp_path / "t").exists()


def test_a_smoothing_layout_that_does_not_fit_is_refused_before_fp_sampling(quantized_dir, tmp_path, capsys,
                                                                           no_fp_sampling):
    config = json.loads((quantized_dir / CONFIG).read_text())
    layer = config["quantization_config"]["smoothing"]["layers"][0]
    layer.update(num_features=10**12, runtime_shape=[1, 10**12])
    folder = _tampered(quantized_dir, tmp_path, CONFIG, json.dumps(config).encode())
    one_line_error(capsys, ["evaluate", "--model", str(folder), "--out", str(tmp_path / "e"), *FAST[:6]], CONFIG,
                   layer["name"], "1000000000000 features")


def test_text_files_that_are_not_utf8_or_nest_too_deeply(tmp_path, capsys, no_model_loading):
    latin = tmp_path / "latin.toml"
    latin.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    one_line_error(capsys, ["quantize", "--recipe", str(latin), "--dry-run"], "latin.toml", "not UTF-8",
                   "save it as UTF-8")
    one_line_error(capsys, ["recipes", "show", str(latin)], "latin.toml", "not UTF-8")
    deep = tmp_path / "deep.toml"
    deep.write_text('name = "d"\nx = ' + "[" * 5000 + "]" * 5000 + "\n")
    one_line_error(capsys, ["quantize", "--recipe", str(deep), "--dry-run"], "deep.toml", "nests", "too deeply")
    plan = tmp_path / "plan.json"
    plan.write_bytes(b'{"precisions": {"conv_in": "w8a8\xff"}}')
    one_line_error(capsys, ["quantize", "--plan", str(plan), "--dry-run"], "plan.json", "not UTF-8")
    plan.write_text("[" * 100_000 + "]" * 100_000)
    one_line_error(capsys, ["quantize", "--plan", str(plan), "--dry-run"], "plan.json", "too deeply")


def test_model_index_files_diffusers_cannot_read(tmp_path, capsys):
    cases = {"list": ("[1, 2]", "holds a JSON list"), "no class": ('{"unet": ["diffusers", "UNet2DModel"]}',
                                                                  'no "_class_name"'),
             "unknown class": ('{"_class_name": "NoSuchPipeline"}', "'NoSuchPipeline', which diffusers"),
             "not a pipeline": ('{"_class_name": "UNet2DModel"}', "'UNet2DModel', which diffusers"),
             "not utf-8": (b'{"_class_name": "\xff"}', "not UTF-8")}
    for case, (content, needle) in cases.items():
        folder = tmp_path / case.replace(" ", "-")
        folder.mkdir()
        index = folder / "model_index.json"
        index.write_bytes(content if isinstance(content, bytes) else content.encode())
        one_line_error(capsys, ["quantize", "--model", str(folder), "--dry-run"], str(index), needle, "save_pretrained")


def test_step_counts_the_scheduler_cannot_sample_fail_before_sampling(sd_dir, tmp_path, capsys, no_fp_sampling,
                                                                       monkeypatch):
    import brevitas_ldm.commands.evaluate as evaluate_command

    monkeypatch.setattr(evaluate_command, "generate_with_latents", comparison.fp_reference)   # refuses too
    base = ["quantize", "--model", str(sd_dir), "--recipe", "minmax-w8a8", "--out", str(tmp_path / "q"), *FAST]
    one_line_error(capsys, [*base, "--steps", "1001"], "--steps 1001", "1000 training timesteps", "DDIMScheduler",
                   "--steps 1000 or fewer")
    one_line_error(capsys, [*base, "--calibration-steps", "1001"],
                   "calibration.sampling_steps (--calibration-steps) 1001")
    one_line_error(capsys, [*base, "--steps", "20000"], "20,000", "more than the 10,000")
    one_line_error(capsys, ["evaluate", "--model", str(sd_dir), "--out", str(tmp_path / "e"), "--steps", "1500"],
                   "--steps 1500")
    analysis = tmp_path / "analysis.toml"
    hybrid = get_recipe("sqnr-hybrid-w8a8")
    analysis.write_text(hybrid.replace(name="long-analysis", analysis=dataclasses.replace(hybrid.analysis,
                                                                                         steps=1001)).to_toml())
    one_line_error(capsys, [*base[:4], str(analysis), *base[5:]], "[analysis] steps 1001")
    one_line_error(capsys, ["analyze", "--model", str(sd_dir), "--recipe", str(analysis), "--dry-run"],
                   "[analysis] steps 1001")
    assert list(tmp_path.iterdir()) == [analysis]


def test_counts_in_the_billions_are_refused_up_front(tmp_path, capsys, no_model_loading):
    one_line_error(capsys, ["quantize", "--num-samples", "43000000000", "--dry-run"], "--num-samples 43,000,000,000",
                   "more than the 100,000")
    one_line_error(capsys, ["quantize", "--calibration-prompts", "10000000000", "--dry-run"], "--calibration-prompts")
    one_line_error(capsys, ["analyze", "--num-prompts", "10000000000", "--dry-run"], "--num-prompts")
    recipe = tmp_path / "big.toml"
    recipe.write_text('name = "big"\n[calibration]\nnum_prompts = 10000000000\n')
    one_line_error(capsys, ["quantize", "--recipe", str(recipe), "--dry-run"], "calibration.num_prompts = 10000000000")


def test_flags_and_files_out_of_bounds(tmp_path, capsys, no_model_loading):
    one_line_error(capsys,
                   ["export", "--model", "tiny-sd-digits", "--min-sqnr-db", "nan", "--out", str(tmp_path / "x")],
                   "--min-sqnr-db nan", "finite")
    one_line_error(capsys, ["quantize", "--threads", "999", "--dry-run"], "--threads 999", "cores this process may use")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("digit one\n" + "seven " * 2_000_000 + "\n")
    one_line_error(capsys, ["quantize", "--prompts", str(prompts), "--dry-run"], "line 2 is 12,000,000 characters",
                   "more than the 10,000")
    prompts.write_text("digit one\n" * 2_000_000)
    one_line_error(capsys, ["quantize", "--prompts", str(prompts), "--dry-run"], "20,000,000 bytes")
    nan_plan = tmp_path / "nan.toml"
    nan_plan.write_text('name = "n"\n[analysis]\nglobal = true\n[plan]\nmethod = "threshold"\nthreshold_db = nan\n')
    one_line_error(capsys, ["quantize", "--recipe", str(nan_plan), "--dry-run"], "plan.threshold_db = nan", "finite")
    with pytest.raises(RecipeError, match="threshold_db = inf"):
        Recipe.from_toml('name = "n"\n[plan]\nthreshold_db = inf\n')


def test_skip_layers_that_name_no_layer(sd_dir, tmp_path, capsys, no_fp_sampling):
    recipe = tmp_path / "typo.toml"
    recipe.write_text(get_recipe("minmax-w8a8").to_toml().replace('name = "minmax-w8a8"',
                                                                   'name = "t"\nskip_layers = ["conv_ot"]'))
    one_line_error(capsys,
                   ["quantize", "--model", str(sd_dir), "--recipe", str(recipe), "--out", str(tmp_path / "q"), *FAST],
                   "skip_layers[0] = 'conv_ot' names no quantizable layer of UNet2DConditionModel",
                   "did you mean conv_out")
    unet = load_pipeline(sd_dir).unet
    check_skip_layers(unet, ("conv_out", "*.attn2.to_k", "down_blocks.0", "x_embedder", "pos_embed"))
    with pytest.raises(RecipeError, match=r"skip_layers\[1\] = '\*\.attn9\.\*'"):
        check_skip_layers(unet, ("conv_in", "*.attn9.*"))


def test_a_plan_naming_no_block_is_refused_before_fp_evaluation(sd_dir, tmp_path, capsys, no_fp_sampling):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"precisions": {"down_blocks.9": "w8a8"}}))
    one_line_error(capsys,
                   ["quantize", "--model", str(sd_dir), "--plan", str(plan), "--out", str(tmp_path / "q"), *FAST],
                   "plan entry 'down_blocks.9' names no block or quantizable layer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_a_corrupt_training_image_is_named_before_the_model_loads(tmp_path, capsys, no_model_loading):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (32, 32), (10, 20, 30)).save(data / f"{name}.png")
        (data / f"{name}.txt").write_text("a handwritten digit one")
    (data / "b.png").write_bytes((data / "b.png").read_bytes()[:60])
    one_line_error(capsys, ["qat", "--data", str(data), "--out", str(tmp_path / "o")], "--data: image", "b.png",
                   "cannot be decoded", "replace or remove it")


def test_a_dit_without_the_null_class_asks_for_guidance_1(tmp_path, capsys):
    from diffusers import DDIMScheduler, DiTPipeline

    from brevitas_ldm.zoo.families import _vae
    from brevitas_ldm.zoo.tiny import tiny_dit

    folder = tmp_path / "dit"
    DiTPipeline(transformer=tiny_dit(), vae=_vae(), scheduler=DDIMScheduler()).save_pretrained(folder)
    argv = ["evaluate", "--model", str(folder), "--num-samples", "2", "--steps", "2", "--batch-size", "2"]
    one_line_error(capsys, [*argv, "--out", str(tmp_path / "e")], "DiTPipeline", "class 1000",
                   "embeds only 11 classes", "pass --guidance-scale 1")
    assert main([*argv, "--guidance-scale", "1", "--out", str(tmp_path / "e")]) == 0
    assert (tmp_path / "e" / "metrics.json").is_file()


def test_a_folder_with_unknown_keys_in_meta_json_is_refused_before_loading(quantized_dir, tmp_path, capsys,
                                                                          no_model_loading):
    """The one unknown-key policy of the files the project reads back reaches the checkpoint's meta.json."""
    folder = tmp_path / "meta"
    shutil.copytree(quantized_dir, folder)
    meta = json.loads((folder / META_FILE).read_text())
    (folder / META_FILE).write_text(json.dumps({**meta, "calibratoin": "single_step"}))
    one_line_error(capsys, ["evaluate", "--model", str(folder), "--out", str(tmp_path / "e")], "meta.json",
                   "unknown keys calibratoin")
    assert not (tmp_path / "e").exists()


def test_a_quantization_config_with_unknown_keys_is_refused_naming_them(quantized_dir, tmp_path, capsys):
    """... and its quantization_config, through the command line and through diffusers' own from_pretrained."""
    from diffusers import DiffusionPipeline

    import brevitas_ldm  # noqa: F401  (registers the "brevitas" backend with diffusers)

    config = json.loads((quantized_dir / CONFIG).read_text())
    config["quantization_config"]["bits"] = 4
    folder = _tampered(quantized_dir, tmp_path / "config", CONFIG, json.dumps(config).encode())
    one_line_error(capsys, ["evaluate", "--model", str(folder), "--out", str(tmp_path / "e")], "quantization_config",
                   "unknown keys bits")
    with pytest.raises(BrevitasLDMError, match="quantization_config has unknown keys bits"):
        DiffusionPipeline.from_pretrained(str(folder))
    assert not (tmp_path / "e").exists()
