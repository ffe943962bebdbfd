"""Where NNCF and the project put activation quantizers in OpenVINO IR, and what NNCF's placement buys in latency.

The latency gap between the project's all-W8A8 ``--format openvino`` file and NNCF's one-call PTQ on the SD-shaped
UNet (docs/deployment-openvino.md) is not in the Conv/Linear kernels: both run every one of them on integers. This
measures the two differences in placement, in one process, on the same inputs:

* NNCF (``ModelType.TRANSFORMER``) also quantizes attention's Q K^T MatMuls, both inputs (P V, after the softmax,
  stays float); the row "NNCF without attention MatMuls" is the same call with every activation x activation
  MatMul in ``nncf.IgnoredScope``;
* NNCF puts one FakeQuantize on a tensor however many layers read it; the project's file has one per consuming
  layer (Brevitas quantizes each layer's input), e.g. the q/k/v projections of one attention.

The last row is the project's answer to the first: ``[deploy] quantize_query_key`` quantizes the query and key
projections' outputs, so the scores' MatMul has two 8-bit inputs, as in NNCF's file.

Latency: OpenVINO at f32 (``INFERENCE_PRECISION_HINT``), ``--threads`` threads, interleaved rounds, median ratio to
the FP32 IR; SQNR vs the FP32 IR on ``--fresh`` inputs the calibration never saw. Inputs are seeded random denoiser
inputs (``--seed``), the calibration set for NNCF and for the project's min-max calibration alike.

    python benchmarks/openvino_quantizer_placement.py --model sd15-half --out docs/openvino-quantizer-placement.md
"""

from __future__ import annotations

import argparse
import collections
import copy
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deployment as base  # noqa: E402  (the SD-shaped model's builder and its channel widths)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=base.SD_MODEL, help=f"an embedded model name, or {base.SD_MODEL!r}")
    parser.add_argument("--latent-size", type=int, default=32, help="latent side for sd15-half")
    parser.add_argument("--calibration", type=int, default=6, help="calibration inputs (NNCF and the project)")
    parser.add_argument("--fresh", type=int, default=2, help="held-out inputs for the SQNR")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/openvino-placement"))
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    return parser.parse_args(argv)


def load_denoiser(args) -> tuple[torch.nn.Module, int, str]:
    """(denoiser, latent side, description)."""
    from brevitas_ldm.denoiser.loading import load_pipeline
    from brevitas_ldm.denoiser.sampling import get_denoiser

    if args.model == base.SD_MODEL:
        from scale_measure import build_pipeline

        pipe = build_pipeline(args.latent_size, args.seed, base.SD_HALF_CHANNELS)
        return (get_denoiser(pipe).eval(), args.latent_size,
                f"random-weight SD-1.5-shaped UNet at half width {base.SD_HALF_CHANNELS}, {args.latent_size}x"
                f"{args.latent_size} latents, 16 text tokens")
    pipe = load_pipeline(args.model)
    unet = get_denoiser(pipe).eval()
    return unet, unet.config.sample_size, f"{args.model}, {unet.config.sample_size}x{unet.config.sample_size} latents"


def denoiser_inputs(unet, side: int, seed: int) -> dict[str, torch.Tensor]:
    """Seeded inputs of one batch-1 denoiser call: latents, a timestep and 16 tokens of text states."""
    generator = torch.Generator().manual_seed(seed)
    return {"sample": torch.randn(1, unet.config.in_channels, side, side, generator=generator),
            "timestep": torch.randint(0, 1000, (1,), generator=generator),
            "encoder_hidden_states": torch.randn(1, 16, unet.config.cross_attention_dim, generator=generator)}


def _weight_behind(node, depth: int = 0) -> bool:
    """Whether a MatMul input comes from a constant (a weight) through converts, scales and reshapes."""
    if node.get_type_name() == "Constant":
        return True
    if depth > 5 or node.get_input_size() == 0 or node.get_type_name() in ("MatMul", "Add", "Softmax", "Convolution"):
        return False
    return _weight_behind(node.input(0).get_source_output().get_node(), depth + 1)


