"""Options shared by the subcommands (model, sampling, seeds, output folder)."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brevitas_ldm.denoiser.loading import DTYPES, load_pipeline
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.limits import check_count
from brevitas_ldm.process.threads import THREADS_ENV
from brevitas_ldm.zoo import DEFAULT_MODEL

if TYPE_CHECKING:
    from brevitas_ldm.denoiser.lora import FusedLora


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def add_checkpoint_option(parser: argparse.ArgumentParser, purpose: str = "") -> None:
    """``--checkpoint``: a quantized folder written by ``quantize``, with the FP ``--model``; ``purpose`` says what
    the command does with it."""
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help=f"checkpoint folder written by `quantize`{purpose}, with the FP --model (not needed "
                        f"when --model is a quantized pipeline folder)")


def required_checkpoint(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`checked_checkpoint` for commands that only work on a quantized model (export, deploy)."""
    meta = checked_checkpoint(args)
    if meta is None:
        raise BrevitasLDMError(f"--model {args.model} is not quantized: pass a `brevitas-ldm quantize` --out folder as "
                               f"--model, or the FP --model with --checkpoint")
    return meta


def add_model_options(parser: argparse.ArgumentParser, dtype: bool = True) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"embedded model name ({DEFAULT_MODEL}) or a local diffusers pipeline directory")
    parser.add_argument("--device", default="auto", help="torch device: auto (CUDA when present, else the CPU), cpu, "
                                                         "cuda or cuda:N (default: auto)")
    if dtype:
        parser.add_argument("--dtype", choices=DTYPES, default=None,
                            help="precision the pipeline loads and runs in; SQNR is measured against the float "
                                 "reference in the same dtype (default: float32, or the checkpoint's)")
    parser.add_argument("--lora", type=Path, default=None,
                        help="a diffusers/peft LoRA .safetensors file fused into the pipeline before anything runs, "
                             "so the model quantized is the one you run (a checkpoint remembers it)")
    parser.add_argument("--threads", default=os.environ.get(THREADS_ENV, "auto"),
                        help=f"CPU threads for torch: a number, or auto: the cores the machine's load leaves idle, at "
                             f"least one (default: ${THREADS_ENV} or auto). Thread counts can change the last bits "
                             f"of float sums: pass a number to reproduce a report exactly")


def add_sampling_options(parser: argparse.ArgumentParser, num_samples: int = 100) -> None:
    parser.add_argument("--num-samples", "--prompt", type=int, default=num_samples,
                        help="samples to generate for evaluation (--prompt: the Brevitas SD example's name)")
    parser.add_argument("--steps", "--inference-steps", type=int, default=20, help="sampling steps (default: 20)")
    parser.add_argument("--guidance-scale", type=float, default=2.0,
                        help="classifier-free guidance scale (default: 2.0)")
    parser.add_argument("--batch-size", type=int, default=50, help="samples per pipeline call")
    parser.add_argument("--seed", type=int, default=0, help="base seed: sample i uses seed + i")
    parser.add_argument("--prompts", type=Path, default=None,
                        help="text file, one prompt per line (default: the model's own evaluation prompts)")


def add_output_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--out", "--output-path", type=Path, required=required,
                        help="output folder (written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")


def check_sampling_args(args: argparse.Namespace) -> None:
    if args.num_samples < 1:
        raise BrevitasLDMError(f"--num-samples {args.num_samples} must be at least 1")
    check_count(args.num_samples, "--num-samples")
    if args.steps < 1:
        raise BrevitasLDMError(f"--steps {args.steps} must be at least 1")
    if not math.isfinite(args.guidance_scale) or args.guidance_scale < 0:
        raise BrevitasLDMError(f"--guidance-scale {args.guidance_scale} must be a finite number >= 0")
    if args.batch_size < 1:
        raise BrevitasLDMError(f"--batch-size {args.batch_size} must be at least 1")
    seed = getattr(args, "seed", 0)
    if not 0 <= seed <= MAX_SEED - args.num_samples:
        raise BrevitasLDMError(f"--seed {seed} is out of range: sample i uses seed + i, which must stay within "
                               f"0..{MAX_SEED} (torch generators); pass a seed from 0 to {MAX_SEED - args.num_samples}")


#: Largest seed a torch.Generator takes as a signed 64-bit value.
MAX_SEED = 2**63 - 1


def check_evaluator_samples(args: argparse.Namespace) -> None:
    """An embedded model's classifier FID needs a feature covariance: at least 2 samples (checked before any
    work)."""
    from brevitas_ldm.evaluation.class_evaluator import evaluator_for

    evaluator = evaluator_for(args.model) if args.num_samples < 2 else None
    if evaluator is not None:
        raise BrevitasLDMError(f"--num-samples {args.num_samples} is too few for {args.model}'s {evaluator.fid_name}, "
                               f"which needs at least 2 samples: pass --num-samples 2 or more (100+ for a stable FID)")


def checked_checkpoint(args: argparse.Namespace) -> dict[str, Any] | None:
    """The checkpoint a command works on, checked before the model loads: ``--checkpoint``, or ``--model`` when it
    names a quantized pipeline folder (a ``quantize --out`` folder; ``--model`` then becomes its base pipeline, so
    one path is enough). Returns the folder's verified ``meta.json`` (None without a checkpoint), for
    :func:`~brevitas_ldm.checkpoint.load_quantized`."""
    from brevitas_ldm.checkpoint.folder import read_checkpoint_meta
    from brevitas_ldm.checkpoint.pretrained import base_model, quantized_folder

    folder = quantized_folder(args.model)
    if folder is not None:
        if args.checkpoint is not None:
            raise BrevitasLDMError(f"--model {args.model} is already a quantized pipeline folder: drop --checkpoint, "
                                   f"or pass the FP pipeline as --model with --checkpoint")
        args.checkpoint = folder
    if args.checkpoint is None:
        return None
    args.checkpoint = quantized_folder(args.checkpoint) or args.checkpoint     # a `quantize --out` folder works too
    meta = read_checkpoint_meta(args.checkpoint)
    if folder is not None:
        args.model = base_model(folder, meta)
    from brevitas_ldm.checkpoint.folder import checkpoint_lora

    args.lora = checkpoint_lora(meta, args.lora)
    _checkpoint_dtype(args, meta)
    return meta


def _checkpoint_dtype(args: argparse.Namespace, meta: dict[str, Any]) -> None:
    """A checkpoint reloads in the dtype it was quantized in (its scales and weights are that dtype's values)."""
    recorded = meta.get("dtype") or "float32"
    if not hasattr(args, "dtype"):
        return
    if args.dtype is None:
        args.dtype = recorded
    elif args.dtype != recorded:
        raise BrevitasLDMError(f"--dtype {args.dtype} differs from the checkpoint's {recorded}, the dtype it was "
                               f"calibrated in: drop --dtype, or quantize again in {args.dtype}")


def load_model(args: argparse.Namespace) -> tuple[Any, FusedLora | None]:
    """The pipeline a command works on: ``--model`` loaded on ``--device``, with ``--lora`` fused in."""
    from brevitas_ldm.denoiser.lora import check_lora_file, fuse_lora

    lora_file = check_lora_file(args.lora) if getattr(args, "lora", None) is not None else None
    pipe = load_pipeline(args.model, args.device, getattr(args, "dtype", None) or "float32")
    return pipe, (fuse_lora(pipe, lora_file) if lora_file is not None else None)
