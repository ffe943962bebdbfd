"""Outputs never overlap inputs: an --out or --cache-dir that is, lies inside or contains anything the run reads
(or the current directory) is refused in one line before any work, with or without --overwrite, and the input is
left as it was."""

import json
import os
from pathlib import Path

import pytest
from cli_args import one_line_error

from brevitas_ldm.zoo import EMBEDDED_MODELS


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _inputs(tmp_path: Path) -> dict[str, tuple[list[str], Path]]:
    """Each input kind: the arguments that pass it, the command it belongs to, and the path it reads."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "meta.json").write_text(json.dumps({"model": str(model)}))
    files = {name: tmp_path / name
             for name in ("plan.json", "recipe.toml", "prompts.txt", "cal.txt", "lora.safetensors")}
    for path in files.values():
        path.write_text("x\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("digit one")
    return {
        "--model": (["quantize", "--model", str(model)], model),
        "--checkpoint": (["qat", "--checkpoint", str(checkpoint)], checkpoint),
        "--checkpoint's base pipeline": (["qat", "--checkpoint", str(checkpoint)], model),
        "--plan": (["quantize", "--plan", str(files["plan.json"])], files["plan.json"]),
        "--recipe": (["quantize", "--recipe", str(files["recipe.toml"])], files["recipe.toml"]),
        "--prompts": (["quantize", "--prompts", str(files["prompts.txt"])], files["prompts.txt"]),
        "--calibration-prompt-path": (["quantize", "--calibration-prompt-path", str(files["cal.txt"])],
                                      files["cal.txt"]),
        "--lora": (["quantize", "--lora", str(files["lora.safetensors"])], files["lora.safetensors"]),
        "--data": (["qat", "--data", str(data)], data),
    }


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_an_out_over_into_or_around_any_input_is_refused(tmp_path, capsys, no_model_loading, overwrite):
    kinds = _inputs(tmp_path)
    before = _snapshot(tmp_path)
    flag = ["--overwrite"] if overwrite else []
    for kind, (argv, path) in kinds.items():
        outs = {"is": path}
        if kind != "--checkpoint's base pipeline":     # the folder holding both names the checkpoint first
            outs["contains"] = path.parent
        if path.is_dir():
            outs["lies inside"] = path / "out"
        for relation, out in outs.items():
            line = one_line_error(capsys, [*argv, "--out", str(out), *flag], f"--out {str(out)!r} {relation}",
                                  f"the {kind} input")
            assert "choose --out outside it" in line
            # ... and for --cache-dir alike
            cache_line = one_line_error(capsys,
                                        [*argv, "--cache-dir", str(out), "--out", str(tmp_path.parent / "elsewhere"),
                                           *flag], f"--cache-dir {str(out)!r} {relation}")
            assert kind in cache_line
    assert _snapshot(tmp_path) == before                     # every input as it was, nothing written
    assert not (tmp_path.parent / "elsewhere").exists()


def test_symlinks_cannot_hide_an_overlap(tmp_path, capsys, no_model_loading):
    kinds = _inputs(tmp_path)
    argv, model = kinds["--model"]
    link = tmp_path / "link"
    link.symlink_to(model)
    one_line_error(capsys, [*argv, "--out", str(link / "out")], "lies inside the --model input")
    one_line_error(capsys, [*argv, "--cache-dir", str(link)], "--cache-dir", "is the --model input")


def test_a_symlinked_out_is_refused_up_front(tmp_path, capsys, no_model_loading):
    target = tmp_path / "real"
    target.mkdir()
    (tmp_path / "out").symlink_to(target)
    one_line_error(capsys, ["quantize", "--out", str(tmp_path / "out")], "is a symbolic link", str(target))
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    one_line_error(capsys, ["quantize", "--out", str(tmp_path / "dangling"), "--overwrite"], "is a symbolic link")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "out", "real"]


def test_the_current_directory_is_never_an_out(tmp_path, capsys, no_model_loading, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    for out in (".", str(work), str(tmp_path), ".."):
        one_line_error(capsys, ["quantize", "--out", out, "--overwrite"], "the current directory")
        one_line_error(capsys, ["analyze", "--cache-dir", out, "--dry-run"], "--cache-dir", "the current directory")
    assert (work / "notes.txt").read_text() == "mine"


def test_the_embedded_model_is_an_input_too(capsys, no_model_loading):
    weights = EMBEDDED_MODELS["tiny-sd-digits"]
    before = sorted(p.name for p in weights.iterdir())
    one_line_error(capsys, ["quantize", "--out", str(weights / "q")], "lies inside the --model input")
    one_line_error(capsys, ["evaluate", "--model", "tiny-sd-digits", "--out", str(weights.parent), "--overwrite"],
                   "contains the --model input")
    assert sorted(p.name for p in weights.iterdir()) == before


def test_a_cache_dir_inside_out_or_unusable_is_refused(tmp_path, capsys, no_model_loading):
    out = tmp_path / "q"
    one_line_error(capsys, ["quantize", "--out", str(out), "--cache-dir", str(out / "cache")], "--cache-dir",
                   "lies inside the --out folder")
    one_line_error(capsys, ["quantize", "--out", str(out), "--cache-dir", str(out)], "--cache-dir",
                   "is the --out folder")
    (tmp_path / "file").write_text("x")
    one_line_error(capsys, ["quantize", "--dry-run", "--cache-dir", str(tmp_path / "file")], "--cache-dir", "is a file")
    one_line_error(capsys, ["analyze", "--dry-run", "--cache-dir", str(tmp_path / "file" / "c")], "which is a file")
    one_line_error(capsys, ["quantize", "--dry-run", "--cache-dir", "/proc/brevitas-ldm-test/cache"], "--cache-dir",
                   "cannot be written")
    if os.geteuid() != 0:       # root writes through permission bits; /proc covers that case above
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        one_line_error(capsys, ["quantize", "--dry-run", "--cache-dir", str(locked)], "cannot be written")
    # a cache beside or above --out is fine: only the result folder is replaced as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] + (["locked"] if os.geteuid() != 0 else [])


def test_out_names_the_file_system_cannot_hold_are_refused(tmp_path, capsys, no_model_loading):
    one_line_error(capsys, ["quantize", "--out", str(tmp_path / ("o" * 300))], "--out", "300 bytes",
                   "more than the 255")
    # 240 bytes fit a name, but not with the staging folder's ".partial-XXXXXXXX" beside it
    one_line_error(capsys, ["quantize", "--out", str(tmp_path / ("o" * 240))], "240 bytes", "staging folder",
                   "at most 237")
    one_line_error(capsys, ["quantize", "--dry-run", "--cache-dir", str(tmp_path / ("c" * 256))], "--cache-dir",
                   "256 bytes")
    deep = "/".join(["d" * 200] * 25)
    one_line_error(capsys, ["quantize", "--out", str(tmp_path / deep)], "longer than the 4096 bytes")
    assert list(tmp_path.iterdir()) == []
