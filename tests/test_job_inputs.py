"""Bad inputs fail up front in one line (exit 2, nothing written); the cost is said before the work; concurrent
runs and signals end cleanly; thread choice and the Brevitas SD example's flag names."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_args import FAST, one_line_error

from brevitas_ldm.cli import build_parser, main
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.io import atomic_output_dir, claimed_output_dir
from brevitas_ldm.process.threads import choose_threads, parse_threads
from brevitas_ldm.recipe import get_recipe


def test_bad_inputs_fail_before_the_model_loads(tmp_path, capsys, no_model_loading):
    out = tmp_path / "o"
    base = ["quantize", "--model", "tiny-sd-digits", "--out", str(out)]
    budget = tmp_path / "budget.toml"
    budget.write_text('name = "b"\n[plan]\nmethod = "budget"\navg_weight_bits = 2.0\n')
    one_line_error(capsys, [*base, "--recipe", str(budget)], "plan.avg_weight_bits = 2.0 cannot be met", "w4a8",
                   "at least 4")
    binary = tmp_path / "prompts.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    one_line_error(capsys, [*base, "--prompts", str(binary)], "not UTF-8 text", "--prompts")
    one_line_error(capsys, [*base, "--calibration-prompt-path", str(binary)], "--calibration-prompt-path", "not UTF-8")
    (tmp_path / "nul.txt").write_text("digit one\x00\n")
    one_line_error(capsys, [*base, "--prompts", str(tmp_path / "nul.txt")], "NUL bytes")
    one_line_error(capsys, [*base, "--plan", str(tmp_path / "missing.json")], "no plan at")
    one_line_error(capsys, [*base, "--threads", "0"], "--threads '0'")
    one_line_error(capsys, [*base, "--calibration-steps", "0"], "--calibration-steps 0")
    one_line_error(capsys, [*base, "--max-latency-ratio", "0.5"], "--max-latency-ratio 0.5", "plan.target",
                   "--recipe sqnr-hybrid-w8a8-openvino")
    one_line_error(capsys, [*base, "--recipe", "sqnr-hybrid-w8a8-openvino", "--max-latency-ratio", "9"],
                   "--max-latency-ratio 9", "(0, 4]")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["budget.toml", "nul.txt", "prompts.bin"]


def test_max_latency_ratio_flag_sets_the_recipes_budget():
    """``--max-latency-ratio`` is the recipe's ``plan.max_latency_ratio`` and nothing else: the planner spends it as
    it spends the TOML key (tests/test_latency_planning.py), so the flag only has to land there, checked."""
    from brevitas_ldm.commands.quantize import with_plan_flags

    args = build_parser().parse_args(["quantize", "--model", "tiny-sd-digits", "--recipe", "sqnr-hybrid-w8a8-openvino",
                                      "--max-latency-ratio", "0.455", "--out", "o"])
    recipe = get_recipe(args.recipe)
    planned = with_plan_flags(recipe, args)
    assert recipe.plan.max_latency_ratio == 0.0 and planned.plan.max_latency_ratio == 0.455
    assert planned.plan.target == "openvino-cpu" and planned.plan.menu == recipe.plan.menu
    assert planned.calibration == recipe.calibration and planned.weights == recipe.weights
    args.max_latency_ratio = None
    assert with_plan_flags(recipe, args) is recipe


def test_unwritable_out_fails_before_the_model_loads(tmp_path, capsys, no_model_loading):
    one_line_error(capsys, ["quantize", "--out", "/proc/brevitas-ldm-test/out"], "cannot be written", "/proc")
    (tmp_path / "file").write_text("x")
    one_line_error(capsys, ["quantize", "--out", str(tmp_path / "file" / "out")], "which is a file")
    if os.geteuid() != 0:       # root writes through permission bits; /proc covers that case above
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        one_line_error(capsys, ["quantize", "--out", str(locked / "out")], "cannot be written")


def test_a_claimed_out_refuses_a_second_run(tmp_path, capsys, no_model_loading):
    out = tmp_path / "shared"
    with claimed_output_dir(out, overwrite=False):
        one_line_error(capsys, ["quantize", "--out", str(out)], "another brevitas-ldm run is writing")
    assert list(tmp_path.iterdir()) == []                       # the lock is gone with its run


def test_the_final_rename_never_replaces_another_runs_result(tmp_path):
    out = tmp_path / "shared"
    with pytest.raises(BrevitasLDMError, match="written by another run"):
        with atomic_output_dir(out) as staging:
            (staging / "mine.txt").write_text("loser")
            out.mkdir()                                         # the other run finished first
            (out / "theirs.txt").write_text("winner")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]


def _start(argv: list[str], cwd: Path, stdout=subprocess.PIPE, stderr=subprocess.PIPE) -> subprocess.Popen:
    env = {**os.environ, "BREVITAS_LDM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "brevitas_ldm", *argv], cwd=cwd, env=env,
                            stdout=stdout, stderr=stderr, text=True)


@pytest.mark.slow
def test_two_processes_into_one_out_cannot_both_succeed(sd_dir, tmp_path):
    out = tmp_path / "runs" / "same"
    (tmp_path / "runs").mkdir()
    argv = ["quantize", "--model", str(sd_dir), "--recipe", "minmax-w8a8", "--out", str(out), *FAST]
    logs = [(tmp_path / f"out{i}.log", tmp_path / f"err{i}.log") for i in range(2)]
    processes = [_start(argv, tmp_path, open(o, "w"), open(e, "w")) for o, e in logs]
    results = [(p.wait(timeout=300), e.read_text()) for p, (_, e) in zip(processes, logs)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser_err = next(err for code, err in results if code == 2)
    assert "another brevitas-ldm run is writing" in loser_err or "written by another run" in loser_err
    assert (out / "metrics.json").is_file() and (out / "checkpoint" / "meta.json").is_file()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["same"]


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_end_the_run_cleanly(sd_dir, tmp_path, sig, code):
    runs = tmp_path / "runs"
    runs.mkdir()
    process = _start(["quantize", "--model", str(sd_dir), "--recipe", "sqnr-hybrid-w8a8", "--out",
                      str(runs / "r"), "--num-samples", "64", "--steps", "10", "--batch-size", "8"], tmp_path)
    # The plan of work is printed before the first call of the job: the signal lands inside the work.
    line = process.stdout.readline()
    assert line.startswith("plan of work"), line
    time.sleep(2.0)
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and sig.name in lines[0] and "Traceback" not in err, err
    assert list(runs.iterdir()) == []                           # no result, no staging folder, no lock


def test_dry_run_prints_the_plan_of_work_and_writes_nothing(sd_dir, tmp_path, capsys):
    argv = ["quantize", "--model", str(sd_dir), "--recipe", "minmax-w8a8", "--dry-run", "--num-samples", "6",
            "--inference-steps", "3", "--batch-size", "4", "--calibration-prompt", "4", "--calibration-steps", "2",
            "--calibration-batch-size", "2"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    calls = {m.group(1).strip(): int(m.group(2)) for m in re.finditer(r"^  (\w[\w ()]*?)\s+(\d+) calls", text, re.M)}
    # 6 samples in batches of 4 over 3 steps, each for FP and quantized; all-steps calibration of 4 prompts in
    # batches of 2 over the 2 calibration steps the Brevitas-style flag asked for
    assert calls == {"FP evaluation": 6, "calibration": 4, "quantized evaluation": 6, "total": 16}
    assert "peak memory" in text and list(tmp_path.iterdir()) == []


def test_the_plan_of_work_matches_the_calls_the_job_made(sd_dir, tmp_path):
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(sd_dir), "--recipe", "sqnr-hybrid-w8a8", "--out", str(out), *FAST]) == 0
    work = json.loads((out / "metrics.json").read_text())["plan_of_work"]
    phases = {p["name"]: p for p in work["phases"]}
    assert set(phases) == {"FP evaluation", "global analysis", "local analysis", "SmoothQuant", "GPTQ", "calibration",
                           "quantized evaluation"}
    exact = sum(p["calls"] for p in work["phases"] if not p["at_most"])
    # SmoothQuant's figure is an upper bound (one equalization pass per distinct alpha the trials choose)
    assert exact < work["counted_calls"] <= work["total_calls"]
    assert work["estimated_s"] > 0 and work["estimated_peak_bytes"] > work["timing"]["denoiser_bytes"]


def test_a_gptq_recipe_plans_its_float_runs_and_makes_exactly_them(sd_dir, tmp_path, capsys):
    recipe = tmp_path / "gptq.toml"
    recipe.write_text(get_recipe("minmax-w4a8").to_toml().replace('rounding = "nearest"', 'rounding = "gptq"'))
    argv = ["quantize", "--model", str(sd_dir), "--recipe", str(recipe), *FAST]
    assert main([*argv, "--dry-run"]) == 0
    text = capsys.readouterr().out
    # 2 calibration prompts in one batch over the run's 3 steps, once in float for GPTQ, once to calibrate
    assert re.search(r"^  GPTQ\s+3 calls", text, re.M) and re.search(r"^  calibration\s+3 calls", text, re.M), text
    assert main([*argv, "--out", str(tmp_path / "q")]) == 0
    metrics = json.loads((tmp_path / "q" / "metrics.json").read_text())
    work = metrics["plan_of_work"]
    assert work["counted_calls"] == work["total_calls"] == 3 + 3 + 3 + 3
    assert metrics["denoiser_calls"]["gptq"] == 3 and metrics["timing_s"]["gptq"] > 0
    gptq = next(phase for phase in work["phases"] if phase["name"] == "GPTQ")
    assert 0 < gptq["extra_s"] < gptq["estimated_s"]     # the rounding is priced besides the float calls
    assert "Weights rounded by GPTQ (Brevitas' `GPTQ`, Hessians from the float inputs of 3 calibration calls)" in \
        (tmp_path / "q" / "report.md").read_text()


def test_brevitas_sd_example_flag_names():
    args = build_parser().parse_args(["quantize", "--calibration-prompt", "3", "--calibration-prompt-path", "c.txt",
                                      "--calibration-steps", "4", "--inference-steps", "5", "--output-path", "o",
                                      "--prompt", "6", "--calibration-batch-size", "2"])
    assert (args.calibration_prompts, str(args.calibration_prompt_path), args.calibration_steps) == (3, "c.txt", 4)
    assert (args.steps, str(args.out), args.num_samples, args.calibration_batch_size) == (5, "o", 6, 2)


def test_thread_choice():
    assert choose_threads(3, cores=2, load=9.0).threads == 3            # asked for is asked for
    assert choose_threads(None, cores=2, load=0.1).threads == 2         # idle machine: every core
    assert choose_threads(None, cores=2, load=1.2).threads == 1         # one core busy: take the other
    assert choose_threads(None, cores=16, load=40.0).threads == 1       # overloaded: one, never zero
    assert parse_threads("auto") is None and parse_threads("4", cores=4) == 4
    with pytest.raises(BrevitasLDMError, match="positive number"):
        parse_threads("-2")
