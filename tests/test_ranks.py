"""The analyses split across the processes of a torch.distributed job (gloo on CPU) and give the single process'
reports; the main rank alone writes; a dead rank ends the job on every rank with one line and no output."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from plain_single_step import plain_single_step

from brevitas_ldm.analysis.block_sensitivity import BlockSensitivity
from brevitas_ldm.denoiser.blocks import get_blocks
from brevitas_ldm.denoiser.loading import load_pipeline
from brevitas_ldm.denoiser.sampling import SamplingSpec, get_denoiser
from brevitas_ldm.evaluation.prompts import calibration_set
from brevitas_ldm.process.ranks import Ranks
from brevitas_ldm.process.threads import choose_threads

#: A small analysis: 4 prompts in 2 batches (so the FP reference splits), 3 steps (so the local steps split 2 + 1).
ANALYSIS = ["--num-prompts", "4", "--steps", "3", "--batch-size", "2"]
#: Fields that record how the work was done (time, calls per process, the cache used), not what was measured.
WORK_FIELDS = {"timing_s", "wall_time_s", "denoiser_calls", "work_per_rank", "cache_key"}


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "BREVITAS_LDM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _torchrun_command(args: list[str], nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--standalone",
            "-m", "brevitas_ldm", *args]


def _torchrun(args: list[str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run(_torchrun_command(args, nproc), cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=600)


class _StderrWatch:
    """Reads a process' stderr in a thread (so it never blocks on a full pipe) and tells when ``marker`` showed."""

    def __init__(self, proc: subprocess.Popen, marker: str) -> None:
        self.chunks: list[str] = []
        self.seen = threading.Event()
        self._proc, self._marker = proc, marker
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        for chunk in iter(lambda: self._proc.stderr.read(64), ""):
            self.chunks.append(chunk)
            if self._marker in "".join(self.chunks[-3:]):
                self.seen.set()

    def wait_for_marker(self, timeout: float = 300) -> None:
        assert self.seen.wait(timeout), self.text[-2000:]

    def finish(self) -> str:
        self._thread.join(timeout=60)
        return self.text

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def _cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "brevitas_ldm", *args], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=600)


def _measured(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in WORK_FIELDS}


# -- the deal ---------------------------------------------------------------------------------------------------
def test_deal_gives_every_item_once_in_equal_counts_and_balanced_cost():
    costs = [float(c) for c in (1, 9, 3, 3, 27, 2, 14, 5, 8, 1, 1, 20, 6)]
    for world in (1, 2, 3, 4):
        shares = [Ranks(rank, world).deal(costs) for rank in range(world)]
        assert sorted(i for share in shares for i in share) == list(range(len(costs)))
        counts = [len(share) for share in shares]
        assert max(counts) - min(counts) <= 1
        loads = [sum(costs[i] for i in share) for share in shares]
        # The most expensive item alone bounds the imbalance of a snake deal.
        assert max(loads) - min(loads) <= max(costs)
        assert shares == [Ranks(rank, world).deal(costs) for rank in range(world)]   # deterministic
    assert Ranks(1, 3).round_robin(7) == [1, 4]


def test_progressive_prefixes_cost_more_and_the_deal_balances_them(sd_dir):
    pipe = load_pipeline(str(sd_dir))
    blocks = get_blocks(get_denoiser(pipe))
    samples = calibration_set(4, seed=10_000)
    analysis = BlockSensitivity(plain_single_step(), list(samples.prompts), list(samples.seeds),
                                SamplingSpec(3, 2.0, 2), progress=False)
    configs = analysis._configs(len(blocks))
    costs = analysis._costs(configs, blocks)
    last_prefix = max(c for c, config in zip(costs, configs) if config.kind == "progressive")
    assert last_prefix == sum(len(b) for b in blocks) > max(len(b) for b in blocks)
    single = analysis.planned_calls(blocks)
    per_rank = [analysis.planned_calls(blocks, Ranks(rank, 2)) for rank in range(2)]
    for key in ("fp_reference", "isolated", "progressive"):
        assert sum(calls[key] for calls in per_rank) == single[key]
    loads = [sum(costs[i] for i in Ranks(rank, 2).deal(costs)) for rank in range(2)]
    assert abs(loads[0] - loads[1]) / sum(loads) < 0.1


