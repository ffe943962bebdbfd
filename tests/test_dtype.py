"""--dtype and --device: the pipeline loads, is analysed, calibrated and evaluated in the dtype the user runs."""

import json

import pytest
import torch
from cli_args import FAST
from safetensors.torch import load_file

from brevitas_ldm.cli import main
from brevitas_ldm.denoiser.loading import load_pipeline, resolve_device


def test_bfloat16_job_runs_in_bfloat16_and_reloads_in_it(sd_dir, tmp_path, capsys):
    out = tmp_path / "q"
    recipe = tmp_path / "hybrid.toml"
    recipe.write_text('name = "tiny-hybrid"\n[calibration]\nmode = "single_step"\n[analysis]\nglobal = true\n'
                      'num_prompts = 2\n[plan]\nmethod = "top_k"\ntop_k = 1\nhigh_precision = "w8a16"\n'
                      'menu = ["w8a16", "w8a8"]\n')
    assert main(["quantize", "--model", str(sd_dir), "--dtype", "bfloat16", "--recipe", str(recipe), "--out", str(out),
                 *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dtype"] == "bfloat16" and metrics["device"] == "cpu"
    # Against the bf16 float reference: the 8-bit model's error, not bf16's own rounding against float32.
    assert 15.0 < metrics["quantized"]["output_sqnr_db"] < 60.0
    state = load_file(str(out / "checkpoint" / "unet" / "diffusion_pytorch_model.safetensors"))
    weights = [v for k, v in state.items() if k.endswith((".weight", ".weight_scale")) and v.is_floating_point()]
    assert weights and all(w.dtype == torch.bfloat16 for w in weights)      # scales and what stays float
    assert all(v.dtype == torch.int8 for k, v in state.items() if k.endswith(".weight_codes"))
    assert json.loads((out / "checkpoint" / "meta.json").read_text())["dtype"] == "bfloat16"

    # evaluate --checkpoint reloads in the checkpoint's dtype by itself and reproduces the figures exactly ...
    assert main(["evaluate", "--model", str(sd_dir), "--checkpoint", str(out / "checkpoint"), "--num-samples", "4",
                 "--steps", "3", "--batch-size", "4", "--out", str(tmp_path / "e")]) == 0
    evaluated = json.loads((tmp_path / "e" / "metrics.json").read_text())["quantized"]
    assert evaluated["output_sqnr_db"] == metrics["quantized"]["output_sqnr_db"]
    # ... and refuses another dtype in one line, before loading anything.
    capsys.readouterr()
    assert main(["evaluate", "--model", str(sd_dir), "--checkpoint", str(out / "checkpoint"), "--dtype", "float32",
                 "--out", str(tmp_path / "e2")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "differs from the checkpoint's bfloat16" in err
    # onnxruntime runs float32: the bf16 checkpoint exports with its values cast exactly.
    assert main(["export", "--model", str(sd_dir), "--checkpoint", str(out / "checkpoint"), "--min-sqnr-db", "20",
                 "--out", str(tmp_path / "x")]) == 0


def test_pipeline_loads_in_the_dtype_asked_for(sd_dir):
    pipe = load_pipeline(sd_dir, dtype="bfloat16")
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in load_pipeline(sd_dir).unet.parameters()} == {torch.float32}


def test_devices_resolve_or_are_refused(capsys, sd_dir, tmp_path):
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert main(["analyze", "--model", str(sd_dir), "--device", "cuda", "--out", str(tmp_path / "a")]) == 2
        assert "does not have: pass --device cpu" in capsys.readouterr().err
    assert main(["analyze", "--model", str(sd_dir), "--device", "gpu7", "--out", str(tmp_path / "a")]) == 2
    assert "is not a torch device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["analyze", "--model", str(sd_dir), "--dtype", "float64", "--out", str(tmp_path / "a")])
