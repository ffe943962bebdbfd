"""The main job end to end on a random-weight SD pipeline directory (any SD-style model must work)."""

import json
import math
import os

import pytest
import torch
from cli_args import FAST

from brevitas_ldm.checkpoint.folder import load_quantized
from brevitas_ldm.cli import main
from brevitas_ldm.denoiser.loading import load_pipeline
from brevitas_ldm.denoiser.sampling import SamplingSpec, generate
from brevitas_ldm.export import emulator_available
from brevitas_ldm.workflow import quantize_pipeline
from brevitas_ldm.zoo.tiny import tiny_sd_pipeline


@pytest.fixture(scope="module")
def quantized_run(sd_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "q"
    assert main(["quantize", "--model", str(sd_dir), "--recipe", "minmax-w8a8", "--out", str(out), *FAST]) == 0
    return out


def test_quantize_job_writes_every_output(quantized_run):
    metrics = json.loads((quantized_run / "metrics.json").read_text())
    for key in ("model", "recipe", "seed", "num_samples", "steps", "fp", "quantized", "timing_s", "denoiser_calls"):
        assert key in metrics
    q = metrics["quantized"]
    # A random-weight model has no digits evaluator: the SQNR/PSNR figures are there, the digits ones are not.
    assert "digits_fid" not in q and "prompt_accuracy" not in q
    assert 10.0 < q["output_sqnr_db"] < 80.0 and math.isfinite(q["image_psnr_db"])
    assert q["avg_weight_bits"] == 8.0 and q["avg_act_bits"] == 8.0
    # int8 weights (+ a float scale per output channel), biases and norms in float: a quarter of the FP32 bytes
    float_bytes = 4 * sum(p.numel() for p in tiny_sd_pipeline().unet.parameters())
    assert 0.25 * float_bytes < q["size_bytes"] < 0.30 * float_bytes
    # ... and the checkpoint's denoiser file, integer codes with their scales, is that size (report: both)
    assert abs(q["checkpoint_bytes"] - q["size_bytes"]) <= 0.10 * q["size_bytes"]
    assert set(metrics["timing_s"]) >= {"analysis", "smoothing", "calibration", "evaluation"}
    # All-steps calibration of 2 prompts (one batch) over 3 steps: 3 denoiser calls.
    assert metrics["denoiser_calls"]["calibration"] == 3
    assert len(metrics["per_step_sqnr_db"]) == 3
    for name in ("report.md", "plan.json", "layer_precisions.json", "figures/samples.png",
                 "figures/per_step_sqnr.png", "checkpoint/model_index.json", "checkpoint/unet/config.json",
                 "checkpoint/unet/diffusion_pytorch_model.safetensors"):
        assert (quantized_run / name).is_file(), name
    report = (quantized_run / "report.md").read_text()
    assert "minmax-w8a8" in report and "output_sqnr_db" in report and "figures/samples.png" in report
    assert f"| checkpoint_bytes | – | {q['checkpoint_bytes']:,} |" in report
    assert not list(quantized_run.parent.glob(".q.partial-*"))
    umask = os.umask(0)
    os.umask(umask)
    assert quantized_run.stat().st_mode & 0o777 == 0o777 & ~umask     # the user's normal mode, not mkdtemp's 0700
    for path in quantized_run.rglob("*"):                               # and every file, folder inside alike
        if path.is_file() and path.stat().st_nlink > 1:
            continue        # a base component hard-linked into checkpoint/: the base's own file and mode
        assert path.stat().st_mode & 0o777 == (0o777 if path.is_dir() else 0o666) & ~umask, path


@torch.no_grad()
def test_checkpoint_reload_gives_bit_identical_latents(sd_dir, tmp_path):
    pipe = load_pipeline(sd_dir)
    spec = SamplingSpec(num_inference_steps=3, batch_size=2)
    result = quantize_pipeline(pipe, "smoothquant-w8a8", ["digit one", "digit two"], [5, 6], spec)
    assert result.smoothing.layers, "smoothquant-w8a8 smooths every activation-quantized layer"
    # SmoothQuant renames layers internally (x -> x.layer); the size must still count them as 8-bit.
    from brevitas_ldm.quant.footprint import footprint, weight_elements

    fp_pipe = load_pipeline(sd_dir)
    size = footprint(pipe.unet, result.precisions, weight_elements(fp_pipe.unet), {}).size_bytes
    assert size < 0.35 * sum(p.numel() for p in fp_pipe.unet.parameters()) * 4
    result.save(tmp_path / "ckpt")
    prompts, seeds = ["a handwritten digit seven", "digit nine"], [1, 2]
    expected = generate(pipe, prompts, seeds, spec)
    reloaded = load_quantized(load_pipeline(sd_dir), tmp_path / "ckpt")
    assert torch.equal(generate(reloaded, prompts, seeds, spec), expected)


def test_evaluate_checkpoint_matches_the_job(sd_dir, quantized_run, tmp_path):
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", str(sd_dir), "--checkpoint", str(quantized_run / "checkpoint"),
                 "--out", str(out), "--num-samples", "4", "--steps", "3", "--batch-size", "4"]) == 0
    job = json.loads((quantized_run / "metrics.json").read_text())["quantized"]
    again = json.loads((out / "metrics.json").read_text())["quantized"]
    assert again["output_sqnr_db"] == pytest.approx(job["output_sqnr_db"], abs=1e-9)


