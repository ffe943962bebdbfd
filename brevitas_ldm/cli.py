"""The ``brevitas-ldm`` command: subcommands live in :mod:`brevitas_ldm.commands`, one module each.

Bad input raises :class:`~brevitas_ldm.errors.BrevitasLDMError`; here it becomes one line on stderr and exit code
2 (a traceback only with ``--debug``), so scripts and people get the fix, not a stack.

Launched by ``torchrun --nproc-per-node N -m brevitas_ldm analyze|quantize ...``, every process joins the job
(:mod:`brevitas_ldm.ranks`): the analyses split their work, the main rank alone claims ``--out``, shows progress,
prints and writes; the other ranks are silent unless they fail.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import traceback

from brevitas_ldm.commands.interruption import EXIT_CODES, Terminated, interruptible
from brevitas_ldm.denoiser.loading import resolve_device
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.io import claimed_output_dir
from brevitas_ldm.ranks import (
    SINGLE,
    Ranks,
    broadcast_from_main,
    join_launched_job,
    launched_world_size,
    leave_job,
)
from brevitas_ldm.threads import apply_threads, choose_threads, parse_threads

#: Subcommand modules, in the order ``--help`` lists them. Each has ``add_parser(subparsers)`` and ``run(args)``.
COMMANDS = ("recipes", "evaluate", "analyze", "quantize", "qat", "export", "deploy")
#: Subcommands whose work splits across the ranks of a torchrun job.
DISTRIBUTED_COMMANDS = ("analyze", "quantize")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brevitas-ldm", description="SQNR-driven post-training quantization of "
                                     "latent diffusion models with Brevitas.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"brevitas_ldm.commands.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    ranks = SINGLE
    prefix = f"brevitas-ldm {args.command}"
    with interruptible() as received:
        try:
            if hasattr(args, "device"):
                args.device = resolve_device(args.device)
            ranks = _join_job(args)
            if ranks.is_distributed:
                prefix += f" (rank {ranks.rank} of {ranks.world_size})"
            if hasattr(args, "threads"):
                apply_threads(choose_threads(parse_threads(args.threads)))
            with _claimed_output(args, ranks), _quiet(not ranks.is_main):
                code = args.run(args)
        except BrevitasLDMError as exc:
            if args.debug:
                traceback.print_exc()
            print(f"{prefix}: error: {exc}", file=sys.stderr)
            return getattr(exc, "exit_code", 2)
        except (KeyboardInterrupt, Terminated, Exception) as exc:
            # An interruption may surface as another exception from the library code it landed in.
            if not received and not isinstance(exc, (KeyboardInterrupt, Terminated)):
                raise
            sig = received[0] if received else signal.SIGINT
            if args.debug:
                traceback.print_exc()
            why = (" by the launcher: another rank of the job ended" if ranks.is_distributed
                   and sig == signal.SIGTERM and "TORCHELASTIC_RUN_ID" in os.environ else "")
            print(f"{prefix}: interrupted ({sig.name}){why}; no partial output was left behind", file=sys.stderr)
            return EXIT_CODES[sig]
        finally:
            leave_job()
    return int(code or 0)


def _join_job(args: argparse.Namespace) -> Ranks:
    """Join the torchrun job this process belongs to (``--device`` becomes this rank's own device), if any."""
    if launched_world_size() <= 1:
        return SINGLE
    if args.command not in DISTRIBUTED_COMMANDS:
        raise BrevitasLDMError(f"{args.command} does not split across processes: run it without torchrun "
                               f"({' and '.join(DISTRIBUTED_COMMANDS)} do)")
    ranks, args.device = join_launched_job(args.device)
    return ranks


def _quiet(enabled: bool):
    """Silence a non-main rank's progress bars and prints (its errors are printed after, by :func:`main`)."""
    if not enabled:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    sink = stack.enter_context(open(os.devnull, "w"))
    stack.enter_context(contextlib.redirect_stdout(sink))
    stack.enter_context(contextlib.redirect_stderr(sink))
    return stack


def _claimed_output(args: argparse.Namespace, ranks: Ranks = SINGLE) -> contextlib.AbstractContextManager:
    """Commands that write ``--out`` hold it for the whole run (checked writable and not taken, up front).

    In a distributed job rank 0 claims it and tells the others whether it could, so a refused ``--out`` stops
    every rank at once instead of at their first collective.
    """
    if getattr(args, "out", None) is None:
        return contextlib.nullcontext()
    if not ranks.is_distributed:
        return claimed_output_dir(args.out, getattr(args, "overwrite", False))
    stack = contextlib.ExitStack()
    refusal = ""
    if ranks.is_main:
        try:
            stack.enter_context(claimed_output_dir(args.out, getattr(args, "overwrite", False)))
        except BrevitasLDMError as exc:
            refusal = str(exc)
    refusal = broadcast_from_main(refusal, "the claim of --out", ranks)
    if refusal:
        stack.close()
        raise BrevitasLDMError(refusal)
    return stack


if __name__ == "__main__":
    sys.exit(main())
