"""Run an exported file in onnxruntime on an emulated CPU kind (qemu user mode), to check a kind you do not have.

onnxruntime picks its integer kernels from CPUID at start-up, and an AVX2-only CPU computes ``u8 x s8`` products
differently from a VNNI one (see :mod:`.x86_storage`). A developer on a VNNI machine cannot see the AVX2 result,
so the tests and ``brevitas-ldm export --emulate-cpu Haswell`` run the same file, on the same feeds, with the same
session options, under ``qemu-x86_64 -cpu Haswell`` (AVX2 and FMA, no AVX-512, no VNNI): onnxruntime then
dispatches to exactly the kernels an AVX2-only machine uses. qemu cannot emulate AVX-512, so the other kind is
the native run on a VNNI machine. The worker (:mod:`.ort_worker`) imports only numpy and onnxruntime, which keeps
the emulated process to a few seconds of start-up.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from brevitas_ldm.errors import BrevitasLDMError

QEMU = "qemu-x86_64"
#: qemu CPU models the project emulates, with the ISA flags they expose (qemu's TCG has no AVX-512 at all).
EMULATED_CPU_FLAGS = {"Haswell": ("avx2",)}
_WORKER = Path(__file__).with_name("ort_worker.py")


def emulator_available() -> bool:
    """Whether ``qemu-x86_64`` is installed (``apt-get install qemu-user`` on Debian/Ubuntu)."""
    return shutil.which(QEMU) is not None


def run_onnx_emulated(path: str | Path, feeds: dict[str, np.ndarray], cpu: str = "Haswell", threads: int = 1,
                      timeout_s: float = 900.0) -> np.ndarray:
    """The output of ``path`` on ``feeds`` when onnxruntime runs on the emulated ``cpu``."""
    if cpu not in EMULATED_CPU_FLAGS:
        raise BrevitasLDMError(f"cannot emulate CPU {cpu!r}: use one of {', '.join(EMULATED_CPU_FLAGS)}")
    if not emulator_available():
        raise BrevitasLDMError(f"{QEMU} is not installed, so no {cpu} CPU can be emulated: install it "
                               f"(apt-get install qemu-user) or drop the CPU emulation")
    with tempfile.TemporaryDirectory(prefix="brevitas-ldm-emulated-") as tmp:
        feeds_path, output_path = Path(tmp) / "feeds.npz", Path(tmp) / "output.npy"
        np.savez(feeds_path, **feeds)
        command = [QEMU, "-cpu", cpu, sys.executable, str(_WORKER), str(path), str(feeds_path), str(output_path),
                   str(threads)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise BrevitasLDMError(f"onnxruntime on an emulated {cpu} took over {timeout_s:.0f} s for "
                                   f"{Path(path).name}: emulate with fewer samples") from None
        if done.returncode != 0 or not output_path.is_file():
            lines = [line for line in done.stderr.splitlines() if line and "TCG doesn't support" not in line]
            raise BrevitasLDMError(f"onnxruntime failed on an emulated {cpu} ({(lines or ['no message'])[-1][:200]}): "
                                   f"check that {Path(path).name} runs natively first")
        return np.load(output_path)