def activation_matmuls(model) -> list:
    """The MatMuls of ``model`` whose two inputs are both activations (attention's Q K^T and P V)."""
    return [op for op in model.get_ops() if op.get_type_name() == "MatMul"
            and not any(_weight_behind(op.input(i).get_source_output().get_node()) for i in range(2))]


def _fed_by_fake_quantize(node, depth: int = 0) -> bool:
    if node.get_type_name() == "FakeQuantize":
        return True
    if depth > 8 or node.get_input_size() == 0 or node.get_type_name() in ("MatMul", "Add", "Softmax"):
        return False
    return _fed_by_fake_quantize(node.input(0).get_source_output().get_node(), depth + 1)


def placement(model) -> dict[str, Any]:
    """Activation FakeQuantize count, how many tensors they sit on, and quantized activation MatMuls."""
    per_tensor: collections.Counter = collections.Counter()
    for op in model.get_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        source = op.input(0).get_source_output()
        if source.get_node().get_type_name() == "Constant":
            continue                                                     # a weight's, folded or not
        per_tensor[(source.get_node().get_friendly_name(), source.get_index())] += 1
    matmuls = activation_matmuls(model)
    quantized = sum(1 for op in matmuls if all(_fed_by_fake_quantize(op.input(i).get_source_output().get_node())
                                               for i in range(2)))
    return {"activation_fq": sum(per_tensor.values()), "tensors": len(per_tensor),
            "most_on_one_tensor": max(per_tensor.values(), default=0), "activation_matmuls": len(matmuls),
            "activation_matmuls_quantized": quantized, "ops": len(model.get_ops())}


def project_file(unet, example, calibration, path: Path, query_key: bool) -> Path:
    """minmax-w8a8 on ``unet`` (with ``[deploy] quantize_query_key`` when ``query_key``), activations calibrated on
    ``calibration`` with Brevitas' calibration_mode, exported with ``--format openvino``'s exporter."""
    import dataclasses

    from brevitas.graph.calibrate import calibration_mode

    from brevitas_ldm.export import export_denoiser
    from brevitas_ldm.quant.quantize import quantize_denoiser
    from brevitas_ldm.recipe import get_recipe

    recipe = get_recipe("minmax-w8a8")
    recipe = dataclasses.replace(recipe, deploy=dataclasses.replace(recipe.deploy, quantize_query_key=query_key))
    model = quantize_denoiser(copy.deepcopy(unet), recipe).eval()
    with torch.no_grad(), calibration_mode(model):
        for inputs in calibration:
            model(**inputs)
    return export_denoiser(model, example, path, fmt="openvino")


