"""``brevitas-ldm export``: write a quantized checkpoint's denoiser through Brevitas' exporters and check it.

The example inputs are captured from a real pipeline call (one sampling step on one prompt), so the exported
graph sees exactly what the denoiser sees in the pipeline. ONNX exports are then run in onnxruntime on fresh
inputs from another prompt and seed and compared with the fake-quantized torch denoiser (SQNR in dB).
"""

from __future__ import annotations

import argparse
import math

from brevitas_ldm.commands.common import (
    add_checkpoint_option,
    add_model_options,
    add_output_options,
    load_model,
    required_checkpoint,
)
from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.io import atomic_output_dir, write_json_atomic

#: Where ``--pipeline`` writes the OpenVINO pipeline inside ``--out``, and what loads it.
PIPELINE_FOLDER = "pipeline"
PIPELINE_LOADER = "optimum.intel.OVDiffusionPipeline.from_pretrained"


def check_pipeline_option(fmt: str, class_name: str) -> None:
    """``--pipeline`` needs the OpenVINO denoiser and a pipeline the OpenVINO folder lays out (refused up front)."""
    from brevitas_ldm.export.openvino_pipeline import check_pipeline_class

    if fmt != "openvino":
        raise BrevitasLDMError(f"--pipeline writes an OpenVINO pipeline around the openvino denoiser, not around "
                               f"--format {fmt}: add --format openvino, or drop --pipeline")
    check_pipeline_class(class_name)


def add_parser(subparsers) -> None:
    from brevitas_ldm.export import EXPORT_FORMATS, WEIGHT_STORAGES
    from brevitas_ldm.export.emulation import EMULATED_CPU_FLAGS

    parser = subparsers.add_parser("export", help="export a quantized checkpoint (OpenVINO IR, ONNX QCDQ or integer "
                                                  "kernels, torch QCDQ, QONNX)")
    add_model_options(parser, dtype=False)     # onnxruntime runs float32: a checkpoint's values cast exactly
    add_checkpoint_option(parser, " to export")
    parser.add_argument("--format", choices=EXPORT_FORMATS.names(), default="onnx-qcdq",
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
    parser.add_argument("--pipeline", action="store_true",
                        help="openvino: also write pipeline/, the whole StableDiffusionPipeline as OpenVINO IR in the "
                        "folder optimum-intel loads (OVDiffusionPipeline.from_pretrained), the quantized denoiser "
                        "as its unet")
    add_output_options(parser)
    parser.set_defaults(run=run)


def capture_inputs(pipe, prompt: str, seed: int) -> dict:
    """Keyword tensors of the denoiser's first call when the pipeline samples ``prompt`` with ``seed``."""
    from brevitas_ldm.denoiser.sampling import SamplingSpec
    from brevitas_ldm.export.wrapper import first_call_inputs

    return first_call_inputs(pipe, [prompt], [seed], SamplingSpec(batch_size=1))


def run(args: argparse.Namespace) -> int:
    import copy

    from brevitas_ldm.checkpoint.folder import load_quantized
    from brevitas_ldm.denoiser.loading import pipeline_class_name, resolve_model_path
    from brevitas_ldm.denoiser.sampling import get_denoiser
    from brevitas_ldm.export import EXPORT_FORMATS, cpu_info, export_denoiser
    from brevitas_ldm.zoo.catalog import default_prompt_for

    if not math.isfinite(args.min_sqnr_db):
        raise BrevitasLDMError(f"--min-sqnr-db {args.min_sqnr_db} must be a finite number of dB (default 30): the "
                               f"file is refused when onnxruntime agrees with the torch model below it")
    meta = required_checkpoint(args)
    export_format = EXPORT_FORMATS.get(args.format, "--format")
    export_format.check_weight_storage(args.weight_storage)
    if args.emulate_cpu and export_format.runtime is None:
        runnable = [name for name in EXPORT_FORMATS.names() if EXPORT_FORMATS.get(name).runtime]
        raise BrevitasLDMError(f"--emulate-cpu runs the file in onnxruntime or OpenVINO, which cannot run "
                               f"{args.format}: use --format {', '.join(runnable)}")
    if args.float_baseline:
        export_format.check_float_baseline()
    if args.pipeline:
        check_pipeline_option(args.format, pipeline_class_name(resolve_model_path(args.model)))
    pipe, _ = load_model(args)
    float_inputs = capture_inputs(pipe, default_prompt_for(args.model, 3), seed=1) if args.float_baseline else None
    float_denoiser = copy.deepcopy(get_denoiser(pipe)) if args.float_baseline else None
    load_quantized(pipe, args.checkpoint, meta)
    denoiser = get_denoiser(pipe)
    example = capture_inputs(pipe, default_prompt_for(args.model, 7), seed=0)
    fresh = capture_inputs(pipe, default_prompt_for(args.model, 2), seed=12345)
    summary: dict = {"format": args.format, "checkpoint": str(args.checkpoint), "cpu": cpu_info().to_dict()}
    with atomic_output_dir(args.out, args.overwrite) as staging:
        path = export_denoiser(denoiser, example, staging / f"denoiser.{export_format.suffix}", fmt=args.format,
                               opset=args.opset, weight_storage=args.weight_storage)
        summary["file"] = path.name
        summary["size_bytes"] = path.stat().st_size
        export_format.verify(summary, path, denoiser, fresh, args.min_sqnr_db, args.emulate_cpu,
                             args.weight_storage)
        if args.float_baseline:
            export_format.float_baseline(summary, float_denoiser, float_inputs, fresh, staging, args.opset)
        if args.pipeline:
            from brevitas_ldm.export.openvino_pipeline import write_openvino_pipeline

            sizes = write_openvino_pipeline(pipe, path, staging / PIPELINE_FOLDER)
            summary["pipeline"] = {"folder": PIPELINE_FOLDER, "loader": PIPELINE_LOADER, "size_bytes": sizes}
        for item in summary.get("verification", {}), summary.get("emulated_verification", {}):
            item.pop("path", None)
        write_json_atomic(staging / "export.json", summary)
    check = summary.get("verification", {})
    line = export_format.written(args.out / summary["file"], summary)
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
    if "pipeline" in summary:
        line += (f"; pipeline {args.out / PIPELINE_FOLDER} ({sum(summary['pipeline']['size_bytes'].values()):,} "
                 f"bytes of IR): load with {PIPELINE_LOADER}('{args.out / PIPELINE_FOLDER}')")
    print(line)
    return 0
