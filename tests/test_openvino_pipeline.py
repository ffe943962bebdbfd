"""``export --format openvino --pipeline``: the whole StableDiffusionPipeline as the OpenVINO folder optimum-intel
loads.

The embedded tiny-sd-digits model, quantized at W7A8 (7-bit weights: exact in OpenVINO on AVX2 and VNNI CPUs alike,
so the export passes on whichever kind runs the suite). Every component is checked in OpenVINO at f32 against the
torch module it came from; the unet folder holds the very IR the export verified and counted. The test marked
``pipeline`` loads the folder with optimum-intel's ``OVDiffusionPipeline.from_pretrained`` and generates images
offline, compared with the torch quantized pipeline at the same seed: optimum-intel 2.2 pins transformers below 5.6,
so it runs in ``tox -e pipeline`` (constraints-pipeline.txt), not in the main environment.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_args import FAST, one_line_error
from transformers import CLIPTokenizer

from brevitas_ldm.cli import main
from brevitas_ldm.commands.export import PIPELINE_FOLDER, PIPELINE_LOADER
from brevitas_ldm.denoiser.loading import load_pipeline, pipeline_class_name
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.export.openvino_ir import ir_size_bytes
from brevitas_ldm.export.openvino_pipeline import OV_MODEL_FILE, UNET_OUTPUT, check_pipeline_class
from brevitas_ldm.export.openvino_runtime import openvino_kernel_counts
from brevitas_ldm.zoo.families import save_family

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")

MODEL = "tiny-sd-digits"
COMPONENTS = ("unet", "text_encoder", "vae_decoder", "vae_encoder")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple:
    """(quantize --out folder, export --out folder) for tiny-sd-digits at W7A8."""
    tmp = tmp_path_factory.mktemp("ovpipe")
    recipe = tmp / "w7a8.toml"
    recipe.write_text('name = "w7a8"\n[weights]\nbits = 7\n[calibration]\nmode = "all_steps"\n')
    run = tmp / "q"
    assert main(["quantize", "--model", MODEL, "--recipe", str(recipe), "--out", str(run), *FAST]) == 0
    out = tmp / "ov"
    assert main(["export", "--model", str(run), "--format", "openvino", "--pipeline", "--out", str(out)]) == 0
    return run, out


def _compiled(path):
    import openvino

    return openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                            "INFERENCE_NUM_THREADS": 1})


def _run(path, array: np.ndarray) -> dict[str, np.ndarray]:
    compiled = _compiled(path)
    result = compiled(array)
    return {name: result[port] for port in compiled.outputs for name in port.get_names()}


def _max_relative_error(got: np.ndarray, want: torch.Tensor) -> float:
    want = want.detach().numpy()
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_folder_is_optimum_intels_layout_and_export_json_says_how_to_load_it(exported):
    run, out = exported
    folder = out / PIPELINE_FOLDER
    summary = json.loads((out / "export.json").read_text())
    assert summary["pipeline"]["folder"] == PIPELINE_FOLDER and summary["pipeline"]["loader"] == PIPELINE_LOADER
    sizes = summary["pipeline"]["size_bytes"]
    assert set(sizes) == set(COMPONENTS)
    for name in COMPONENTS:
        xml = folder / name / OV_MODEL_FILE
        assert xml.with_suffix(".bin").is_file() and (folder / name / "config.json").is_file(), name
        assert sizes[name] == ir_size_bytes(xml), name
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert (folder / "scheduler" / "scheduler_config.json").is_file()
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    assert tokenizer("a handwritten digit seven").input_ids == [569, 320, 521, 525, 548, 570]
    # the unet is the verified denoiser file (int8 codes); the float parts hold every float32 weight (4 bytes each)
    unet_bin = (folder / "unet" / OV_MODEL_FILE).with_suffix(".bin")
    assert unet_bin.read_bytes() == (out / "denoiser.bin").read_bytes()
    pipe = load_pipeline(MODEL)
    float_bytes = {name: 4 * sum(p.numel() for p in getattr(pipe, name).parameters())
                   for name in ("unet", "vae", "text_encoder")}
    assert unet_bin.stat().st_size < 0.3 * float_bytes["unet"]                   # measured 0.26
    vae_bins = sum((folder / name / OV_MODEL_FILE).with_suffix(".bin").stat().st_size
                   for name in ("vae_decoder", "vae_encoder"))
    assert float_bytes["vae"] <= vae_bins < 1.01 * float_bytes["vae"]
    text_bin = (folder / "text_encoder" / OV_MODEL_FILE).with_suffix(".bin").stat().st_size
    assert float_bytes["text_encoder"] <= text_bin < 1.01 * float_bytes["text_encoder"]


def test_unet_is_the_verified_integer_ir_under_optimum_intels_output_name(exported):
    _, out = exported
    unet_xml = out / PIPELINE_FOLDER / "unet" / OV_MODEL_FILE
    summary = json.loads((out / "export.json").read_text())
    kernels = openvino_kernel_counts(unet_xml)
    assert kernels["integer"] == summary["kernels"]["integer"] and sum(kernels["integer"].values()) >= 80
    assert kernels["inference_precision"] == "f32"
    compiled = _compiled(unet_xml)
    assert compiled.outputs[0].get_names() == {UNET_OUTPUT}
    reference = _compiled(out / "denoiser.xml")
    rng = np.random.default_rng(0)
    feed = {}
    for port in reference.inputs:
        shape = [2 if dim.is_dynamic else dim.get_length() for dim in port.get_partial_shape()]
        kind = port.get_element_type().get_type_name()
        feed[port.get_any_name()] = (np.full(shape, 500, np.int64) if kind.startswith("i") else
                                     rng.standard_normal(shape).astype(np.float32))
    assert np.array_equal(compiled(feed)[0], reference(feed)[0])        # the same IR, renamed output only


def test_float_components_match_their_torch_modules_at_other_batch_and_sizes(exported):
    run, out = exported
    folder = out / PIPELINE_FOLDER
    pipe = load_pipeline(MODEL)
    ids = pipe.tokenizer(["a handwritten digit seven", "digit two"], padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        text = pipe.text_encoder(ids)
    got = _run(folder / "text_encoder" / OV_MODEL_FILE, ids.numpy())
    assert _max_relative_error(got["last_hidden_state"], text.last_hidden_state) < 1e-5
    assert _max_relative_error(got["pooler_output"], text.pooler_output) < 1e-5

    size = pipe.unet.config.sample_size + 4           # not the size it was converted at
    latents = torch.randn(3, pipe.vae.config.latent_channels, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image = pipe.vae.decode(latents, return_dict=False)[0]
        parameters = pipe.vae.encode(image, return_dict=False)[0].parameters
    decoded = _run(folder / "vae_decoder" / OV_MODEL_FILE, latents.numpy())["sample"]
    assert decoded.shape == tuple(image.shape) and _max_relative_error(decoded, image) < 1e-4
    encoded = _run(folder / "vae_encoder" / OV_MODEL_FILE, image.numpy())["latent_parameters"]
    assert encoded.shape == tuple(parameters.shape) and _max_relative_error(encoded, parameters) < 1e-4


def test_pipeline_option_is_refused_up_front_for_other_formats_and_pipelines(exported, tmp_path, capsys,
                                                                             no_model_loading):
    run, _ = exported
    one_line_error(capsys, ["export", "--model", str(run), "--format", "onnx-int8", "--pipeline",
                            "--out", str(tmp_path / "x")], "--pipeline", "--format openvino")
    assert not (tmp_path / "x").exists()
    dit = save_family("dit", tmp_path / "dit")
    with pytest.raises(BrevitasLDMError, match="not DiTPipeline.*drop --pipeline"):
        check_pipeline_class(pipeline_class_name(dit))


def _psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.mark.pipeline  # optimum-intel: tox -e pipeline
def test_optimum_intel_loads_the_folder_and_generates_the_torch_quantized_images(exported):
    from optimum.intel import OVDiffusionPipeline

    import brevitas_ldm
    from brevitas_ldm.evaluation.class_evaluator import evaluator_for

    run, out = exported
    ov_pipe = OVDiffusionPipeline.from_pretrained(str(out / PIPELINE_FOLDER),
                                                  ov_config={"INFERENCE_PRECISION_HINT": "f32"})
    assert type(ov_pipe).__name__ == "OVStableDiffusionPipeline"
    labels = list(range(10))
    prompts = [f"a handwritten digit {word}" for word in
               ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")]
    call = {"num_inference_steps": 10, "guidance_scale": 2.0, "output_type": "np"}
    ov_images = ov_pipe(prompts, generator=torch.Generator().manual_seed(3), **call).images
    torch_images = {}
    for name, pipe in (("quantized", brevitas_ldm.from_pretrained(run)), ("fp", load_pipeline(MODEL))):
        pipe.set_progress_bar_config(disable=True)
        torch_images[name] = pipe(prompts, generator=torch.Generator().manual_seed(3), **call).images
    assert ov_images.shape == torch_images["quantized"].shape == (10, 32, 32, 3)
    to_quantized, to_fp = _psnr_db(ov_images, torch_images["quantized"]), _psnr_db(ov_images, torch_images["fp"])
    assert to_quantized >= 35.0 and to_quantized > to_fp + 3.0, (to_quantized, to_fp)
    evaluator = evaluator_for(MODEL)
    accuracy = evaluator.prompt_accuracy(torch.from_numpy(ov_images).permute(0, 3, 1, 2), labels)
    assert accuracy >= 0.8, accuracy
