"""``brevitas-ldm export``: write a quantized checkpoint's denoiser through Brevitas' exporters and check it.

The example inputs are captured from a real pipeline call (one sampling step on one prompt), so the exported
graph sees exactly what the denoiser sees in the pipeline. ONNX exports are then run in onnxruntime on fresh
inputs from another prompt and seed and compared with the fake-quantized torch denoiser (SQNR in dB).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

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
    from brevitas_ldm.export import EXPORT_FORMATS, WEIGHT_STORAGES
    from brevitas_ldm.export.emulation import EMULATED_CPU_FLAGS

    parser = subparsers.add_parser("export", help="export a quantized checkpoint (OpenVINO IR, ONNX QCDQ or integer "
                                                  "kernels, torch QCDQ, QONNX)")
    add_model_options(parser, dtype=False)     # onnxruntime runs float32: a checkpoint's values cast exactly
    add_checkpoint_option(parser, " to export")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="onnx-qcdq",
                        help="openvino: OpenVINO IR, integer kernels in OpenVINO (fastest on x86 CPUs); onnx-int8: "
                        "integer kernels in onnxruntime; onnx-qcdq: portable Q/DQ")
    parser.add_argument("--weight-storage", choices=WEIGHT_STORAGES, default="portable",
                        help="ONNX formats: portable: exact on every x86 CPU (default); int8: exact only with "
                        "VNNI/AMX (openvino always stores int8, the only weights its integer convolutions take)")
    parser.add_argument("--min-sqnr-db", type=float, default=30.0,
                        help="refuse the file if its runtime agrees with the torch model below this (default 30)")
    parser.add_argument("--emulate-cpu", choices=sorted(EMULATED_CPU_FLAGS), default=None,
                        help="also verify on this CPU kind (Haswell: AVX2, no VNNI), emulated by qemu-x86_64 for "
                        "onnxruntime, by OpenVINO with its oneDNN kernels capped to AVX2")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (13-20; FP8 needs 19+)")
    parser.add_argument("--float-baseline", action="store_true",
                        help="also export the FP32 denoiser and compare size and onnxruntime latency")
    add_output_options(parser)
    parser.set_defaults(run=run)


def capture_inputs(pipe, prompt: str, seed: int) -> dict:
    """Keyword tensors of the denoiser's first call when the pipeline samples ``prompt`` with ``seed``."""
    from brevitas_ldm.denoiser.sampling import SamplingSpec
    from brevitas_ldm.export.wrapper import first_call_inputs

    return first_call_inputs(pipe, [prompt], [seed], SamplingSpec(batch_size=1))


def run(args: argparse.Namespace) -> int:
    from brevitas_ldm.checkpoint.folder import load_quantized
    from brevitas_ldm.denoiser.sampling import get_denoiser
    from brevitas_ldm.export import (
        ONNXRUNTIME_FORMATS,
        check_agreement,
        cpu_info,
        export_denoiser,
        export_float_onnx,
        integer_kernel_counts,
        onnx_latency,
        verify_onnx,
        verify_torchscript,
    )
    from brevitas_ldm.export.exporters import check_weight_storage
    from brevitas_ldm.export.openvino_ir import OPENVINO_FORMAT
    from brevitas_ldm.zoo.catalog import default_prompt_for

    if not math.isfinite(args.min_sqnr_db):
        raise BrevitasLDMError(f"--min-sqnr-db {args.min_sqnr_db} must be a finite number of dB (default 30): the "
                               f"file is refused when onnxruntime agrees with the torch model below it")
    meta = required_checkpoint(args)
    check_weight_storage(args.format, args.weight_storage)
    if args.emulate_cpu and args.format not in (*ONNXRUNTIME_FORMATS, OPENVINO_FORMAT):
        raise BrevitasLDMError(f"--emulate-cpu runs the file in onnxruntime or OpenVINO, which cannot run "
                               f"{args.format}: use --format openvino, onnx-int8 or onnx-qcdq")
    pipe, _ = load_model(args)
    float_inputs = capture_inputs(pipe, default_prompt_for(args.model, 3), seed=1) if args.float_baseline else None
    float_denoiser = None
    if args.float_baseline:
        import copy

        float_denoiser = copy.deepcopy(get_denoiser(pipe))
    load_quantized(pipe, args.checkpoint, meta)
    denoiser = get_denoiser(pipe)
    example = capture_inputs(pipe, default_prompt_for(args.model, 7), seed=0)
    fresh = capture_inputs(pipe, default_prompt_for(args.model, 2), seed=12345)
    suffix = {"torch-qcdq": "pt", OPENVINO_FORMAT: "xml"}.get(args.format, "onnx")
    summary: dict = {"format": args.format, "checkpoint": str(args.checkpoint), "cpu": cpu_info().to_dict()}
    with atomic_output_dir(args.out, args.overwrite) as staging:
        path = export_denoiser(denoiser, example, staging / f"denoiser.{suffix}", fmt=args.format, opset=args.opset,
                               weight_storage=args.weight_storage)
        summary["file"] = path.name
        summary["size_bytes"] = path.stat().st_size
        if args.format in ONNXRUNTIME_FORMATS:
            summary["weight_storage"] = args.weight_storage
            checks = [verify_onnx(path, denoiser, fresh)]
            if args.emulate_cpu:
                checks.append(verify_onnx(path, denoiser, fresh, emulate_cpu=args.emulate_cpu))
            for check in checks:      # a file that is not the measured model is refused, and nothing is written
                check_agreement(check, args.min_sqnr_db)
            summary["verification"] = checks[0]
            if args.emulate_cpu:
                summary["emulated_verification"] = checks[1]
            summary["kernels"] = integer_kernel_counts(path)
            summary["latency"] = onnx_latency(path, fresh)
        elif args.format == OPENVINO_FORMAT:
            _verify_openvino(summary, path, denoiser, fresh, args.min_sqnr_db, args.emulate_cpu)
        elif args.format == "torch-qcdq":
            summary["verification"] = verify_torchscript(path, denoiser, fresh)
        if args.float_baseline and args.format == OPENVINO_FORMAT:
            _openvino_float_baseline(summary, float_denoiser, float_inputs, fresh, staging, args.opset)
        elif args.float_baseline and suffix == "onnx":
            float_path = export_float_onnx(float_denoiser, float_inputs, staging / "denoiser_fp32.onnx",
                                           opset=args.opset)
            summary["fp32"] = {"size_bytes": float_path.stat().st_size}
            if args.format in ONNXRUNTIME_FORMATS:
                summary["fp32"]["latency"] = onnx_latency(float_path, fresh)
                summary["size_ratio"] = summary["size_bytes"] / summary["fp32"]["size_bytes"]
                summary["latency_ratio"] = summary["latency"]["median_ms"] / summary["fp32"]["latency"]["median_ms"]
        for item in summary.get("verification", {}), summary.get("emulated_verification", {}):
            item.pop("path", None)
        write_json_atomic(staging / "export.json", summary)
    check = summary.get("verification", {})
    line = f"wrote {args.out / summary['file']} ({summary['size_bytes']:,} bytes)"
    if args.format == OPENVINO_FORMAT:
        line = f"wrote {args.out / summary['file']} + .bin ({summary['size_bytes']:,} bytes)"
    if "sqnr_db" in check:
        line += f"; {args.format} vs fake-quantized torch: {check['sqnr_db']:.2f} dB"
    if "emulated_verification" in summary:
        line += f" (emulated {args.emulate_cpu}: {summary['emulated_verification']['sqnr_db']:.2f} dB)"
    if "kernels" in summary:
        kernels = summary["kernels"]["integer"]
        line += f"; integer kernels: {', '.join(f'{n} {op}' for op, n in kernels.items()) or 'none'}"
        if "inference_precision" in summary["kernels"]:
            line += f" (OpenVINO, float parts in {summary['kernels']['inference_precision']})"
    if "latency_ratio" in summary:
        line += f"; latency {summary['latency_ratio']:.2f}x FP32, size {summary['size_ratio']:.2f}x"
    print(line)
    return 0