def test_auto_threads_share_the_cores_between_the_ranks_of_a_machine(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert choose_threads(None, cores=2, load=0.0).threads == 1
    assert choose_threads(None, cores=16, load=5.0).threads == 8
    assert choose_threads(3, cores=16).threads == 3      # a number stays a number
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert choose_threads(None, cores=2, load=0.0).threads == 2


def test_commands_that_do_not_split_refuse_torchrun_in_one_line(tmp_path):
    result = _cli(["evaluate", "--out", str(tmp_path / "e")], tmp_path, WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "brevitas-ldm evaluate: error: evaluate does not split across processes: run it without torchrun "
        "(analyze and quantize do)"]
    assert not (tmp_path / "e").exists()


# -- the same reports on 1 and 2 processes -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain_recipe(tmp_path_factory):
    """The quickstart recipe whose analysis samples --steps (2 batches x 3 steps), as a file the CLI takes."""
    recipe = tmp_path_factory.mktemp("recipe") / "plain.toml"
    recipe.write_text(plain_single_step().replace(name="sqnr-hybrid-w8a8-plain").to_toml())
    return str(recipe)


@pytest.fixture(scope="module")
def analyses(sd_dir, tmp_path_factory, plain_recipe):
    root = tmp_path_factory.mktemp("ranks")
    args = ["analyze", "--model", str(sd_dir), *ANALYSIS, "--recipe", plain_recipe, "--local-analysis"]
    single = _cli([*args, "--out", "single"], root)
    assert single.returncode == 0, single.stderr[-2000:]
    split = _torchrun([*args, "--out", "split", "--cache-dir", "cache"], root)
    assert split.returncode == 0, split.stderr[-2000:]
    return root, split


@pytest.mark.slow  # end to end on two processes
def test_two_ranks_give_the_single_process_reports(analyses):
    root, _ = analyses
    for name in ("block_report.json", "layer_report.json", "plan.json"):
        assert _measured(root / "split" / name) == _measured(root / "single" / name), name


@pytest.mark.slow  # end to end on two processes
def test_the_work_is_split_and_balanced(analyses, sd_dir):
    root, _ = analyses
    block = json.loads((root / "split" / "block_report.json").read_text())
    single = json.loads((root / "single" / "block_report.json").read_text())
    work = block["work_per_rank"]
    assert [w["rank"] for w in work] == [0, 1]
    assert sum(w["configurations"] for w in work) * 2 * 3 == single["denoiser_calls"]["isolated"] + \
        single["denoiser_calls"]["progressive"]      # every configuration once: 2 batches x 3 steps each
    assert abs(work[0]["configurations"] - work[1]["configurations"]) <= 1
    assert block["denoiser_calls"]["fp_reference"] == single["denoiser_calls"]["fp_reference"] == 6
    assert "work_per_rank" not in single                 # a single process' report is what it always was
    # Each rank made exactly the calls the plan of work predicted for it.
    pipe = load_pipeline(str(sd_dir))
    samples = calibration_set(4, seed=10_000)
    analysis = BlockSensitivity(plain_single_step(), list(samples.prompts), list(samples.seeds),
                                SamplingSpec(3, 2.0, 2), progress=False)
    blocks = get_blocks(get_denoiser(pipe))
    for rank, done in enumerate(work):
        planned = analysis.planned_calls(blocks, Ranks(rank, 2))
        assert done["denoiser_calls"] == planned["isolated"] + planned["progressive"] + planned["calibration"]
    layers = json.loads((root / "split" / "layer_report.json").read_text())["work_per_rank"]
    assert [w["steps"] for w in layers] == [[0, 2], [1]]


@pytest.mark.slow  # end to end on two processes
def test_only_the_main_rank_writes_and_speaks(analyses):
    root, split = analyses
    assert sorted(p.name for p in root.iterdir()) == ["cache", "single", "split"]
    assert len(list((root / "cache").iterdir())) == 1
    assert split.stdout.count("wrote split") == 1
    assert split.stdout.count("plan of work") == 1


@pytest.mark.slow  # end to end on two processes
def test_a_cached_analysis_is_read_by_the_main_rank_and_shared(analyses, sd_dir, plain_recipe):
    root, _ = analyses
    again = _torchrun(["analyze", "--model", str(sd_dir), *ANALYSIS, "--recipe", plain_recipe, "--out", "again",
                       "--cache-dir", "cache"], root)
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads((root / "again" / "analysis.json").read_text())
    assert summary["global_from_cache"] is True
    assert _measured(root / "again" / "plan.json") == _measured(root / "split" / "plan.json")


@pytest.mark.slow  # end to end on two processes
def test_quantize_on_two_ranks_gives_the_single_process_model_and_metrics(sd_dir, tmp_path):
    args = ["quantize", "--model", str(sd_dir), "--num-samples", "4", "--steps", "3", "--batch-size", "2",
            "--calibration-prompts", "4", "--calibration-batch-size", "2"]
    single = _cli([*args, "--out", "single"], tmp_path)
    assert single.returncode == 0, single.stderr[-2000:]
    split = _torchrun([*args, "--out", "split"], tmp_path)
    assert split.returncode == 0, split.stderr[-2000:]
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("single", "split"))
    assert two["quantized"] == one["quantized"] and two["fp"] == one["fp"]
    assert two["per_step_sqnr_db"] == one["per_step_sqnr_db"]
    assert two["processes"] == 2 and "processes" not in one
    assert (tmp_path / "split" / "plan.json").read_text() == (tmp_path / "single" / "plan.json").read_text()
    meta = [json.loads((tmp_path / d / "checkpoint" / "meta.json").read_text())["files"] for d in ("single", "split")]
    assert meta[0] == meta[1]                            # bit-identical quantized state


