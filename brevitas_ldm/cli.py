"""The ``brevitas-ldm`` command: subcommands live in :mod:`brevitas_ldm.commands`, one module each.

Bad input raises :class:`~brevitas_ldm.errors.BrevitasLDMError`; here it becomes one line on stderr and exit code
2 (a traceback only with ``--debug``), so scripts and people get the fix, not a stack.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import traceback

from brevitas_ldm.commands.interruption import EXIT_CODES, Terminated, interruptible
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.io import claimed_output_dir
from brevitas_ldm.threads import apply_threads, choose_threads, parse_threads

#: Subcommand modules, in the order ``--help`` lists them. Each has ``add_parser(subparsers)`` and ``run(args)``.
COMMANDS = ("recipes", "evaluate", "analyze", "quantize", "export")


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
    with interruptible() as received:
        try:
            if hasattr(args, "threads"):
                apply_threads(choose_threads(parse_threads(args.threads)))
            with _claimed_output(args):
                code = args.run(args)
        except BrevitasLDMError as exc:
            if args.debug:
                traceback.print_exc()
            print(f"brevitas-ldm {args.command}: error: {exc}", file=sys.stderr)
            return 2
        except (KeyboardInterrupt, Terminated, Exception) as exc:
            # An interruption may surface as another exception from the library code it landed in.
            if not received and not isinstance(exc, (KeyboardInterrupt, Terminated)):
                raise
            sig = received[0] if received else signal.SIGINT
            if args.debug:
                traceback.print_exc()
            print(f"brevitas-ldm {args.command}: interrupted ({sig.name}); no partial output was left behind",
                  file=sys.stderr)
            return EXIT_CODES[sig]
    return int(code or 0)


def _claimed_output(args: argparse.Namespace):
    """Commands that write ``--out`` hold it for the whole run (checked writable and not taken, up front)."""
    if getattr(args, "out", None) is None:
        return contextlib.nullcontext()
    return claimed_output_dir(args.out, getattr(args, "overwrite", False))


if __name__ == "__main__":
    sys.exit(main())
