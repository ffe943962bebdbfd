"""A quantized pipeline folder is an ordinary diffusers folder that diffusers itself reloads, stored as integer codes.

After ``import brevitas_ldm``, ``DiffusionPipeline.from_pretrained``, the pipeline's own class and the denoiser's
class load what ``QuantizationResult.save`` writes, for every family, to a model whose every quantized weight and
whose sampled latents are bit-identical to the in-memory one; ``save_pretrained`` of it reloads the same way; the
weights file holds int8 / packed 4-bit / FP8 codes and is within 10% of the quantized footprint; a float folder
with a BrevitasConfig, an older format, a changed file and unknown layers are refused in one line.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import brevitas_ldm
from brevitas_ldm.checkpoint.folder import STATE_FILE
from brevitas_ldm.denoiser.loading import load_pipeline
from brevitas_ldm.denoiser.sampling import (
    SamplingSpec,
    denoiser_component,
    generate,
    get_denoiser,
)
from brevitas_ldm.errors import ModelError
from brevitas_ldm.evaluation.comparison import fp_reference
from brevitas_ldm.evaluation.prompts import EvaluationSet
from brevitas_ldm.io import write_safetensors_atomic
from brevitas_ldm.quant.footprint import footprint
from brevitas_ldm.quant.integer_codes import (
    pack_codes,
    unpack_codes,
    weight_quantized_layers,
)
from brevitas_ldm.recipe import Recipe, get_recipe
from brevitas_ldm.workflow import quantize_pipeline
from brevitas_ldm.zoo.families import FAMILIES, save_family

SPEC = SamplingSpec(num_inference_steps=2, guidance_scale=2.0, batch_size=2)
PROMPTS, SEEDS = ["a handwritten digit seven", "digit two"], [3, 4]


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def _quantized_weights(denoiser) -> dict[str, torch.Tensor]:
    return {name: layer.quant_weight().value.detach().clone() for name,
            layer in weight_quantized_layers(denoiser).items()}


def _assert_same_model(reloaded, expected_weights, expected_latents) -> None:
    weights = _quantized_weights(get_denoiser(reloaded))
    assert set(weights) == set(expected_weights) and len(weights) > 3
    for name, value in expected_weights.items():
        assert torch.equal(weights[name], value), name
    reloaded.set_progress_bar_config(disable=True)
    assert torch.equal(generate(reloaded, PROMPTS, SEEDS, SPEC), expected_latents)


def _quantize_and_save(model_dir, recipe, folder):
    pipe = load_pipeline(model_dir)
    result = quantize_pipeline(pipe, recipe, PROMPTS, SEEDS, SPEC)
    result.save(folder)
    return pipe, result


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_reloads_through_diffusers_bit_identically(family, tmp_path):
    from diffusers import DiffusionPipeline

    base = save_family(family, tmp_path / "base")
    pipe, _ = _quantize_and_save(base, "minmax-w8a8", tmp_path / "q")
    weights, latents = _quantized_weights(get_denoiser(pipe)), generate(pipe, PROMPTS, SEEDS, SPEC)
    component = denoiser_component(pipe)
    config = json.loads((tmp_path / "q" / component / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "brevitas" and config["format_version"] == 3
    assert config["recipe"]["name"] == "minmax-w8a8" and len(config["precisions"]) >= len(weights)

    _assert_same_model(DiffusionPipeline.from_pretrained(tmp_path / "q"), weights, latents)
    # the pipeline's own class, with the denoiser loaded alone by the denoiser's own class
    denoiser = type(get_denoiser(pipe)).from_pretrained(tmp_path / "q", subfolder=component)
    _assert_same_model(type(pipe).from_pretrained(tmp_path / "q", **{component: denoiser}), weights, latents)


def test_save_pretrained_of_a_reloaded_pipeline_reloads_the_same_way(sd_dir, tmp_path):
    from diffusers import (
        DiffusionPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    pipe, _ = _quantize_and_save(sd_dir, "smoothquant-w8a8", tmp_path / "q")
    weights, latents = _quantized_weights(pipe.unet), generate(pipe, PROMPTS, SEEDS, SPEC)
    reloaded = StableDiffusionPipeline.from_pretrained(tmp_path / "q")
    reloaded.save_pretrained(tmp_path / "again")
    again = DiffusionPipeline.from_pretrained(tmp_path / "again")
    _assert_same_model(again, weights, latents)
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "again", subfolder="unet")
    assert type(unet.conv_in).__name__ == "EqualizedModule"      # SmoothQuant rebuilt from the config
    # the thin alias: the --out folder's checkpoint/ or a folder diffusers wrote
    _assert_same_model(brevitas_ldm.from_pretrained(tmp_path / "q"), weights, latents)
    _assert_same_model(brevitas_ldm.from_pretrained(tmp_path / "again"), weights, latents)


def test_the_folder_is_self_contained_with_linked_components(sd_dir, tmp_path):
    from diffusers import DiffusionPipeline

    pipe, _ = _quantize_and_save(sd_dir, "minmax-w8a8", tmp_path / "q")
    latents = generate(pipe, PROMPTS, SEEDS, SPEC)
    folder = tmp_path / "q"
    index = json.loads((sd_dir / "model_index.json").read_text())
    components = [name for name, value in index.items() if isinstance(value, list) and value[0] is not None]
    for name in components:
        assert (folder / name).is_dir(), name
    for name in ("vae", "text_encoder"):       # not re-saved: the very same bytes (a hard link where possible)
        for path in (sd_dir / name).iterdir():
            copy = folder / name / path.name
            assert copy.read_bytes() == path.read_bytes()
            assert os.path.samefile(copy, path) or copy.stat().st_nlink == 1
    moved = tmp_path / "elsewhere"          # a copy on "another machine": nothing outside it is needed
    shutil.copytree(folder, moved)
    shutil.rmtree(folder)
    loaded = DiffusionPipeline.from_pretrained(moved)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(generate(loaded, PROMPTS, SEEDS, SPEC), latents)


def test_the_reference_option_writes_the_denoiser_only(sd_dir, tmp_path):
    pipe = load_pipeline(sd_dir)
    result = quantize_pipeline(pipe, "minmax-w8a8", PROMPTS, SEEDS, SPEC)
    result.save(tmp_path / "ref", self_contained=False)
    assert not any((tmp_path / "ref" / name).exists() for name in ("vae", "text_encoder", "model_index.json"))
    assert json.loads((tmp_path / "ref" / "meta.json").read_text())["self_contained"] is False
    assert torch.equal(generate(brevitas_ldm.from_pretrained(tmp_path / "ref"), PROMPTS, SEEDS, SPEC),
                       generate(pipe, PROMPTS, SEEDS, SPEC))


def _recipe(name: str, weights: dict, extra: dict | None = None) -> Recipe:
    data = get_recipe("minmax-w8a8").to_dict()
    data["name"] = name
    data["weights"].update(weights)
    for section, values in (extra or {}).items():
        data.setdefault(section, {}).update(values)
    return Recipe.from_dict(data)


#: recipe -> the codes' storage dtype expected for its 4-bit (or FP8) layers.
KINDS = {
    "asymmetric 4-bit, SmoothQuant, bias correction": (
        _recipe("t-asym-w4", {"bits": 4, "symmetric": False},
                {"smoothquant": {"enabled": True, "scope": "all", "alpha": 0.5},
                 "calibration": {"bias_correction": True}}), torch.uint8),
    "GPTQ 4-bit": (_recipe("t-gptq-w4", {"bits": 4, "rounding": "gptq"}), torch.uint8),
    "MSE 8-bit": (_recipe("t-mse-w8", {"scale_method": "mse"}), torch.int8),
    "FP8 e4m3": (_recipe("t-fp8", {"format": "e4m3"}), torch.float8_e4m3fn),
    "requantized conv outputs": (get_recipe("minmax-w7a8-x86"), torch.int8),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_integer_storage_rebuilds_every_weight_exactly(kind, sd_dir, tmp_path):
    """Float layers, 16-bit activations and weight-only layers from a plan, on top of each weight format."""
    from diffusers import DiffusionPipeline

    recipe, code_dtype = KINDS[kind]
    pipe = load_pipeline(sd_dir)
    plan = {"conv_in": "float", "down_blocks.0": "w8a16", "time_embedding": "w8"}
    result = quantize_pipeline(pipe, recipe, PROMPTS, SEEDS, SPEC, plan=plan)
    result.save(tmp_path / "q")
    weights, latents = _quantized_weights(pipe.unet), generate(pipe, PROMPTS, SEEDS, SPEC)
    _assert_same_model(DiffusionPipeline.from_pretrained(tmp_path / "q"), weights, latents)
    stored = load_file(str(tmp_path / "q" / "unet" / STATE_FILE))
    codes = {k: v for k, v in stored.items() if k.endswith(".weight_codes")}
    assert len(codes) == len(weights)
    main = "mid_block.resnets.0.conv1" + (".layer" if "SmoothQuant" in kind else "")
    assert stored[f"{main}.weight_codes"].dtype == code_dtype
    assert "conv_in.weight" in stored and stored["conv_in.weight"].dtype == torch.float32      # the float layer
    assert not any(k.endswith(".weight") and k.rpartition(".")[0] in weight_quantized_layers(pipe.unet)
                   for k in stored)                                                          # no float copy
    if code_dtype == torch.uint8 and "asym" in kind:
        assert stored[f"{main}.weight_zero_point"].dtype == torch.uint8


@pytest.mark.parametrize(("bits", "signed"), [(2, True), (3, False), (4, True), (4, False), (6, True), (12, False)])
def test_codes_pack_into_the_narrowest_type_and_back(bits, signed):
    low, high = (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    codes = torch.randint(low, high + 1, (5, 3, 3, 3), generator=torch.Generator().manual_seed(bits))
    packed = pack_codes(codes, bits, signed)
    assert packed.numel() * packed.element_size() == (68 if bits <= 4 else codes.numel() * (1 if bits <= 8 else 2))
    assert torch.equal(unpack_codes(packed, tuple(codes.shape), bits, signed), codes)


def test_the_weights_file_is_within_10_percent_of_the_footprint(embedded_model_path, tmp_path):
    """On the embedded tiny-sd-digits (few calibration samples): file against footprint, both W8A8 and W4A8."""
    sizes = {}
    for recipe in ("minmax-w8a8", "minmax-w4a8"):
        pipe = load_pipeline(embedded_model_path)
        reference = fp_reference(pipe, EvaluationSet(tuple(PROMPTS), tuple(SEEDS)), SPEC, None)
        result = quantize_pipeline(pipe, recipe, PROMPTS, SEEDS, SPEC)
        result.save(tmp_path / recipe)
        size = footprint(pipe.unet, result.precisions, reference.weights, reference.activations).size_bytes
        stored = (tmp_path / recipe / "unet" / STATE_FILE).stat().st_size
        sizes[recipe] = stored
        assert abs(stored - size) <= 0.10 * size, (recipe, stored, size)
    float_bytes = (embedded_model_path / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert sizes["minmax-w8a8"] < 0.32 * float_bytes and sizes["minmax-w4a8"] < 0.62 * sizes["minmax-w8a8"]


@pytest.fixture(scope="module")
def saved(sd_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "q"
    _quantize_and_save(sd_dir, "minmax-w8a8", folder)
    return folder


def test_a_float_folder_with_a_brevitas_config_is_refused(sd_dir):
    from diffusers import (
        PipelineQuantizationConfig,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    with pytest.raises(ModelError) as error:
        UNet2DConditionModel.from_pretrained(sd_dir, subfolder="unet",
                                             quantization_config=brevitas_ldm.BrevitasConfig())
    assert "brevitas-ldm quantize" in _one_line(error) and "quantize_pipeline" in str(error.value)
    assert "calibration data" in str(error.value)
    with pytest.raises(ModelError, match="brevitas-ldm quantize"):
        StableDiffusionPipeline.from_pretrained(sd_dir, quantization_config=PipelineQuantizationConfig(
            quant_mapping={"unet": brevitas_ldm.BrevitasConfig()}))


def _tampered(saved, tmp_path, change):
    folder = tmp_path / "t"
    shutil.copytree(saved, folder)
    change(folder / "unet")
    return folder


def _config_change(**changes):
    def change(unet):
        config = json.loads((unet / "config.json").read_text())
        for key, value in changes.items():
            config["quantization_config"][key] = value(config["quantization_config"][key])
        (unet / "config.json").write_text(json.dumps(config))
    return change


def _flip_a_code(unet):
    path = unet / STATE_FILE
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(path))
    key = next(k for k in sorted(state) if k.endswith(".weight_codes"))
    state[key] = state[key].clone()
    state[key].view(-1)[0] += 1
    save_file(state, str(path), metadata=metadata)     # the header keeps the SHA-256 of the original tensors


@pytest.mark.parametrize(("case", "change", "needles"), [
    ("older format", _config_change(format_version=lambda v: 2), ("config.json", "format version 2")),
    ("unknown layer", _config_change(precisions=lambda p: {**p, "down_blocks.9.conv": "w8a8"}),
     ("config.json", "down_blocks.9.conv")),
    ("tampered codes", _flip_a_code, (STATE_FILE, "changed after it was written")),
])
def test_bad_folders_are_refused_in_one_line_naming_the_file(case, change, needles, saved, tmp_path):
    from diffusers import DiffusionPipeline

    folder = _tampered(saved, tmp_path, change)
    with pytest.raises(ModelError) as error:
        DiffusionPipeline.from_pretrained(folder)
    message = _one_line(error)
    for needle in needles:
        assert needle in message, (case, message)
    with pytest.raises(ModelError) as error:     # the alias checks meta.json's file hashes first
        brevitas_ldm.from_pretrained(folder)
    assert needles[0] in _one_line(error)


def test_the_weights_file_is_the_same_bytes_whatever_the_process(tmp_path):
    """The safetensors library writes its metadata map in a per-process hash order: two runs saving the same model
    must still write the same file (its SHA-256 is recorded in meta.json and compared across ranks and runs)."""
    state = {"b.weight": torch.arange(6, dtype=torch.int8).reshape(2, 3), "a.scale": torch.ones(3)}
    metadata = {"format": "pt", "brevitas_ldm.sha256": "0" * 64, "z": "1", "m": "2"}
    script = ("import sys, torch; from pathlib import Path; from brevitas_ldm.io import write_safetensors_atomic;"
              "write_safetensors_atomic(Path(sys.argv[1]), {'b.weight': torch.arange(6, dtype=torch.int8)"
              ".reshape(2, 3), 'a.scale': torch.ones(3)}, {'format': 'pt', 'brevitas_ldm.sha256': '0' * 64, "
              "'z': '1', 'm': '2'})")
    digests = set()
    for run in range(4):            # other processes, other hash seeds
        target = tmp_path / f"{run}.safetensors"
        subprocess.run([sys.executable, "-c", script, str(target)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": str(run)})
        digests.add(hashlib.sha256(target.read_bytes()).hexdigest())
    write_safetensors_atomic(tmp_path / "here.safetensors", state, metadata)
    digests.add(hashlib.sha256((tmp_path / "here.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1
    with safe_open(str(tmp_path / "here.safetensors"), "pt") as handle:
        assert handle.metadata() == metadata and torch.equal(handle.get_tensor("b.weight"), state["b.weight"])
