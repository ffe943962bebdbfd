"""``brevitas-ldm export``: write a quantized checkpoint's denoiser through Brevitas' exporters and check it.

The example inputs are captured from a real pipeline call (one sampling step on one prompt), so the exported
graph sees exactly what the denoiser sees in the pipeline. ONNX exports are then run in onnxruntime on fresh
inputs from another prompt and seed and compared with the fake-quantized torch denoiser (SQNR in dB).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from brevitas_ldm.commands.common import add_model_options, add_output_options
from brevitas_ldm.io import atomic_output_dir, check_output_dir, write_json_atomic


def add_parser(subparsers) -> None:
    from brevitas_ldm.export import EXPORT_FORMATS

    parser = subparsers.add_parser("export", help="export a quantized checkpoint (ONNX QCDQ, torch QCDQ, QONNX)")
    add_model_options(parser)
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder written by `quantize`")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="onnx-qcdq")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (13-20; FP8 needs 19+)")
    parser.add_argument("--float-baseline", action="store_true",
                        help="also export the FP32 denoiser and compare size and onnxruntime latency")
    add_output_options(parser)
    parser.set_defaults(run=run)


def capture_inputs(pipe, prompt: str, seed: int) -> dict:
    """Keyword tensors of the denoiser's first call when the pipeline samples ``prompt`` with ``seed``."""
    from brevitas_ldm.export import call_inputs
    from brevitas_ldm.sampling import SamplingSpec, denoiser_step_hook, generate, get_denoiser

    denoiser = get_denoiser(pipe)
    captured: dict = {}

    def grab(step, timestep, args, kwargs, output):
        if not captured:
            captured.update(call_inputs(denoiser, args, kwargs))

    with denoiser_step_hook(denoiser, grab):
        generate(pipe, [prompt], [seed], SamplingSpec(num_inference_steps=1, batch_size=1))
    return captured


def run(args: argparse.Namespace) -> int:
    from brevitas_ldm.checkpoint import _check_checkpoint_dir, load_quantized
    from brevitas_ldm.export import export_denoiser, export_float_onnx, onnx_latency, verify_onnx, verify_torchscript
    from brevitas_ldm.models import load_pipeline
    from brevitas_ldm.sampling import get_denoiser
    from brevitas_ldm.zoo.data import prompt_for

    check_output_dir(args.out, args.overwrite)
    _check_checkpoint_dir(args.checkpoint)
    pipe = load_pipeline(args.model, args.device)
    float_inputs = capture_inputs(pipe, prompt_for(3), seed=1) if args.float_baseline else None
    float_denoiser = None
    if args.float_baseline:
        import copy

        float_denoiser = copy.deepcopy(get_denoiser(pipe))
    load_quantized(pipe, args.checkpoint)
    denoiser = get_denoiser(pipe)
    example = capture_inputs(pipe, prompt_for(7), seed=0)
    fresh = capture_inputs(pipe, prompt_for(2), seed=12345)
    suffix = {"onnx-qcdq": "onnx", "qonnx": "onnx", "torch-qcdq": "pt"}[args.format]
    summary: dict = {"format": args.format, "checkpoint": str(args.checkpoint)}
    with atomic_output_dir(args.out, args.overwrite) as staging:
        path = export_denoiser(denoiser, example, staging / f"denoiser.{suffix}", fmt=args.format, opset=args.opset)
        summary["file"] = path.name
        summary["size_bytes"] = path.stat().st_size
        if args.format == "onnx-qcdq":
            summary["verification"] = verify_onnx(path, denoiser, fresh)
            summary["latency"] = onnx_latency(path, fresh)
        elif args.format == "torch-qcdq":
            summary["verification"] = verify_torchscript(path, denoiser, fresh)
        if args.float_baseline and suffix == "onnx":
            float_path = export_float_onnx(float_denoiser, float_inputs, staging / "denoiser_fp32.onnx", opset=args.opset)
            summary["fp32"] = {"size_bytes": float_path.stat().st_size}
            if args.format == "onnx-qcdq":
                summary["fp32"]["latency"] = onnx_latency(float_path, fresh)
                summary["size_ratio"] = summary["size_bytes"] / summary["fp32"]["size_bytes"]
                summary["latency_ratio"] = summary["latency"]["median_ms"] / summary["fp32"]["latency"]["median_ms"]
        for item in summary.get("verification", {}), :
            item.pop("path", None)
        write_json_atomic(staging / "export.json", summary)
    check = summary.get("verification", {})
    line = f"wrote {args.out / summary['file']} ({summary['size_bytes']:,} bytes)"
    if "sqnr_db" in check:
        line += f"; {args.format} vs fake-quantized torch: {check['sqnr_db']:.2f} dB"
    print(line)
    print(json.dumps({k: v for k, v in summary.items() if k in ("size_ratio", "latency_ratio")}))
    return 0
