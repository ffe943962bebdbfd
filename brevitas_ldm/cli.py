"""The ``brevitas-ldm`` command: subcommands live in :mod:`brevitas_ldm.commands`, one module each.

Bad input raises :class:`~brevitas_ldm.errors.BrevitasLDMError`; here it becomes one line on stderr and exit code
2 (a traceback only with ``--debug``), so scripts and people get the fix, not a stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from brevitas_ldm.errors import BrevitasLDMError

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
    try:
        code = args.run(args)
    except BrevitasLDMError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"brevitas-ldm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"brevitas-ldm {args.command}: interrupted; no partial output was left behind", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
