"""The package as installed: every package on disk is in the wheel's list, the light commands start without torch,
and a Ctrl-C during start-up is the one interruption line (.ci/installed_smoke.sh runs the built wheel itself)."""

import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from brevitas_ldm.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_lists_every_package_on_disk():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "brevitas_ldm").rglob("__init__.py")}
    assert on_disk | {"brevitas_ldm.recipes"} == listed
    assert (ROOT / "recipes" / "__init__.py").is_file()      # installed as brevitas_ldm.recipes (package-dir)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_help_and_recipes_start_without_torch():
    probe = ("import sys\nfrom brevitas_ldm.cli import main\n{call}\n"
             "heavy = sorted(m for m in ('torch', 'diffusers', 'brevitas', 'transformers') if m in sys.modules)\n"
             "print('HEAVY', heavy)")
    calls = {"--help": "try:\n    main(['--help'])\nexcept SystemExit as exit:\n    assert exit.code == 0",
             "recipes": "assert main(['recipes']) == 0",
             "recipes show": "assert main(['recipes', 'show', 'minmax-w8a8']) == 0"}
    for name, call in calls.items():
        result = _run(probe.format(call=call))
        assert result.returncode == 0, (name, result.stderr)
        assert "HEAVY []" in result.stdout, (name, result.stdout[-300:])
    listing = _run(probe.format(call=calls["recipes"])).stdout
    assert "minmax-w8a8\t" in listing and "sqnr-hybrid-w8a8\t" in listing
    assert "[weights]" in _run(probe.format(call=calls["recipes show"])).stdout


def test_the_light_listing_is_the_full_one():
    """``--help`` lists the commands from cli.COMMANDS without loading them: the same text their modules give."""
    assert build_parser(None).format_help() == build_parser("all").format_help()
    for name in COMMANDS:
        assert build_parser(name).format_help() == build_parser("all").format_help()


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has installed a SIGTERM handler (Python itself does not; main's handlers do)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def test_a_ctrl_c_during_start_up_is_one_line(tmp_path):
    """The handlers come first in main, before torch and the commands load: a SIGINT then is one line, exit 130."""
    env = {**os.environ, "BREVITAS_LDM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "brevitas_ldm", "quantize", "--out", str(tmp_path / "o")],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _catches_sigterm(process.pid):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["brevitas-ldm quantize: interrupted (SIGINT); no partial output was left behind"], err
    assert list(tmp_path.iterdir()) == []


def test_a_reader_that_goes_away_is_no_traceback(tmp_path):
    """``brevitas-ldm recipes | head -1``: the closed pipe ends the command quietly, exit 0."""
    read_end, write_end = os.pipe()
    os.close(read_end)                  # the reader has already gone: the first flush meets a broken pipe
    try:
        writer = subprocess.run([sys.executable, "-m", "brevitas_ldm", "recipes"], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, cwd=tmp_path, timeout=120)
    finally:
        os.close(write_end)
    assert writer.returncode == 0 and "Traceback" not in writer.stderr, writer.stderr