def _verify_openvino(summary: dict, path: Path, denoiser, fresh: dict, min_sqnr_db: float,
                     emulate_cpu: str | None) -> None:
    """Verify the IR in OpenVINO at f32 (natively and, with ``emulate_cpu``, with AVX2 kernels; refused below the
    bound on either), then count its integer kernels and time it."""
    from brevitas_ldm.export import check_agreement
    from brevitas_ldm.export.openvino_ir import ir_size_bytes
    from brevitas_ldm.export.openvino_runtime import (
        openvino_kernel_counts,
        openvino_latency,
        openvino_version,
        verify_openvino,
    )
    from brevitas_ldm.export.wrapper import export_signature

    check = verify_openvino(path, denoiser, fresh)
    checks = [check] + ([verify_openvino(path, denoiser, fresh, emulate_cpu=emulate_cpu)] if emulate_cpu else [])
    for item in checks:      # a file that is not the measured model is refused, and nothing is written
        check_agreement(item, min_sqnr_db)
    if emulate_cpu:
        summary["emulated_verification"] = checks[1]
    summary["size_bytes"] = ir_size_bytes(path)
    summary["weights_bytes"] = path.with_suffix(".bin").stat().st_size
    summary["openvino"] = openvino_version()
    summary["weight_storage"] = "int8"
    summary["verification"] = check
    summary["kernels"] = openvino_kernel_counts(path)
    names, tensors = export_signature(denoiser, fresh)
    summary["latency"] = openvino_latency(path, dict(zip(names, tensors)))
    summary["latency_default_precision"] = openvino_latency(path, dict(zip(names, tensors)), precision=None)


def _openvino_float_baseline(summary: dict, float_denoiser, float_inputs: dict, fresh: dict, staging: Path,
                             opset: int) -> None:
    """The FP32 denoiser as OpenVINO IR beside the quantized one, timed the same way (f32)."""
    import tempfile

    from brevitas_ldm.export import export_float_onnx
    from brevitas_ldm.export.openvino_ir import ir_size_bytes, onnx_to_openvino_ir
    from brevitas_ldm.export.openvino_runtime import openvino_latency
    from brevitas_ldm.export.wrapper import export_signature

    with tempfile.TemporaryDirectory(prefix="brevitas-ldm-fp32-") as tmp:
        onnx_path = export_float_onnx(float_denoiser, float_inputs, Path(tmp) / "fp32.onnx", opset=opset)
        float_path = onnx_to_openvino_ir(onnx_path, staging / "denoiser_fp32.xml")
    names, tensors = export_signature(float_denoiser, fresh)
    summary["fp32"] = {"size_bytes": ir_size_bytes(float_path),
                       "weights_bytes": float_path.with_suffix(".bin").stat().st_size,
                       "latency": openvino_latency(float_path, dict(zip(names, tensors)))}
    summary["size_ratio"] = summary["size_bytes"] / summary["fp32"]["size_bytes"]
    # the .xml (the graph) is a large share of a tiny model's IR and a negligible one of a real model's
    summary["weights_ratio"] = summary["weights_bytes"] / summary["fp32"]["weights_bytes"]
    summary["latency_ratio"] = summary["latency"]["median_ms"] / summary["fp32"]["latency"]["median_ms"]
