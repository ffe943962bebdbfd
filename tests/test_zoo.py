"""The embedded tiny-sd-digits model and the evaluation that judges every quantized model."""


import numpy as np
import pytest
import torch

from brevitas_ldm.denoiser.loading import load_pipeline
from brevitas_ldm.denoiser.sampling import SamplingSpec
from brevitas_ldm.evaluation.digits import DigitsEvaluator
from brevitas_ldm.evaluation.fid import frechet_distance
from brevitas_ldm.evaluation.prompts import evaluation_set
from brevitas_ldm.evaluation.run import generate_with_latents


def test_embedded_model_is_a_real_sd_pipeline_that_loads_offline_fast(embedded_model_path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(embedded_model_path), local_files_only=True)
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"
    assert len(pipe.unet.config.block_out_channels) >= 2
    assert "CrossAttnDownBlock2D" in pipe.unet.config.down_block_types
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert 500_000 < sum(p.numel() for p in pipe.unet.parameters()) < 5_000_000
    size = sum(f.stat().st_size for f in embedded_model_path.rglob("*") if f.is_file())
    assert size < 15 * 2**20
    for name in ("vocab.json", "merges.txt"):
        assert (embedded_model_path / "tokenizer" / name).is_file()
    ids = pipe.tokenizer("a handwritten digit seven").input_ids
    assert pipe.tokenizer.convert_ids_to_tokens(ids)[1:5] == ["a</w>", "handwritten</w>", "digit</w>", "seven</w>"]
    loaded = load_pipeline("tiny-sd-digits")
    assert type(loaded).__name__ == "StableDiffusionPipeline" and loaded.unet.dtype == torch.float32


@torch.no_grad()
def test_short_generation_is_deterministic_and_draws_the_asked_digit():
    pipe = load_pipeline("tiny-sd-digits")
    eval_set = evaluation_set(20, seed=3)
    spec = SamplingSpec(num_inference_steps=10, guidance_scale=2.0, batch_size=10)
    first = generate_with_latents(pipe, eval_set, spec)
    second = generate_with_latents(pipe, eval_set, spec)
    assert torch.equal(first.latents, second.latents)
    # Batching does not change a sample: one generator per sample, seeded by its own seed.
    regrouped = generate_with_latents(pipe, eval_set, SamplingSpec(10, 2.0, batch_size=7))
    assert torch.allclose(regrouped.latents, first.latents, atol=1e-5)
    evaluator = DigitsEvaluator()
    assert evaluator.prompt_accuracy(first.images, eval_set.labels) >= 0.9


def test_evaluator_is_accurate_on_real_digits_and_at_chance_on_noise():
    evaluator = DigitsEvaluator()
    assert evaluator.heldout_accuracy() >= 0.97
    noise = torch.rand(500, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = [i % 10 for i in range(500)]
    assert evaluator.prompt_accuracy(noise, labels) < 0.25
    baselines = evaluator.baselines()
    assert baselines["real_train_vs_heldout"] < 5.0 < 20.0 < baselines["class_mean_images"]


def test_frechet_distance_properties():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2000, 8))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    distances = [frechet_distance(features, features + shift) for shift in (0.5, 1.0, 2.0)]
    # A mean shift s in every one of 8 dimensions adds 8 s^2.
    assert distances == pytest.approx([8 * 0.25, 8 * 1.0, 8 * 4.0], rel=1e-3)
    assert frechet_distance(features, features * 2.0) > 5.0
