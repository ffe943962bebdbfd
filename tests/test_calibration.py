import pytest
import torch

from brevitas_ldm.errors import CalibrationError
from brevitas_ldm.quant.calibration import (
    multi_step_calibration,
    single_step_calibration,
    uniform_step_indices,
)
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


def _timestep_layer_inputs(pipe, steps):
    """Per timestep-only layer, the largest |input| at each sampling step of a float run of PROMPTS[0]."""
    from brevitas_ldm.denoiser.blocks import quantizable_layers
    from brevitas_ldm.denoiser.layer_categories import layer_category

    peaks, hooks = {}, []
    for name, layer in quantizable_layers(pipe.unet):
        if layer_category(name) == "time_embedding":
            hooks.append(layer.register_forward_pre_hook(
                lambda m, args, name=name: peaks.setdefault(name, []).append(args[0].abs().max().item())))
    _run(pipe, steps, batches=PROMPTS[:1])
    for hook in hooks:
        hook.remove()
    return peaks


def _timestep_layer_error_db(float_pipe, pipe, steps):
    """Output SQNR (dB) of the time embedding over a whole sampling run, quantized against float."""
    outputs = {}
    for key, unet in (("fp", float_pipe.unet), ("q", pipe.unet)):
        handle = unet.time_embedding.register_forward_hook(lambda m, a, out, key=key: outputs.setdefault(key, [])
                                                           .append(out.detach()))
        _run(float_pipe if key == "fp" else pipe, steps, batches=PROMPTS[:1])
        handle.remove()
    from brevitas_ldm.sqnr import sqnr_db

    return sqnr_db(torch.cat(outputs["fp"]), torch.cat(outputs["q"]))


@torch.no_grad()
def test_every_step_timestep_layers_cover_the_schedule_and_lower_their_error():
    steps = 6
    float_pipe = tiny_sd_pipeline()
    peaks = _timestep_layer_inputs(float_pipe, steps)
    assert len(peaks) == 10      # time_embedding.linear_1/2 and eight resnets' time_emb_proj
    ranges, scales, errors = {}, {}, {}
    for mode in ("calibration_steps", "every_step"):
        pipe = _quantized_pipeline()
        with single_step_calibration(pipe.unet, timestep_layers=mode) as calibration:
            _run(pipe, steps)
        # Still one full denoiser call per batch; the sweep adds one one-row call per later step of the first run.
        assert calibration.observed_calls == len(PROMPTS)
        assert calibration.sweep_calls == (steps - 1 if mode == "every_step" else 0)
        assert calibration.calls == len(PROMPTS) + calibration.sweep_calls
        layers = quant_layers(pipe.unet)
        # Brevitas' signed 8-bit activation scale is the calibrated max |x| / 2^7.
        ranges[mode] = {name: layers[name].input_quant.scale().item() * 128 for name in peaks}
        scales[mode] = {name: value for name, value in _act_scales(pipe.unet).items() if name not in peaks}
        errors[mode] = _timestep_layer_error_db(float_pipe, pipe, steps)
    # Every later step's input fits the every-step range (min-max); t = T alone clips some of them.
    for name, seen in peaks.items():
        assert ranges["every_step"][name] >= max(seen[1:]) * (1 - 1e-5), name
    assert any(ranges["calibration_steps"][name] < max(seen[1:]) * 0.95 for name, seen in peaks.items())
    # The other layers are calibrated exactly as before; the time embedding's error over the run drops.
    assert scales["every_step"] == scales["calibration_steps"]
    assert errors["every_step"] > errors["calibration_steps"] + 3.0, errors


@torch.no_grad()
def test_every_step_sweep_is_off_for_bias_correction():
    pipe = _quantized_pipeline()
    with single_step_calibration(pipe.unet, timestep_layers="every_step", bias_correction=True) as correction:
        _run(pipe, 4)
    assert correction.sweep_calls == 0 and correction.calls == len(PROMPTS)
