"""The ``brevitas-ldm`` command: subcommands live in :mod:`brevitas_ldm.commands`, one module each.

Bad input raises :class:`~brevitas_ldm.errors.BrevitasLDMError`; here it becomes one line on stderr and exit code
2 (a traceback only with ``--debug``), so scripts and people get the fix, not a stack.

Launched by ``torchrun --nproc-per-node N -m brevitas_ldm analyze|quantize ...``, every process joins the job
(:mod:`brevitas_ldm.process.ranks`): the analyses split their work, the main rank alone claims ``--out``, shows
progress, prints and writes; the other ranks are silent unless they fail.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import traceback
from pathlib import Path

from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.process.interruption import EXIT_CODES, Terminated, interruptible

# Only the light modules above load at start: torch, diffusers and the commands' own imports load when a command
# that needs them is chosen, so `brevitas-ldm --help` and `brevitas-ldm recipes` start in a fraction of a second
# (tests/test_installed.py checks that torch is not imported) and a Ctrl-C during those imports is already one line.

#: Subcommand modules, in the order ``--help`` lists them, with the one-line summary the listing shows (each module
#: registers the same text when it is loaded; a test keeps them equal). Each has ``add_parser(subparsers)`` and
#: ``run(args)``.
COMMANDS = {
    "recipes": "list recipes, or `recipes show NAME` to print one as TOML",
    "evaluate": "evaluate the FP pipeline, or a quantized pipeline folder against its FP base (SQNR, PSNR; "
                "an embedded model's FID and prompt accuracy)",
    "analyze": "global (block) and local (layer) SQNR analyses and the plan",
    "quantize": "the main job: analyse, plan, smooth, calibrate, quantize, evaluate against FP, write report + "
                "checkpoint",
    "qat": "PTQ from a recipe, plan or checkpoint, then quantization-aware fine-tuning distilled from the FP "
           "denoiser; evaluate before/after, write report + checkpoint",
    "export": "export a quantized checkpoint (OpenVINO IR, ONNX QCDQ or integer kernels, torch QCDQ, QONNX)",
    "deploy": "run a quantized checkpoint on fused int8/fp8 kernels (torch runtime) and check it against the "
              "fake-quantized model",
}
#: Subcommands whose work splits across the ranks of a torchrun job.
DISTRIBUTED_COMMANDS = ("analyze", "quantize")
#: Arguments that name an input file or folder, by the flag that sets them: no output may overlap one.
INPUT_FLAGS = {"model": "--model", "checkpoint": "--checkpoint", "plan": "--plan", "recipe": "--recipe",
               "prompts": "--prompts", "calibration_prompt_path": "--calibration-prompt-path", "lora": "--lora",
               "data": "--data"}


def build_parser(command: str | None = "all") -> argparse.ArgumentParser:
    """The command line's parser. ``command``: the one subcommand whose module is loaded (the others are listed
    by name and summary only); ``"all"`` loads every one, None none (``--help``)."""
    parser = argparse.ArgumentParser(prog="brevitas-ldm", description="SQNR-driven post-training quantization of "
                                     "latent diffusion models with Brevitas.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in COMMANDS.items():
        if command in ("all", name):
            importlib.import_module(f"brevitas_ldm.commands.{name}").add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=summary)
    return parser


def chosen_command(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is not an option), None when it names none."""
    word = next((item for item in argv if not item.startswith("-")), None)
    return word if word in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = chosen_command(argv)
    prefix = f"brevitas-ldm {command}" if command else "brevitas-ldm"
    debug = "--debug" in argv
    ranks = None
    # The signal handlers come first, before the heavy imports, so a Ctrl-C at any moment is the one line below.
    with interruptible() as received:
        try:
            parser = build_parser(command)
            if received:        # a signal that a library's import swallowed still ends the run here
                raise KeyboardInterrupt
            args = parser.parse_args(argv)
            if not getattr(args, "run", None):
                parser.print_help()
                return 2
            ranks = _prepare(args)
            if ranks.is_distributed:
                prefix += f" (rank {ranks.rank} of {ranks.world_size})"
            with _claimed_output(args, ranks), _quiet(not ranks.is_main):
                code = args.run(args)
                sys.stdout.flush()      # a closed pipe is met here, inside the handler below, not at exit
        except BrokenPipeError:
            # the reader went away (``brevitas-ldm recipes | head``): nothing is wrong, and nothing more can be said
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 0
        except BrevitasLDMError as exc:
            if debug:
                traceback.print_exc()
            print(f"{prefix}: error: {exc}", file=sys.stderr)
            return getattr(exc, "exit_code", 2)
        except (KeyboardInterrupt, Terminated, Exception) as exc:
            # An interruption may surface as another exception from the library code it landed in.
            if not received and not isinstance(exc, (KeyboardInterrupt, Terminated)):
                raise
            sig = received[0] if received else signal.SIGINT
            if debug:
                traceback.print_exc()
            why = (" by the launcher: another rank of the job ended" if ranks is not None and ranks.is_distributed
                   and sig == signal.SIGTERM and "TORCHELASTIC_RUN_ID" in os.environ else "")
            print(f"{prefix}: interrupted ({sig.name}){why}; no partial output was left behind", file=sys.stderr)
            return EXIT_CODES[sig]
        finally:
            if "brevitas_ldm.process.ranks" in sys.modules:     # a command that never joined a job has nothing to leave
                sys.modules["brevitas_ldm.process.ranks"].leave_job()
    return int(code or 0)


