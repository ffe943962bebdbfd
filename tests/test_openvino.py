"""The ``openvino`` export: OpenVINO IR whose quantized layers OpenVINO runs on integer kernels, checked in OpenVINO.

Kernel counts are read from OpenVINO's compiled runtime model (``runtimePrecision`` and the data input's element
type of every Convolution / FullyConnected) on whatever CPU runs the suite: the low-precision transformations
that decide them are the same on AVX2, VNNI and AMX CPUs (the CPU kind changes only which int8 kernel runs).
The agreement bound is the onnxruntime path's: this random-weight UNet's own W8A8 noise is ~25 dB, and one-step
rounding flips leave OpenVINO 32.5 dB (seed 2) and 33.6 dB (seed 3) from torch on a VNNI EPYC, at f32.

Both x86 kinds are checked from any machine: OpenVINO's kernels capped to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``, the
runtime model then reports ``jit_avx2_I8`` convolutions) saturate 8-bit weights (7.8 dB against torch, refused
with the cause), and are exact for 7-bit weights (33.2 / 32.1 dB, bit-identical to the VNNI run).
"""

from __future__ import annotations

import onnx
import pytest
import torch
from calibrated import quantized

from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.export import (
    ExportMismatchError,
    check_agreement,
    cpu_info,
    export_denoiser,
)
from brevitas_ldm.export.openvino_ir import (
    fold_weight_clips,
    ir_size_bytes,
    onnx_to_openvino_ir,
)
from brevitas_ldm.export.openvino_runtime import (
    openvino_kernel_counts,
    openvino_latency,
    verify_openvino,
)
from brevitas_ldm.export.wrapper import export_signature
from brevitas_ldm.export.x86_storage import store_for_x86
from brevitas_ldm.quant.quantize import quant_layers
from brevitas_ldm.zoo.tiny import denoiser_inputs, tiny_dit, tiny_sd_unet

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


@pytest.fixture(scope="module")
def sd_model():
    """W8A8 tiny SD UNet with ``conv_out`` planned as float: 32 quantized convolutions, 50 Linear layers."""
    torch.manual_seed(0)
    return quantized(tiny_sd_unet(), plan={"conv_out": "float"})


@pytest.fixture(scope="module")
def sd_ir(sd_model, tmp_path_factory):
    return export_denoiser(sd_model, denoiser_inputs(sd_model, batch=2), tmp_path_factory.mktemp("ov") / "unet.xml",
                           fmt="openvino")


def _layer_counts(model) -> tuple[int, int]:
    layers = quant_layers(model)
    convs = sum(1 for layer in layers.values() if isinstance(layer, torch.nn.Conv2d))
    return convs, len(layers) - convs


def test_every_quantized_layer_runs_an_integer_kernel(sd_model, sd_ir):
    convs, linears = _layer_counts(sd_model)
    assert (convs, linears) == (32, 50)
    kernels = openvino_kernel_counts(sd_ir)
    assert kernels["inference_precision"] == "f32"
    assert kernels["integer"] == {"Convolution": convs, "FullyConnected": linears}
    assert kernels["float"] == {"Convolution": 1}          # conv_out, planned float
    assert sd_ir.with_suffix(".bin").is_file() and ir_size_bytes(sd_ir) > sd_ir.with_suffix(".bin").stat().st_size


def test_8_bit_weights_match_torch_with_vnni_and_are_refused_on_avx2(sd_model, sd_ir):
    inputs = denoiser_inputs(sd_model, batch=16, seed=2)
    native = verify_openvino(sd_ir, sd_model, inputs, threads=1)
    assert native["inference_precision"] == "f32" and native["runtime"].startswith("openvino ")
    avx2 = verify_openvino(sd_ir, sd_model, inputs, threads=1, emulate_cpu="Haswell")
    assert avx2["cpu"]["isa_flags"] == ["avx2"] and avx2["sqnr_db"] < 20.0             # measured 7.8 dB
    refusal = r"unet\.xml is not the measured model on Haswell \(emulated\).* no VNNI.*7-bit weights"
    with pytest.raises(ExportMismatchError, match=refusal):
        check_agreement(avx2, 30.0)
    if cpu_info().has_vnni:
        assert native["sqnr_db"] >= 30.0                           # measured 32.5 dB
        assert native["sqnr_db"] > native["quant_noise_sqnr_db"]   # below the model's own noise (~25 dB)
        check_agreement(native, 30.0)
    else:                                                          # this machine is the AVX2 kind itself
        assert abs(native["sqnr_db"] - avx2["sqnr_db"]) < 1.0


@pytest.fixture(scope="module")
def w7_export(tmp_path_factory):
    """The tiny SD UNet at W7A8 (minmax-w7a8-x86 without its requantized conv outputs), as OpenVINO IR."""
    tmp = tmp_path_factory.mktemp("w7")
    recipe = tmp / "w7a8.toml"
    recipe.write_text('name = "w7a8"\n[weights]\nbits = 7\n[calibration]\nmode = "all_steps"\n')
    torch.manual_seed(0)
    model = quantized(tiny_sd_unet(), recipe=str(recipe), plan={"conv_out": "float"})
    return model, export_denoiser(model, denoiser_inputs(model, batch=2), tmp / "w7.xml", fmt="openvino")


