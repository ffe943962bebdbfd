"""A signal whose exception a library swallowed (it landed in a ``__del__``, where Python only prints "Exception
ignored") must still end the run: the job's progress hook and the atomic output writer raise it again."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from brevitas_ldm.io import atomic_output_dir
from brevitas_ldm.process.interruption import (
    Terminated,
    interruptible,
    raise_if_interrupted,
)
from brevitas_ldm.process.job_progress import JobProgress


class _SwallowsTheSignal:
    """Receives SIGTERM inside ``__del__``: the handler's exception is printed and dropped by Python."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:      # the handler runs between these bytecodes
            pass


def _swallow() -> None:
    holder = _SwallowsTheSignal()
    del holder


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_swallowed_sigterm_is_raised_again_before_the_output_is_committed(tmp_path):
    out = tmp_path / "out"
    with interruptible() as received:
        with pytest.raises(Terminated):
            with atomic_output_dir(out) as staging:
                (staging / "result.txt").write_text("half")
                _swallow()                      # the run goes on, as it did under load in CI
                assert received == [signal.SIGTERM]
    assert not out.exists() and list(tmp_path.iterdir()) == []      # nothing committed, the staging folder gone


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_swallowed_sigterm_ends_the_job_at_the_next_denoiser_call():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    calls = 0
    with interruptible():
        with pytest.raises(Terminated), JobProgress(torch.nn.Sequential, 10, enabled=False):
            _swallow()
            for calls in range(1, 4):
                model(torch.ones(1, 2))
    assert calls == 1                           # the first call after the signal raised it
    raise_if_interrupted()                      # outside the block nothing is pending any more
