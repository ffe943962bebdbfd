"""How many CPU threads a run uses, chosen so a busy machine slows it in proportion to its share, not 50x.

The job degraded far beyond its CPU share on a loaded 2-core machine because torch ran one intra-op thread per
core whatever else was running, and its OpenMP threads busy-wait at every barrier: with more runnable threads
than cores, each parallel region waits for a descheduled sibling while the others burn their time slices
spinning. ``--threads auto`` (the default) therefore takes the cores this process may use minus the threads
other processes are running right now (the kernel's count of runnable tasks, sampled for a moment at start;
the 1-minute load average lags by a minute and would still count a job that just ended), at least one;
``--threads N`` fixes it. Making OpenMP threads sleep at barriers instead (``OMP_WAIT_POLICY=PASSIVE``) was
measured and rejected: it slowed the run on an idle machine by 36-41%. ``benchmarks/fair_share.py`` measures the
choices (``docs/fair-share.md``).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

from brevitas_ldm.errors import BrevitasLDMError

#: Environment variable that sets the default of ``--threads`` (e.g. ``1`` in CI or a test suite).
THREADS_ENV = "BREVITAS_LDM_THREADS"
@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_threads(samples: int = 9, interval_s: float = 0.02) -> float:
    """Threads other processes are running now: the median over a few samples of the kernel's runnable-task
    count (``/proc/loadavg``'s fourth field) minus this process' own reading thread; the 1-minute load average
    where that file does not exist."""
    counts = []
    try:
        for i in range(samples):
            with open("/proc/loadavg") as handle:
                counts.append(int(handle.read().split()[3].split("/")[0]) - 1)
            if i + 1 < samples:
                time.sleep(interval_s)
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0
    return float(statistics.median(counts))


def parse_threads(text: str, cores: int | None = None) -> int | None:
    """``--threads``: ``auto`` (None) or a positive integer, at most the ``cores`` this process may use (its
    affinity mask by default). More threads than cores is refused, not clamped: each parallel region then waits for
    descheduled threads (999 threads on 16 cores made every denoiser call 170x slower), and a count given to
    reproduce a report must not silently become another."""
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise BrevitasLDMError(f"--threads {text!r} must be 'auto' or a positive number of threads")
    cores = available_cores() if cores is None else cores
    if value > cores:
        raise BrevitasLDMError(f"--threads {value} is more than the {cores} cores this process may use: pass "
                               f"--threads {cores} or fewer, or auto (${THREADS_ENV} sets the default)")
    return value


def choose_threads(requested: int | None, cores: int | None = None, load: float | None = None) -> ThreadChoice:
    """``requested`` threads, or (None) the cores that other processes' running threads leave idle, at least
    one (``load``: those threads, measured by :func:`busy_threads` when not given)."""
    cores = available_cores() if cores is None else cores
    if requested is not None:
        return ThreadChoice(requested, "--threads")
    siblings = launched_processes_per_machine()
    if siblings > 1:
        # The ranks start together, so each would count the others as load (or not, by a race): share the cores.
        return ThreadChoice(max(1, cores // siblings),
                            f"auto: {cores} cores shared by {siblings} ranks of this machine")
    load = busy_threads() if load is None else load
    idle = int(cores - load + 0.5)
    threads = max(1, min(cores, idle))
    return ThreadChoice(threads, f"auto: {cores} cores, {load:g} threads of other processes running")


def launched_processes_per_machine() -> int:
    """Processes torchrun started on this machine (``LOCAL_WORLD_SIZE``), 1 when not launched by it."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def apply_threads(choice: ThreadChoice) -> None:
    import torch

    torch.set_num_threads(choice.threads)