def main(argv=None) -> int:
    import nncf
    import openvino

    from brevitas_ldm.export import cpu_info, export_float_onnx
    from brevitas_ldm.export.openvino_ir import onnx_to_openvino_ir

    args = parse_args(argv)
    torch.manual_seed(args.seed)
    args.workdir.mkdir(parents=True, exist_ok=True)
    unet, side, description = load_denoiser(args)
    calibration = [denoiser_inputs(unet, side, args.seed + i) for i in range(args.calibration)]
    fresh = [denoiser_inputs(unet, side, args.seed + 1000 + i) for i in range(args.fresh)]
    fp_xml = onnx_to_openvino_ir(export_float_onnx(unet, calibration[0], args.workdir / "fp32.onnx"),
                                 args.workdir / "fp32.xml")
    core = openvino.Core()
    fp_model = core.read_model(str(fp_xml))
    kinds = {port.get_any_name(): port.get_element_type().to_dtype() for port in fp_model.inputs}

    def feed(inputs):
        return {name: inputs[name].numpy().astype(kind) for name, kind in kinds.items()}

    dataset = nncf.Dataset([feed(inputs) for inputs in calibration])
    ignored = nncf.IgnoredScope(names=[op.get_friendly_name() for op in activation_matmuls(fp_model)])
    models = {"FP32 IR": fp_model}
    seconds = {}
    for label, extra in (("NNCF PTQ (ModelType.TRANSFORMER)", {}),
                         ("NNCF PTQ without attention MatMuls (IgnoredScope)", {"ignored_scope": ignored})):
        start = time.perf_counter()
        models[label] = nncf.quantize(core.read_model(str(fp_xml)), dataset, model_type=nncf.ModelType.TRANSFORMER,
                                      subset_size=len(calibration), **extra)
        seconds[label] = time.perf_counter() - start
    for label, query_key in (("project minmax-w8a8 --format openvino", False),
                             ("project minmax-w8a8 + [deploy] quantize_query_key --format openvino", True)):
        path = project_file(unet, calibration[0], calibration, args.workdir / f"project-{query_key}.xml", query_key)
        models[label] = core.read_model(str(path))

    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": args.threads}
    compiled = {label: core.compile_model(model, "CPU", config) for label, model in models.items()}
    references = [compiled["FP32 IR"](feed(inputs))[0] for inputs in fresh]
    sqnr = {}
    for label, model in compiled.items():
        outputs = [model(feed(inputs))[0] for inputs in fresh]
        noise = sum(float(((ref - out) ** 2).sum()) for ref, out in zip(references, outputs))
        signal = sum(float((ref ** 2).sum()) for ref in references)
        sqnr[label] = 10 * np.log10(signal / noise) if noise > 0 else float("inf")
    timed = feed(calibration[0])
    for model in compiled.values():
        model(timed)
    ratios: dict[str, list[float]] = {label: [] for label in compiled}
    milliseconds: dict[str, list[float]] = {label: [] for label in compiled}
    for _ in range(args.rounds):                                        # interleaved: load hits every row alike
        round_ms = {}
        for label, model in compiled.items():
            start = time.perf_counter()
            model(timed)
            round_ms[label] = 1e3 * (time.perf_counter() - start)
        for label, ms in round_ms.items():
            milliseconds[label].append(ms)
            ratios[label].append(ms / round_ms["FP32 IR"])

    cpu = cpu_info()
    lines = [f"# Activation quantizer placement in OpenVINO: NNCF vs the project ({args.model})", "",
             f"Command: `python benchmarks/openvino_quantizer_placement.py {shlex.join(argv or sys.argv[1:])}`.", "",
             f"Model: {description}. CPU: {cpu.model} [{' '.join(cpu.isa_flags)}], {args.threads} thread(s), "
             f"OpenVINO at f32 (INFERENCE_PRECISION_HINT). Versions: python {platform.python_version()}, torch "
             f"{torch.__version__}, openvino {openvino.__version__}, nncf {nncf.__version__}. Seed {args.seed}; "
             f"{args.calibration} calibration inputs, {args.fresh} fresh inputs for the SQNR; latency: median over "
             f"{args.rounds} interleaved rounds of each round's ratio to the FP32 IR.", "",
             "| row | latency / FP32 IR | ms | SQNR vs FP32 IR (dB) | activation FakeQuantize | on tensors | most on "
             "one tensor | activation x activation MatMuls quantized | ops |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, model in models.items():
        where = placement(model)
        lines.append(f"| {label} | {statistics.median(ratios[label]):.3f} | "
                     f"{statistics.median(milliseconds[label]):.1f} | {sqnr[label]:.2f} | {where['activation_fq']} | "
                     f"{where['tensors']} | {where['most_on_one_tensor']} | "
                     f"{where['activation_matmuls_quantized']} of {where['activation_matmuls']} | {where['ops']} |")
    lines += ["", "NNCF times: " + ", ".join(f"{label} {s:.0f} s" for label, s in seconds.items()) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        from brevitas_ldm.io import write_text_atomic

        write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
