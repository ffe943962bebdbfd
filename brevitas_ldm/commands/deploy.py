"""``brevitas-ldm deploy``: run a quantized checkpoint's denoiser on a runtime's fused kernels and check it.

The checkpoint is loaded as the fake-quantized Brevitas model, a copy is deployed (``brevitas_ldm.runtimes``), and
both run the denoiser's first call of a fresh pipeline run (another prompt and seed than any calibration): the
runtime is refused below ``--min-sqnr-db`` against the fake-quantized model, and ``deploy.json`` records which
kernel each layer got, the agreement, and the latency of both, timed in interleaved rounds (with ``--compile``
also the runtime under ``torch.compile``). The deployed model itself is not written: it is rebuilt from the
checkpoint in one call (``deploy(from_pretrained(folder))``), which is faster than loading a pickle and never
runs pickled code.
"""

from __future__ import annotations

import argparse

from brevitas_ldm.commands.common import (
    add_checkpoint_option,
    add_model_options,
    add_output_options,
    load_model,
    required_checkpoint,
)
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.io import atomic_output_dir, write_json_atomic


def add_parser(subparsers) -> None:
    from brevitas_ldm.runtimes import RUNTIMES

    parser = subparsers.add_parser("deploy", help="run a quantized checkpoint on fused int8/fp8 kernels (torch "
                                                  "runtime) and check it against the fake-quantized model")
    add_model_options(parser)
    add_checkpoint_option(parser, " to deploy")
    parser.add_argument("--runtime", choices=RUNTIMES.names(), default="torch", help="deployment runtime")
    parser.add_argument("--compile", action="store_true", help="also time the runtime under torch.compile")
    parser.add_argument("--min-sqnr-db", type=float, default=30.0,
                        help="refuse the runtime if it agrees with the fake-quantized model below this (default 30)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    add_output_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import copy

    import torch

    from brevitas_ldm.checkpoint.folder import load_quantized
    from brevitas_ldm.denoiser.sampling import (
        SamplingSpec,
        first_denoiser_call,
        get_denoiser,
    )
    from brevitas_ldm.process.timing import interleaved_latency
    from brevitas_ldm.quant.quantize import fast_inference
    from brevitas_ldm.runtimes import deploy
    from brevitas_ldm.sqnr import sqnr_db
    from brevitas_ldm.zoo.data import prompt_for

    meta = required_checkpoint(args)
    if args.rounds < 1:
        raise BrevitasLDMError(f"--rounds {args.rounds} must be at least 1")
    pipe, _ = load_model(args)
    load_quantized(pipe, args.checkpoint, meta)
    fake = get_denoiser(pipe).eval()
    call_args, call_kwargs = first_denoiser_call(pipe, [prompt_for(2)], [12345], SamplingSpec(batch_size=1),
                                                 run_it=False)
    deployed = copy.deepcopy(fake)
    deployment = deploy(deployed, runtime=args.runtime)

    def output(model):
        value = model(*call_args, **call_kwargs)
        return (value.sample if hasattr(value, "sample") else value[0]).float()

    with torch.no_grad(), fast_inference(fake):
        reference = output(fake)
        runtime_out = output(deployed)
        agreement = sqnr_db(reference, runtime_out)
        if agreement < args.min_sqnr_db:
            raise BrevitasLDMError(f"the {args.runtime} runtime agrees with the fake-quantized model at "
                                   f"{agreement:.1f} dB < --min-sqnr-db {args.min_sqnr_db:.0f}: float rounding "
                                   f"moved quantized values by one step and the model amplified them; check "
                                   f"more inputs or lower --min-sqnr-db")
        calls = {"fake_quant": lambda: output(fake), "runtime": lambda: output(deployed)}
        if args.compile:
            compiled = torch.compile(deployed)
            calls["runtime_compiled"] = lambda: output(compiled)
        latency = interleaved_latency(calls, rounds=args.rounds)
    summary = {**deployment.to_dict(), "checkpoint": str(args.checkpoint), "sqnr_vs_fake_quant_db": agreement,
               "latency": latency, "torch": torch.__version__, "device": str(reference.device)}
    for name in calls:
        summary[f"{name}_vs_fake_quant_latency"] = latency[name]["median_ms"] / latency["fake_quant"]["median_ms"]
    with atomic_output_dir(args.out, args.overwrite) as staging:
        write_json_atomic(staging / "deploy.json", summary)
    kernels = ", ".join(f"{n} {kind}" for kind, n in deployment.kernels.items())
    print(f"deployed on the {args.runtime} runtime ({kernels}); vs fake-quantized: {agreement:.2f} dB, latency "
          f"{summary['runtime_vs_fake_quant_latency']:.2f}x; wrote {args.out / 'deploy.json'}")
    return 0
