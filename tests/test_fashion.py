"""The second embedded model, tiny-sd-fashion: it loads offline, is judged by its own evaluator, and runs the main
job like tiny-sd-digits (the Fashion-MNIST data itself is a build-time input and is never read here)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from brevitas_ldm.cli import main
from brevitas_ldm.denoiser.loading import load_pipeline, resolve_model_path
from brevitas_ldm.denoiser.sampling import SamplingSpec
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.evaluation.class_evaluator import evaluator_for
from brevitas_ldm.evaluation.prompts import calibration_set, evaluation_set
from brevitas_ldm.evaluation.run import generate_with_latents
from brevitas_ldm.zoo.catalog import default_prompt_for, embedded_model
from brevitas_ldm.zoo.fashion_data import (
    FASHION_NAMES,
    fashion_label_from_prompt,
    fashion_prompts,
    load_fashion,
    shift_augment,
)
from brevitas_ldm.zoo.tokenizer import build_vocab_and_merges

FASHION = "tiny-sd-fashion"


def test_fashion_model_is_a_bigger_sd_pipeline_stored_in_half_precision_that_loads_as_float32():
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    path = resolve_model_path(FASHION)
    stored = load_file(str(path / "unet" / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.float16}  # stored in half precision ...
    pipe = load_pipeline(FASHION)
    unet = pipe.unet
    assert unet.dtype == torch.float32                           # ... loaded as the same values in float32
    state = unet.state_dict()
    assert all(torch.equal(stored[name].float(), state[name]) for name in stored)
    assert isinstance(StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True),
                      StableDiffusionPipeline)
    assert type(pipe).__name__ == "StableDiffusionPipeline" and type(pipe.scheduler).__name__ == "DDIMScheduler"
    # Cross-attention at two resolutions (8x8 and 4x4) going down and coming up, and in the mid block.
    assert list(unet.config.down_block_types) == ["CrossAttnDownBlock2D"] * 2 + ["DownBlock2D"]
    assert list(unet.config.up_block_types) == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 2
    digits = load_pipeline("tiny-sd-digits").unet
    params = sum(p.numel() for p in unet.parameters())
    assert params > 2 * sum(p.numel() for p in digits.parameters()) and params < 8_000_000
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    classifier = embedded_model(FASHION).classifier_dir
    size += sum(f.stat().st_size for f in classifier.rglob("*") if f.is_file())
    assert size < 25 * 2**20
    tokens = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer("a photo of an ankle boot").input_ids)
    assert tokens[1:7] == ["a</w>", "photo</w>", "of</w>", "an</w>", "ankle</w>", "boot</w>"]
    assert pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer("t-shirt").input_ids)[1:4] == ["t</w>", "-</w>",
                                                                                                "shirt</w>"]


def test_prompts_name_the_class_and_are_read_back_whatever_the_phrasing():
    prompts = fashion_prompts()
    assert len(prompts) == 40 and len(set(prompts)) == 40
    assert [fashion_label_from_prompt(p) for p in prompts] == list(range(10)) * 4
    assert fashion_label_from_prompt("a shirt") == 6 and fashion_label_from_prompt("a t-shirt") == 0
    assert fashion_label_from_prompt("two trousers") == 1 and fashion_label_from_prompt("a boot") is None
    # The evaluation and calibration sets of the model cycle its own classes, and read labels its own way.
    eval_set = evaluation_set(12, model=FASHION)
    assert eval_set.prompts[9] == "a photo of an ankle boot" and eval_set.labels == [*range(10), 0, 1]
    assert calibration_set(3, model=FASHION).seeds == (10_000, 10_001, 10_002)
    assert default_prompt_for(FASHION, 13) == "a photo of a dress"
    assert evaluation_set(2).prompts == ("a handwritten digit zero", "a handwritten digit one")
    # A path to the embedded folder is the embedded model too.
    assert embedded_model(resolve_model_path(FASHION)).fid_key == "fashion_fid"


def test_digits_tokenizer_is_unchanged_by_the_generalised_vocabulary(embedded_model_path):
    vocab, merges = build_vocab_and_merges()
    assert vocab == json.loads((embedded_model_path / "tokenizer" / "vocab.json").read_text())
    shipped = (embedded_model_path / "tokenizer" / "merges.txt").read_text().splitlines()[1:]
    assert merges == [line for line in shipped if line]


def test_fashion_evaluator_uses_the_shipped_test_split_statistics():
    evaluator = evaluator_for(FASHION)
    assert evaluator.fid_key == "fashion_fid" and evaluator.fid_name == "fashion-FID"
    assert evaluator_for("tiny-sd-digits").fid_key == "digits_fid"
    mu, sigma = evaluator.reference_statistics
    assert mu.shape == (64,) and sigma.shape == (64, 64) and np.allclose(sigma, sigma.T)
    assert np.linalg.eigvalsh(sigma).min() > -1e-8
    assert evaluator.heldout_accuracy() >= 0.90
    baselines = evaluator.baselines()
    assert baselines["real_train_vs_heldout"] < 2.0 < 20.0 < baselines["class_mean_images"]
    noise = torch.rand(200, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert evaluator.prompt_accuracy(noise, [i % 10 for i in range(200)]) < 0.3
    assert evaluator.fid(noise) > baselines["class_mean_images"]
    with pytest.raises(BrevitasLDMError, match="names a class of tiny-sd-fashion"):
        evaluator.prompt_accuracy(noise[:2], [None, None])


@torch.no_grad()
def test_short_fashion_generation_is_deterministic_and_draws_the_asked_class():
    pipe = load_pipeline(FASHION)
    eval_set = evaluation_set(20, seed=3, model=FASHION)
    spec = SamplingSpec(num_inference_steps=10, guidance_scale=2.0, batch_size=10)
    first = generate_with_latents(pipe, eval_set, spec)
    second = generate_with_latents(pipe, eval_set, spec)
    assert torch.equal(first.latents, second.latents)
    # 10 steps, 20 samples (chance: 0.1; measured 1.00); 0.905 at 20 steps and 200 samples (docs/model.md).
    assert evaluator_for(FASHION).prompt_accuracy(first.images, eval_set.labels) >= 0.8


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_pads_to_32_and_names_the_missing_file(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 28, 28))
    for prefix, n in (("train", 6), ("t10k", 6)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images[:n])
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    split = load_fashion(tmp_path)
    assert split.train_images.shape == (6, 1, 32, 32) and split.heldout_labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert torch.all(split.train_images[:, :, :2] == -1.0)           # padded with the black background
    assert torch.allclose(split.train_images[0, 0, 2:30, 2:30], torch.from_numpy(images[0] / 127.5 - 1.0).float(),
                          atol=1e-6)
    shifted = shift_augment(split.train_images, torch.Generator().manual_seed(0))
    assert shifted.shape == split.train_images.shape
    assert not torch.equal(shifted, split.train_images) and shifted.min() >= -1.0 and shifted.max() <= 1.0
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(BrevitasLDMError, match="t10k-labels-idx1-ubyte.gz.*apt-get install dataset-fashion-mnist"):
        load_fashion(tmp_path)
    assert len(FASHION_NAMES) == 10


@pytest.mark.slow
def test_fashion_runs_the_main_job_with_its_own_metrics(tmp_path):
    out = tmp_path / "q"
    assert main(["quantize", "--model", FASHION, "--recipe", "minmax-w8a8", "--out", str(out), "--num-samples", "20",
                 "--steps", "10", "--batch-size", "20", "--calibration-prompts", "10"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == FASHION
    fp, q = metrics["fp"], metrics["quantized"]
    assert "digits_fid" not in q and q["fashion_fid"] > 0.0 and fp["fashion_fid"] > 0.0
    # 20 samples at 10 steps (chance 0.1; FP measures 0.905 at 200 samples and 20 steps, docs/model.md).
    assert fp["prompt_accuracy"] >= 0.8 and q["prompt_accuracy"] >= 0.75
    assert 10.0 < q["output_sqnr_db"] < 60.0
    assert q["avg_weight_bits"] == 8.0 and q["avg_act_bits"] == 8.0
    assert "fashion_fid" in (out / "report.md").read_text()