# -- a rank that dies ------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # end to end on two processes
@pytest.mark.parametrize("victim", [1, 0])
def test_a_dead_rank_ends_the_job_on_every_rank_with_one_line_and_no_output(sd_dir, tmp_path, victim):
    """Without torchrun (which would SIGTERM the survivors): the survivor must notice by itself, in the next
    collective, and stop with one line. The victim is killed once the main rank shows the bank being built, i.e.
    after the first collective (the FP reference), so both ranks have joined the job."""
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "brevitas_ldm", "analyze", "--model", str(sd_dir), *ANALYSIS, "--out", "out"],
            cwd=tmp_path, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    main_err = _StderrWatch(procs[0], "quantize + calibrate")
    main_err.wait_for_marker()
    procs[victim].send_signal(signal.SIGKILL)
    survivor = procs[1 - victim]
    survivor.wait(timeout=300)
    main_text = main_err.finish()
    for proc in procs:
        proc.stdout.close()
    stderr = main_text if victim == 1 else survivor.stderr.read()
    assert procs[victim].wait() == -signal.SIGKILL
    assert survivor.returncode == 1
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if "error" in line]
    assert len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith(f"brevitas-ldm analyze (rank {1 - victim} of 2): error: another rank of the job "
                               f"stopped during the global analysis (")
    assert lines[0].endswith("the job ends on every rank and nothing is written; that rank's own error says why")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


def test_a_refused_out_stops_every_rank_up_front(sd_dir, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("a user's file")
    result = _torchrun(["analyze", "--model", str(sd_dir), *ANALYSIS, "--out", "taken"], tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("brevitas-ldm analyze (rank")]
    assert len(errors) == 2, result.stderr[-2000:]
    messages = {line.split(": error: ", 1)[1] for line in errors}
    assert len(messages) == 1 and "--overwrite" in messages.pop()      # rank 1 says what rank 0 found
    assert "wrote" not in result.stdout and "plan of work" not in result.stdout    # before any work
    assert (tmp_path / "taken" / "keep.txt").read_text() == "a user's file"


@pytest.mark.slow  # end to end on two processes
def test_under_torchrun_a_dead_rank_stops_the_others_through_the_launcher(sd_dir, tmp_path):
    """torchrun SIGTERMs the surviving workers when one dies: they say so in one line and leave nothing."""
    command = _torchrun_command(["analyze", "--model", str(sd_dir), *ANALYSIS, "--out", "out"])
    launcher = subprocess.Popen(command, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    err = _StderrWatch(launcher, "quantize + calibrate")
    err.wait_for_marker()
    workers = [int(p) for p in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()]
    rank_of = {pid: Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") for pid in workers}
    victim = next(pid for pid, env in rank_of.items() if b"RANK=1" in env)
    os.kill(victim, signal.SIGKILL)
    launcher.wait(timeout=300)
    stderr = err.finish().replace("\r", "\n")
    launcher.stdout.close()
    assert launcher.returncode != 0
    ours = [line for line in stderr.splitlines() if line.startswith("brevitas-ldm analyze")]
    assert ours == ["brevitas-ldm analyze (rank 0 of 2): interrupted (SIGTERM) by the launcher: another rank of the "
                    "job ended; no partial output was left behind"], stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []
