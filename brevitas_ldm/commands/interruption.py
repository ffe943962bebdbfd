"""Ctrl-C and SIGTERM end a command the same clean way: one message, exit 130 / 143, no partial output.

Python turns SIGINT into ``KeyboardInterrupt`` wherever the main thread happens to be, and library code that
catches broad exceptions (or half-finishes an object) can turn it into an unrelated error such as an
``AttributeError``; SIGTERM by default kills the process with no message at all. :func:`interruptible` records
every signal it receives, raises a typed exception for the first one and ignores repeats while the run cleans up
its staging folder, so the command line can report an interruption as one, whatever exception finally surfaces.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt, so ``except Exception`` does not swallow it)."""


#: The exit status a shell reports for a process ended by the signal: 128 + its number.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


@contextmanager
def interruptible() -> Iterator[list[signal.Signals]]:
    """Within the block, SIGINT raises ``KeyboardInterrupt`` and SIGTERM :class:`Terminated`, once; the yielded list
    holds the signals received. Previous handlers come back on exit."""
    received: list[signal.Signals] = []

    def handle(signum: int, frame) -> None:
        first = not received
        received.append(signal.Signals(signum))
        if first:                   # later signals must not interrupt the clean-up of the first
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

    previous = {sig: signal.signal(sig, handle) for sig in EXIT_CODES}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