class _NoJob:
    """What :func:`main` knows of a command that runs no torch work (``recipes``): one process, the main one."""

    is_distributed = False
    is_main = True


def _prepare(args: argparse.Namespace):
    """Device, torchrun job and threads of a command that computes (imported here: ``recipes`` needs no torch)."""
    if not hasattr(args, "threads"):
        return _NoJob()
    from brevitas_ldm.process.threads import (
        apply_threads,
        choose_threads,
        parse_threads,
    )

    threads = parse_threads(args.threads)       # a bad count is refused before the device is probed
    if hasattr(args, "device"):
        from brevitas_ldm.denoiser.loading import resolve_device

        args.device = resolve_device(args.device)
    ranks = _join_job(args)
    apply_threads(choose_threads(threads))
    return ranks


def _join_job(args: argparse.Namespace):
    """Join the torchrun job this process belongs to (``--device`` becomes this rank's own device), if any."""
    from brevitas_ldm.process.ranks import (
        SINGLE,
        join_launched_job,
        launched_world_size,
    )

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


def input_paths(args: argparse.Namespace) -> dict[str, Path]:
    """The files and folders a command reads, by flag (the embedded model by its installed folder; a recipe or
    model given by name is no path): what :func:`~brevitas_ldm.io.check_apart` keeps every output away from."""
    from brevitas_ldm.zoo import EMBEDDED_MODELS

    paths = {}
    for attr, flag in INPUT_FLAGS.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        if attr == "model" and str(value) in EMBEDDED_MODELS:
            paths[flag] = EMBEDDED_MODELS[str(value)]
        elif attr in ("model", "recipe") and not os.path.lexists(os.path.expanduser(str(value))):
            continue                            # a registered name (or a missing path, refused by the command)
        else:
            paths[flag] = Path(value).expanduser()
    for flag in ("--model", "--checkpoint"):          # a quantized pipeline folder reads its base pipeline too
        base = _referenced_base(paths.get(flag))
        if base is not None:
            paths[f"{flag}'s base pipeline"] = base
    return paths


def _referenced_base(folder: Path | None) -> Path | None:
    """The base pipeline folder a quantized pipeline folder's ``meta.json`` references, when it names one (read
    leniently: a bad folder is refused by the command itself)."""
    import json

    from brevitas_ldm.zoo import EMBEDDED_MODELS

    if folder is None:
        return None
    for meta in (folder / "meta.json", folder / "checkpoint" / "meta.json"):
        try:
            model = json.loads(meta.read_text()).get("model")
        except (OSError, ValueError, AttributeError, RecursionError):
            continue
        if isinstance(model, str) and model:
            return EMBEDDED_MODELS.get(model, Path(model).expanduser())
    return None


def _claimed_output(args: argparse.Namespace, ranks=None) -> contextlib.AbstractContextManager:
    """Commands that write ``--out`` hold it for the whole run (checked writable, not taken and apart from every
    input, up front); ``--cache-dir`` is checked the same way (a folder, writable, apart from the inputs).

    In a distributed job rank 0 claims it and tells the others whether it could, so a refused ``--out`` stops
    every rank at once instead of at their first collective.
    """
    from brevitas_ldm.io import check_cache_dir, claimed_output_dir

    out, inputs = getattr(args, "out", None), input_paths(args)
    if getattr(args, "cache_dir", None) is not None:
        check_cache_dir(Path(args.cache_dir), inputs, out)
    if out is None:
        return contextlib.nullcontext()
    if ranks is None or not ranks.is_distributed:
        return claimed_output_dir(out, getattr(args, "overwrite", False), inputs)
    from brevitas_ldm.process.ranks import broadcast_from_main

    stack = contextlib.ExitStack()
    refusal = ""
    if ranks.is_main:
        try:
            stack.enter_context(claimed_output_dir(out, getattr(args, "overwrite", False), inputs))
        except BrevitasLDMError as exc:
            refusal = str(exc)
    refusal = broadcast_from_main(refusal, "the claim of --out", ranks)
    if refusal:
        stack.close()
        raise BrevitasLDMError(refusal)
    return stack


if __name__ == "__main__":
    sys.exit(main())