def _error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and "Traceback" not in err, err
    err = error_lines[0]
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_input_gives_one_line_errors(sd_dir, quantized_run, tmp_path, capsys):
    out = str(tmp_path / "o")
    _error(capsys, ["quantize", "--model", str(tmp_path / "missing"), "--out", out], "does not exist")
    (tmp_path / "notmodel").mkdir()
    _error(capsys, ["quantize", "--model", str(tmp_path / "notmodel"), "--out", out], "not a diffusers pipeline")
    _error(capsys, ["quantize", "--model", str(sd_dir), "--recipe", "nope", "--out", out], "unknown recipe 'nope'")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[weights]\nbitz = 8\n')
    _error(capsys, ["quantize", "--model", str(sd_dir), "--recipe", str(bad), "--out", out], "weights.'bitz'")
    bad.write_text('name = "bad"\n[activations]\nbits = 32\n')
    _error(capsys, ["quantize", "--model", str(sd_dir), "--recipe", str(bad), "--out", out], "activations.bits = 32")
    _error(capsys, ["quantize", "--model", str(sd_dir), "--out", str(quantized_run)], "not empty", "--overwrite")
    _error(capsys, ["quantize", "--model", str(sd_dir), "--out", out, "--num-samples", "0"], "--num-samples 0")
    assert not (tmp_path / "o").exists()


