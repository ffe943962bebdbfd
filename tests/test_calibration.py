import pytest
import torch

from brevitas_ldm.errors import CalibrationError
from brevitas_ldm.quant.calibration import multi_step_calibration, single_step_calibration, uniform_step_indices
from brevitas_ldm.quant.quantize import quant_layers, quantize_denoiser
from brevitas_ldm.recipe import get_recipe
from brevitas_ldm.zoo.tiny import tiny_sd_pipeline

PROMPTS = [["a handwritten digit seven", "digit two"], ["the handwritten number one", "digit nine"]]


def _quantized_pipeline():
    pipe = tiny_sd_pipeline()
    quantize_denoiser(pipe.unet, get_recipe("minmax-w8a8"))
    return pipe


def _run(pipe, steps, batches=PROMPTS, **kwargs):
    for index, prompts in enumerate(batches):
        pipe(prompts, num_inference_steps=steps, generator=torch.Generator().manual_seed(index),
             output_type="latent", **kwargs)


def _act_scales(unet):
    return {name: layer.input_quant.scale().item() for name, layer in quant_layers(unet).items()}


@torch.no_grad()
def test_single_step_scales_do_not_depend_on_the_number_of_steps():
    scales = {}
    for steps in (5, 50):
        pipe = _quantized_pipeline()
        seen_batch = []
        # Count executed forwards on a layer inside the denoiser (skipped calls never reach it).
        pipe.unet.conv_in.register_forward_pre_hook(lambda m, args: seen_batch.append(args[0].shape[0]))
        with single_step_calibration(pipe.unet) as calibration:
            _run(pipe, steps)
        # One denoiser call per calibration batch (classifier-free guidance doubles the batch inside the call).
        assert calibration.calls == len(PROMPTS)
        assert calibration.observed_calls == len(PROMPTS)
        assert calibration.skipped_calls == len(PROMPTS) * (steps - 1)
        assert seen_batch == [2 * len(PROMPTS[0])] * len(PROMPTS)
        scales[steps] = _act_scales(pipe.unet)
    assert scales[5] == scales[50]
    assert all(value > 0 for value in scales[5].values())


@torch.no_grad()
def test_multi_step_calibration_follows_the_trajectory():
    pipe = _quantized_pipeline()
    with multi_step_calibration(pipe.unet) as calibration:
        _run(pipe, 6)
    assert calibration.calls == calibration.observed_calls == 6 * len(PROMPTS)
    all_steps = _act_scales(pipe.unet)

    pipe = _quantized_pipeline()
    with multi_step_calibration(pipe.unet, steps=3, num_inference_steps=6) as calibration:
        _run(pipe, 6)
    assert calibration.calls == 6 * len(PROMPTS)
    assert calibration.observed_calls == 3 * len(PROMPTS)
    assert _act_scales(pipe.unet) != all_steps
    assert uniform_step_indices(20, 8) == [0, 3, 5, 8, 11, 14, 16, 19]
    assert uniform_step_indices(4, 8) == [0, 1, 2, 3]


@torch.no_grad()
def test_calibrated_pipeline_stays_close_to_float_and_single_step_is_cheaper():
    float_pipe = tiny_sd_pipeline()
    reference = float_pipe(PROMPTS[0], num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                           output_type="latent").images
    pipe = _quantized_pipeline()
    with single_step_calibration(pipe.unet):
        _run(pipe, 4)
    quantized = pipe(PROMPTS[0], num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                     output_type="latent").images
    from brevitas_ldm.sqnr import sqnr_db

    assert sqnr_db(reference, quantized) > 15.0


@torch.no_grad()
def test_nan_calibration_data_is_a_clear_error():
    pipe = _quantized_pipeline()
    bad_latents = torch.full((2, 4, 8, 8), float("nan"))
    with pytest.raises(CalibrationError, match="NaN/Inf"):
        with single_step_calibration(pipe.unet):
            pipe(PROMPTS[0], num_inference_steps=3, latents=bad_latents, output_type="latent")
    with pytest.raises(CalibrationError, match="saw no denoiser call"):
        with single_step_calibration(pipe.unet):
            pass
    with pytest.raises(CalibrationError, match="needs num_inference_steps"):
        multi_step_calibration(pipe.unet, steps=4)
