"""The processes of a torch.distributed job, and how the analyses split their work across them.

The global analysis runs hundreds of independent sampler runs (progressive prefixes, isolated blocks, per
precision) and the local analysis one twin pass per sampling step: work that splits without changing a single
number, as long as every measured quantity is computed exactly as the single process computes it. So the split
never cuts a pipeline batch (a batch's floats depend on its composition) and every gathered measurement is a
:class:`~brevitas_ldm.sqnr.SQNRMeter` (per-sample power sums added with ``math.fsum``, which does not depend on the
order the ranks return them in) or a value computed whole on one rank. The same seeds therefore give the same
reports on 1 or N processes, at equal threads per process.

The engine is the one users already launch: ``torchrun`` (or accelerate) sets ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``, :func:`join_launched_job` opens the process group (gloo on CPU, nccl on CUDA) and the Python API
works inside any initialised group. Without a group everything is the single process it always was.

A rank that dies closes its sockets, so the others fail inside the next collective; :func:`all_gather` turns that
into one :class:`RankFailure` line, and nothing is written because only the main rank writes, at the very end.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from brevitas_ldm.errors import BrevitasLDMError

T = TypeVar("T")

#: Environment variables torchrun/accelerate set in every worker.
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: How long a collective waits for a slow rank before failing (seconds); a dead rank fails it at once.
TIMEOUT_ENV = "BREVITAS_LDM_RANK_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 4 * 3600


class RankFailure(BrevitasLDMError):
    """Another process of the job stopped; this one stops too, writing nothing (exit code 1: not bad input)."""

    exit_code = 1


@dataclass(frozen=True)
class Ranks:
    """This process' place in the job: ``rank`` of ``world_size`` (0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """The rank that shows progress and writes every output."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def owns(self, index: int) -> bool:
        """Whether equal work item ``index`` (a batch, a sampling step) is this rank's: item i goes to rank i mod N."""
        return index % self.world_size == self.rank

    def round_robin(self, count: int) -> list[int]:
        """Indices of ``count`` equal work items this rank takes (the items it :meth:`owns`)."""
        return [index for index in range(count) if self.owns(index)]

    def deal(self, costs: Sequence[float]) -> list[int]:
        """Indices of the items this rank takes when items of unequal ``costs`` are dealt out like cards: sorted
        from most to least expensive (ties by index) and dealt 0..N-1, N-1..0, 0..N-1, ..., so every rank gets the
        same number of items, within one, and about the same total cost. Deterministic, so every rank (and the plan
        of work, before any item runs) computes the same deal."""
        order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
        mine = []
        for position, index in enumerate(order):
            lap, seat = divmod(position, self.world_size)
            if (seat if lap % 2 == 0 else self.world_size - 1 - seat) == self.rank:
                mine.append(index)
        return sorted(mine)


SINGLE = Ranks()


def current_ranks() -> Ranks:
    """The ranks of the initialised default process group, or a single process when there is none."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return SINGLE


def launched_world_size() -> int:
    """Processes the launcher started (``WORLD_SIZE``), 1 when not started by torchrun or accelerate."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise BrevitasLDMError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number: launch with torchrun "
                               f"--nproc-per-node N, which sets it") from None


def join_launched_job(device: str) -> tuple[Ranks, str]:
    """Open the process group torchrun described in the environment and return this rank and its device.

    gloo for CPU devices, nccl for CUDA; a CUDA device becomes ``cuda:LOCAL_RANK`` so each rank uses its own GPU.
    Not launched (``WORLD_SIZE`` unset or 1): the single process and ``device`` unchanged.
    """
    if launched_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return current_ranks(), device
    missing = [name for name in LAUNCHER_ENV if name not in os.environ]
    if missing:
        raise BrevitasLDMError(f"WORLD_SIZE is set but {missing[0]} is not: launch the job with torchrun "
                               f"--nproc-per-node N (or accelerate launch), which sets all of "
                               f"{', '.join(LAUNCHER_ENV)}")
    if not dist.is_available():
        raise BrevitasLDMError("this torch build has no torch.distributed: run without torchrun")
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise BrevitasLDMError(f"LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible): pass "
                                   f"--nproc-per-node at most the number of GPUs")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timeout)
    return current_ranks(), device


def leave_job() -> None:
    """Close the process group :func:`join_launched_job` opened (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather(value: T, what: str, ranks: Ranks | None = None) -> list[T]:
    """Every rank's ``value`` (any picklable object), in rank order, on every rank; ``[value]`` when single.

    ``what`` names the phase in the one-line error a dead or failing rank causes here.
    """
    ranks = ranks or current_ranks()
    if not ranks.is_distributed:
        return [value]
    gathered: list[Any] = [None] * ranks.world_size
    try:
        dist.all_gather_object(gathered, value)
    except (RuntimeError, ConnectionError, dist.DistBackendError) as exc:
        raise _failure(what, ranks, exc) from exc
    return gathered


def broadcast_from_main(value: T, what: str, ranks: Ranks | None = None) -> T:
    """The main rank's ``value`` on every rank (``value`` itself when single)."""
    ranks = ranks or current_ranks()
    if not ranks.is_distributed:
        return value
    box = [value if ranks.is_main else None]
    try:
        dist.broadcast_object_list(box, src=0)
    except (RuntimeError, ConnectionError, dist.DistBackendError) as exc:
        raise _failure(what, ranks, exc) from exc
    return box[0]


def peak_rss_bytes() -> int:
    """This process' peak resident memory so far (what each rank reports beside its work)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _failure(what: str, ranks: Ranks, exc: BaseException) -> RankFailure:
    # gloo says e.g. "[.../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:42193. This is ..."
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    detail = re.sub(r"^\[[^\]]*\]\s*", "", detail).split(". ")[0][:120]
    return RankFailure(f"another rank of the job stopped during {what} ({detail}): the job ends on every rank and "
                       f"nothing is written; that rank's own error says why")