def test_7_bit_weights_are_exact_on_both_cpu_kinds(w7_export):
    model, path = w7_export
    inputs = denoiser_inputs(model, batch=16, seed=2)
    native = verify_openvino(path, model, inputs, threads=1)
    avx2 = verify_openvino(path, model, inputs, threads=1, emulate_cpu="Haswell")
    assert native["sqnr_db"] >= 30.0 and avx2["sqnr_db"] >= 30.0           # measured 33.2 dB on both
    assert abs(native["sqnr_db"] - avx2["sqnr_db"]) < 0.01                   # the same kernels' arithmetic
    check_agreement(avx2, 30.0)


def test_agreement_as_loud_as_the_quantization_noise_names_the_option(w7_export):
    model, path = w7_export                 # exact on every x86 kind, so the same branch fires on any CPU
    result = verify_openvino(path, model, denoiser_inputs(model, batch=16, seed=2), threads=1)
    with pytest.raises(ExportMismatchError, match=r"w7\.xml is not the measured model on .*openvino agrees .* "
                                                  r"about as loud .*--min-sqnr-db \d+"):
        check_agreement(result, 60.0)


def _qcdq(model, path, storage: str):
    return export_denoiser(model, denoiser_inputs(model, batch=2), path, fmt="onnx-qcdq", weight_storage=storage)


def test_weight_clips_and_uint8_weights_are_what_keeps_convolutions_float(sd_model, tmp_path):
    """Why the onnx-qcdq file runs its convolutions in float in OpenVINO (see export/openvino_ir.py)."""
    import openvino as ov

    int8 = _qcdq(sd_model, tmp_path / "int8.onnx", "int8")

    def conv_kernels(model: onnx.ModelProto, name: str) -> int:
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
        ov.save_model(ov.Core().read_model(str(tmp_path / f"{name}.onnx")), str(tmp_path / f"{name}.xml"),
                      compress_to_fp16=False)
        return openvino_kernel_counts(tmp_path / f"{name}.xml")["integer"].get("Convolution", 0)

    as_exported = onnx.load(str(int8))
    assert conv_kernels(as_exported, "clipped") == 0            # Brevitas' Clip between int8 weight and DQ
    folded = onnx.load(str(int8))
    assert fold_weight_clips(folded) == 32 + 50                 # every weight, Linear layers included
    assert conv_kernels(folded, "folded") == 32
    portable = onnx.load(str(int8))
    store_for_x86(portable)                                     # uint8 weights, zero point 128, no Clip
    assert conv_kernels(portable, "uint8") == 0


def test_16_bit_activations_stay_float_and_exact_enough(tmp_path):
    model = quantized(tiny_dit(), plan={"transformer_blocks.1": "w8a16"})
    path = export_denoiser(model, denoiser_inputs(model, batch=2), tmp_path / "dit.xml", fmt="openvino")
    kernels = openvino_kernel_counts(path)
    w8a16 = sum(1 for name in quant_layers(model) if name.startswith("transformer_blocks.1."))
    assert kernels["float"].get("FullyConnected", 0) == w8a16 == 9     # weight-only in OpenVINO, not int8 inputs
    # the other 12 layers (patch conv included) run int8 inputs; OpenVINO runs two of them as two FullyConnected each
    assert kernels["integer"]["Convolution"] == 1
    assert sum(kernels["integer"].values()) >= len(quant_layers(model)) - w8a16
    inputs = denoiser_inputs(model, batch=8, seed=2)
    if cpu_info().has_vnni:
        assert verify_openvino(path, model, inputs, threads=1)["sqnr_db"] >= 30.0     # measured 33.6 dB
    avx2 = verify_openvino(path, model, inputs, threads=1, emulate_cpu="Haswell")     # 8-bit weights: 16.8 dB
    with pytest.raises(ExportMismatchError, match="no VNNI"):
        check_agreement(avx2, 30.0)


def test_latency_and_bad_paths(sd_model, sd_ir, tmp_path):
    names, tensors = export_signature(sd_model, denoiser_inputs(sd_model, batch=2))
    latency = openvino_latency(sd_ir, dict(zip(names, tensors)), repeats=2, warmup=1, threads=1)
    assert latency["median_ms"] > 0 and latency["threads"] == 1 and latency["inference_precision"] == "f32"
    with pytest.raises(BrevitasLDMError, match="ending in .xml"):
        onnx_to_openvino_ir(tmp_path / "x.onnx", tmp_path / "unet.onnx")
    with pytest.raises(BrevitasLDMError, match="does not exist"):
        verify_openvino(tmp_path / "none.xml", sd_model, denoiser_inputs(sd_model, batch=2))
    assert not list(tmp_path.iterdir())
