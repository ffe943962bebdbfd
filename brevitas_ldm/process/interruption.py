"""Ctrl-C and SIGTERM end a command the same clean way: one message, exit 130 / 143, no partial output.

Python turns SIGINT into ``KeyboardInterrupt`` wherever the main thread happens to be, and library code that
catches broad exceptions (or half-finishes an object) can turn it into an unrelated error such as an
``AttributeError``; SIGTERM by default kills the process with no message at all. :func:`interruptible` records
every signal it receives, raises a typed exception for the first one and ignores repeats while the run cleans up
its staging folder, so the command line can report an interruption as one, whatever exception finally surfaces.

An exception raised by a signal handler is lost when the main thread happens to be inside a ``__del__``, a weakref
or garbage-collector callback (Python prints "Exception ignored" and goes on): the run would then finish and commit
its output as if no signal had come. :func:`raise_if_interrupted` raises it again; the job's progress hook calls it
at every denoiser call and the atomic output writer before it commits, so a swallowed signal still ends the run.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt, so ``except Exception`` does not swallow it)."""


#: The exit status a shell reports for a process ended by the signal: 128 + its number.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

#: The signals received within the innermost :func:`interruptible` block (shared with :func:`raise_if_interrupted`).
_received: list[signal.Signals] = []


def _exception_for(sig: signal.Signals) -> BaseException:
    return KeyboardInterrupt() if sig == signal.SIGINT else Terminated(int(sig))


def raise_if_interrupted() -> None:
    """Raise the interruption again when a signal arrived: work that goes on after one was swallowed stops here.
    Called from places that run only while work goes on (never from clean-up code)."""
    if _received:
        raise _exception_for(_received[0])


@contextmanager
def interruptible() -> Iterator[list[signal.Signals]]:
    """Within the block, SIGINT raises ``KeyboardInterrupt`` and SIGTERM :class:`Terminated`, once; the yielded list
    holds the signals received. Previous handlers come back on exit."""
    received = _received
    received.clear()

    def handle(signum: int, frame) -> None:
        first = not received
        received.append(signal.Signals(signum))
        if first:                   # later signals must not interrupt the clean-up of the first
            raise _exception_for(signal.Signals(signum))

    previous = {sig: signal.signal(sig, handle) for sig in EXIT_CODES}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        received.clear()