def test_checkpoint_for_another_model_is_rejected(quantized_run, tmp_path, capsys):
    other = tmp_path / "other"
    from diffusers import UNet2DConditionModel

    pipe = tiny_sd_pipeline()
    pipe.unet = UNet2DConditionModel(  # same class, other widths: a different model
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
    pipe.save_pretrained(str(other))
    _error(capsys, ["evaluate", "--model", str(other), "--checkpoint", str(quantized_run / "checkpoint"),
                    "--out", str(tmp_path / "e"), "--num-samples", "2", "--steps", "2"],
           "do not match this model", "block_out_channels")


def test_nan_model_is_a_clear_error(tmp_path, capsys):
    pipe = tiny_sd_pipeline()
    with torch.no_grad():
        pipe.unet.conv_in.weight[0, 0, 0, 0] = float("nan")
    pipe.save_pretrained(str(tmp_path / "nan"))
    _error(capsys, ["quantize", "--model", str(tmp_path / "nan"), "--recipe", "minmax-w8a8",
                    "--out", str(tmp_path / "o"), *FAST], "NaN")
    assert not (tmp_path / "o").exists()


def test_interrupted_run_leaves_nothing_behind(sd_dir, tmp_path, monkeypatch, capsys):
    import brevitas_ldm.report

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt  # the user pressing Ctrl-C while the report is written

    monkeypatch.setattr(brevitas_ldm.report, "write_report", interrupt)
    out = tmp_path / "run"
    assert main(["quantize", "--model", str(sd_dir), "--recipe", "minmax-w8a8", "--out", str(out), *FAST]) == 130
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_export_command_writes_a_verified_onnx_file(sd_dir, quantized_run, tmp_path, capsys):
    out = tmp_path / "onnx"
    # The check runs on the first call of a real 20-step run (maximum noise), where this random-weight UNet's own
    # W8A8 noise is ~25 dB and one-step rounding flips leave onnxruntime ~30 dB from torch: 27 dB, not the default 30.
    assert main(["export", "--model", str(sd_dir), "--checkpoint", str(quantized_run / "checkpoint"),
                 "--format", "onnx-qcdq", "--out", str(out), "--float-baseline", "--min-sqnr-db", "27"]) == 0
    summary = json.loads((out / "export.json").read_text())
    assert summary["verification"]["sqnr_db"] >= 27.0
    assert 0.2 < summary["size_ratio"] < 0.5  # int8 weights vs float32
    assert (out / "denoiser.onnx").is_file() and (out / "denoiser_fp32.onnx").is_file()
    assert summary["weight_storage"] == "portable" and summary["cpu"]["onnxruntime"]
    assert set(summary["verification"]["cpu"]) >= {"model", "isa_flags", "vnni", "onnxruntime"}
    assert summary["kernels"]["float"]["Conv"] + summary["kernels"]["float"].get("FusedConv", 0) >= 1
    _error(capsys, ["export", "--model", str(sd_dir), "--checkpoint", str(tmp_path / "none"), "--out",
                    str(tmp_path / "x")], "not a brevitas-ldm checkpoint")


@pytest.mark.slow  # the export command end to end in OpenVINO
def test_export_command_writes_verified_openvino_ir(sd_dir, quantized_run, tmp_path, capsys):
    from brevitas_ldm.export import cpu_info

    base = ["export", "--model", str(sd_dir), "--checkpoint", str(quantized_run / "checkpoint"), "--format", "openvino"]
    # 8-bit weights: OpenVINO's AVX2 int8 kernels saturate them (7.8 dB), so only a VNNI/AMX CPU can pass them
    _error(capsys, [*base, "--out", str(tmp_path / "avx2"), "--emulate-cpu", "Haswell", "--min-sqnr-db", "27"],
           "Haswell (emulated)", "no VNNI", "7-bit weights")
    if not cpu_info().has_vnni:
        _error(capsys, [*base, "--out", str(tmp_path / "native")], "no VNNI", "7-bit weights")
        return
    out = tmp_path / "ov"
    assert main([*base, "--out", str(out), "--float-baseline", "--min-sqnr-db", "27"]) == 0
    summary = json.loads((out / "export.json").read_text())
    assert (out / "denoiser.xml").is_file() and (out / "denoiser.bin").is_file()
    assert summary["verification"]["sqnr_db"] >= 27.0 and summary["verification"]["inference_precision"] == "f32"
    precisions = _flat_precisions(json.loads((quantized_run / "layer_precisions.json").read_text()))
    # every W8A8 Conv and Linear runs an integer kernel in OpenVINO, read from its compiled runtime model
    assert sum(summary["kernels"]["integer"].values()) == list(precisions.values()).count("w8a8") == 83
    assert not summary["kernels"]["float"] and summary["kernels"]["inference_precision"] == "f32"
    assert summary["latency"]["inference_precision"] == "f32" and summary["latency_default_precision"]["median_ms"] > 0
    assert 0.2 < summary["weights_ratio"] < 0.3 and summary["openvino"]      # int8 weights (.bin) vs float32
    assert "OpenVINO, float parts in f32" in capsys.readouterr().out
    refused = tmp_path / "refused"
    _error(capsys, [*base, "--out", str(refused), "--min-sqnr-db", "60"], "about as loud", "--min-sqnr-db")
    assert not refused.exists() and not (tmp_path / "avx2").exists()


def test_analyze_command_writes_reports_and_reuses_its_cache(sd_dir, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "tiny-hybrid"\n[analysis]\nglobal = true\nlocal = true\nnum_prompts = 2\n'
                      '[plan]\nmethod = "top_k"\ntop_k = 1\nhigh_precision = "w8a16"\nmenu = ["w8a16", "w8a8"]\n')
    common = ["analyze", "--model", str(sd_dir), "--recipe", str(recipe), "--steps", "3", "--batch-size", "2",
              "--cache-dir", str(tmp_path / "cache")]
    assert main([*common, "--out", str(tmp_path / "a1")]) == 0
    summary = json.loads((tmp_path / "a1" / "analysis.json").read_text())
    assert not summary["global_from_cache"] and summary["denoiser_calls"]["global_analysis"] > 0
    assert list(summary["plan"]["precisions"].values()).count("w8a16") == 1
    for name in ("block_report.json", "layer_report.json", "plan.json", "report.md",
                 "global_progressive_sqnr.png", "layer_sqnr.png"):
        assert (tmp_path / "a1" / name).is_file(), name
    assert main([*common, "--out", str(tmp_path / "a2")]) == 0
    again = json.loads((tmp_path / "a2" / "analysis.json").read_text())
    assert again["global_from_cache"] and again["plan"]["precisions"] == summary["plan"]["precisions"]


def test_export_command_integer_kernels_on_both_cpu_kinds(sd_dir, quantized_run, tmp_path, capsys):
    base = ["export", "--model", str(sd_dir), "--checkpoint", str(quantized_run / "checkpoint"), "--min-sqnr-db", "27"]
    emulate = ["--emulate-cpu", "Haswell"] if emulator_available() else []
    out = tmp_path / "int8"
    assert main([*base, "--format", "onnx-int8", "--out", str(out), *emulate]) == 0
    summary = json.loads((out / "export.json").read_text())
    precisions = json.loads((quantized_run / "layer_precisions.json").read_text())
    w8a8 = [name for name, precision in _flat_precisions(precisions).items() if precision == "w8a8"]
    # every W8A8 Conv and Linear of the plan runs as an integer kernel after onnxruntime's optimizer
    assert sum(summary["kernels"]["integer"].values()) == len(w8a8) == 83
    assert not summary["kernels"]["float"].get("Conv") and not summary["kernels"]["float"].get("Gemm")
    assert summary["verification"]["sqnr_db"] >= 27.0
    if emulate:
        assert summary["emulated_verification"]["cpu"]["isa_flags"] == ["avx2"]
        assert summary["emulated_verification"]["sqnr_db"] >= 27.0
        # the int8 weight storage is refused on an AVX2 CPU, with the cause and the fix, and nothing is written
        refused = tmp_path / "refused"
        _error(capsys, [*base, "--format", "onnx-qcdq", "--weight-storage", "int8", "--out", str(refused), *emulate],
               "not the measured model on Haswell", "no VNNI", "weight_storage='portable'")
        assert not refused.exists()
    _error(capsys, [*base, "--format", "onnx-int8", "--weight-storage", "int8", "--out", str(tmp_path / "y")],
           "--weight-storage portable")


def _flat_precisions(saved: dict) -> dict:
    """layer_precisions.json as {layer: precision} whatever nesting the file uses."""
    return saved.get("precisions", saved) if isinstance(saved, dict) else {}


def test_bad_sampling_inputs_fail_before_any_work(tmp_path, capsys):
    out = tmp_path / "never"
    base = ["quantize", "--model", "tiny-sd-digits", "--recipe", "minmax-w8a8", "--out", str(out)]
    _error(capsys, [*base, "--num-samples", "1"], "--num-samples 1 is too few", "digits-FID", "--num-samples 2")
    _error(capsys, [*base, "--seed", str(2**70)], "--seed", "out of range")
    _error(capsys, [*base, "--seed", "-1"], "--seed -1 is out of range")
    assert not out.exists() and list(tmp_path.iterdir()) == []
