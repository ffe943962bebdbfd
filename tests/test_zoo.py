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


@pytest.mark.parametrize("name", ["tiny-sd-digits", "tiny-sd-fashion"])
def test_shipped_text_encoders_load_every_tensor_in_old_and_new_transformers(name, tmp_path):
    """transformers 5.2x saves CLIPTextModel without its ``text_model.`` prefix and 5.5 (optimum-intel 2.2's newest)
    then loads none of it: the shipped files carry the prefix, and both releases load all 36 tensors (tox -e
    pipeline runs this under 5.5)."""
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import CLIPTextModel

    from brevitas_ldm.zoo.catalog import CATALOG
    from brevitas_ldm.zoo.portable_weights import CLIP_TEXT_PREFIX, prefix_clip_text_keys

    shipped = CATALOG[name].pipeline_dir / "text_encoder"
    tensors = load_file(str(shipped / "model.safetensors"))
    assert len(tensors) == 36 and all(key.startswith(CLIP_TEXT_PREFIX) for key in tensors)
    model, info = CLIPTextModel.from_pretrained(str(shipped), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    embedding = model.get_input_embeddings().weight
    assert torch.equal(embedding, tensors[CLIP_TEXT_PREFIX + "embeddings.token_embedding.weight"])
    # a file as transformers 5.2x writes it: every key bare; the rewrite restores the shipped file's tensors
    bare = tmp_path / "text_encoder"
    shutil.copytree(shipped, bare)
    save_file({key.removeprefix(CLIP_TEXT_PREFIX): value for key, value in tensors.items()},
              str(bare / "model.safetensors"), metadata={"format": "pt"})
    assert prefix_clip_text_keys(bare) == 36 and prefix_clip_text_keys(bare) == 0
    rewritten = load_file(str(bare / "model.safetensors"))
    assert rewritten.keys() == tensors.keys() and all(torch.equal(rewritten[k], tensors[k]) for k in tensors)
    assert not list(bare.glob("*.portable"))
