"""One folder, one call: `quantize --out DIR` reloads with brevitas_ldm.from_pretrained(DIR) (a self-contained
diffusers folder in DIR/checkpoint, tests/test_diffusers_reload.py) and serves as --model
for evaluate/export; a folder from another format, or with a changed file, gets a one-line error naming it."""

import json
import os
import shutil

import pytest
import torch
from cli_args import FAST
from safetensors.torch import load_file, save_file

import brevitas_ldm
from brevitas_ldm.checkpoint.folder import (
    HASH_METADATA_KEY,
    file_sha256,
    load_quantized,
    tensors_sha256,
)
from brevitas_ldm.cli import main
from brevitas_ldm.denoiser.loading import load_pipeline
from brevitas_ldm.denoiser.sampling import SamplingSpec, generate
from brevitas_ldm.errors import ModelError

SPEC = SamplingSpec(num_inference_steps=3, batch_size=2)
STATE_FILE = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def run_dir(sd_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "q"
    assert main(["quantize", "--model", str(sd_dir), "--recipe", "smoothquant-w8a8", "--out", str(out), *FAST]) == 0
    return out


def _single_line_error(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


@torch.no_grad()
def test_from_pretrained_reloads_the_folder_in_one_call(sd_dir, run_dir):
    meta = json.loads((run_dir / "checkpoint" / "meta.json").read_text())
    assert meta["model"] == str(sd_dir.resolve()) and meta["format_version"] == 3 and meta["self_contained"]
    assert set(meta["files"]) == {STATE_FILE, "unet/config.json"}
    assert (run_dir / "checkpoint" / "plan.json").is_file()
    # A self-contained diffusers folder: every component is there (linked or copied from the base).
    assert all((run_dir / "checkpoint" / name).is_dir() for name in ("text_encoder", "vae", "tokenizer", "scheduler"))
    prompts, seeds = ["a handwritten digit seven", "digit nine"], [1, 2]
    two_step = generate(load_quantized(load_pipeline(sd_dir), run_dir / "checkpoint"), prompts, seeds, SPEC)
    for path in (run_dir, run_dir / "checkpoint"):        # the --out folder or its checkpoint/, alike
        pipe = brevitas_ldm.from_pretrained(path)
        assert type(pipe).__name__ == "StableDiffusionPipeline"
        assert torch.equal(generate(pipe, prompts, seeds, SPEC), two_step)
    # and the reloaded pipeline is the quantized one, not the FP base
    assert not torch.equal(generate(load_pipeline(sd_dir), prompts, seeds, SPEC), two_step)


def test_evaluate_and_export_take_the_folder_as_model(run_dir, tmp_path):
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", str(run_dir), "--out", str(out), "--num-samples", "4", "--steps", "3",
                 "--batch-size", "4"]) == 0
    job = json.loads((run_dir / "metrics.json").read_text())["quantized"]
    again = json.loads((out / "metrics.json").read_text())["quantized"]
    assert again["output_sqnr_db"] == pytest.approx(job["output_sqnr_db"], abs=1e-9)
    assert main(["export", "--model", str(run_dir), "--format", "onnx-qcdq", "--out", str(tmp_path / "onnx")]) == 0
    assert json.loads((tmp_path / "onnx" / "export.json").read_text())["verification"]["sqnr_db"] >= 30.0
    umask = os.umask(0)
    os.umask(umask)
    for name in ("denoiser.onnx", "export.json"):      # the user's normal mode, not mkstemp's 0600
        assert (tmp_path / "onnx" / name).stat().st_mode & 0o777 == 0o666 & ~umask


def _copy(run_dir, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(run_dir / "checkpoint", folder)
    return folder


def test_changed_files_are_named(run_dir, tmp_path):
    cases = {
        "missing": lambda f: (f / "unet" / "config.json").unlink(),
        "corrupted": lambda f: (f / "unet" / "config.json").write_text('{"layers": [}'),
        "truncated": lambda f: (f / STATE_FILE).write_bytes((f / STATE_FILE).read_bytes()[:1000]),
    }
    expected = {"missing": ("config.json", "is missing"), "corrupted": ("config.json", "changed or truncated"),
                "truncated": (STATE_FILE, "changed or truncated")}
    for case, damage in cases.items():
        folder = _copy(run_dir, tmp_path / case)
        damage(folder)
        with pytest.raises(ModelError) as error:
            brevitas_ldm.from_pretrained(folder)
        message = _single_line_error(error)
        for needle in expected[case]:
            assert needle in message, message


def test_consistent_but_reshaped_state_is_refused(run_dir, tmp_path):
    """A hand-made state whose hash was updated too still cannot half-load: the reshaped tensor is named."""
    folder = _copy(run_dir, tmp_path)
    state = load_file(str(folder / STATE_FILE))
    name = next(k for k in sorted(state) if k.endswith(".bias") and state[k].dim() == 1)
    state[name] = torch.zeros(state[name].shape[0] + 1)
    save_file(state, str(folder / STATE_FILE), metadata={"format": "pt", HASH_METADATA_KEY: tensors_sha256(state)})
    meta = json.loads((folder / "meta.json").read_text())
    meta["files"][STATE_FILE] = file_sha256(folder / STATE_FILE)
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError) as error:
        brevitas_ldm.from_pretrained(folder)
    assert name.replace(".layer.", ".") in _single_line_error(error) and "shape" in str(error.value)


def test_other_format_versions_and_missing_bases_are_refused(run_dir, tmp_path, capsys):
    folder = _copy(run_dir, tmp_path / "old")
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "format_version": 1, "brevitas_ldm_version": "0.1.0"}))
    with pytest.raises(ModelError) as error:
        brevitas_ldm.from_pretrained(folder)
    assert "format version 1" in _single_line_error(error) and "0.1.0" in str(error.value)

    folder = _copy(run_dir, tmp_path / "moved")
    (folder / "meta.json").write_text(json.dumps({**meta, "model": str(tmp_path / "gone")}))
    # A self-contained folder needs no base to load ...
    assert type(brevitas_ldm.from_pretrained(folder)).__name__ == "StableDiffusionPipeline"
    # ... but evaluation compares against the FP base: the command line says so in one line, exit 2, before any work
    assert main(["evaluate", "--model", str(folder), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be loaded" in err[0]
    assert not (tmp_path / "e").exists()

    with pytest.raises(ModelError, match="not a quantized pipeline folder"):
        brevitas_ldm.from_pretrained(tmp_path)
    assert main(["export", "--model", str(run_dir), "--checkpoint", str(run_dir / "checkpoint"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "already a quantized pipeline folder" in capsys.readouterr().err
