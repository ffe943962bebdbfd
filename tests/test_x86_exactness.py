"""Exported files are the measured model on every x86 kind, by construction and by measurement.

onnxruntime's u8s8 kernel saturates int16 pair sums on AVX2 CPUs without VNNI (see ``brevitas_ldm.export.x86_storage``).
Two kinds of check, so that no outcome depends on the CPU that runs the suite:

* structural, on any CPU: no weight that an integer kernel multiplies can overflow (uint8, or int8 with |q| <= 64),
  in the file and in the graph onnxruntime actually runs after its optimizer;
* measured on both kinds: natively (a VNNI or an AVX2 machine, whichever this is) and under ``qemu-x86_64 -cpu
  Haswell`` (AVX2, no VNNI), where onnxruntime dispatches to the AVX2 kernels. The int8-storage control shows the
  emulation really reaches those kernels (it drops to ~24 dB there). ``.ci/run`` installs qemu-user.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from calibrated import quantized
from onnx import numpy_helper

from brevitas_ldm.export import (
    ExportMismatchError,
    check_agreement,
    cpu_info,
    emulator_available,
    export_denoiser,
    integer_kernel_counts,
    onnx_quant_summary,
    overflowing_int8_weights,
    session_options,
    store_for_x86,
    verify_onnx,
)
from brevitas_ldm.export.x86_storage import int8_weight_is_safe
from brevitas_ldm.quant.quantize import quant_layers
from brevitas_ldm.zoo.tiny import denoiser_inputs, tiny_dit, tiny_sd_unet

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
needs_emulator = pytest.mark.skipif(not emulator_available(),
                                    reason="qemu-x86_64 missing (apt-get install qemu-user; .ci/run installs it)")
AVX2 = "Haswell"


@pytest.fixture(scope="module")
def sd_files(tmp_path_factory):
    """The W8A8 tiny SD UNet (conv_out float) in three files: portable QCDQ, int8-storage QCDQ, onnx-int8."""
    torch.manual_seed(0)
    model = quantized(tiny_sd_unet(), plan={"conv_out": "float"})
    folder = tmp_path_factory.mktemp("x86")
    example = denoiser_inputs(model, batch=2)
    files = {"portable": export_denoiser(model, example, folder / "portable.onnx"),
             "int8": export_denoiser(model, example, folder / "int8.onnx", weight_storage="int8"),
             "onnx-int8": export_denoiser(model, example, folder / "int.onnx", fmt="onnx-int8")}
    return model, files


def optimized_kernel_weights(path: Path) -> list[tuple[str, np.ndarray]]:
    """(op, weight values) of every integer kernel in the graph onnxruntime runs after its optimizer."""
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(1)
        options.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    weight_input = {"ConvInteger": 1, "MatMulIntegerToFloat": 1, "MatMulInteger": 1, "QLinearConv": 3,
                    "QLinearMatMul": 3, "QGemm": 3}
    return [(node.op_type, initializers[node.input[weight_input[node.op_type]]]) for node in graph.node
            if node.op_type in weight_input and node.input[weight_input[node.op_type]] in initializers]


def overflow_safe(values: np.ndarray) -> bool:
    return values.dtype == np.uint8 or (values.dtype == np.int8 and int8_weight_is_safe(values))


def test_portable_storage_leaves_no_weight_that_can_overflow(sd_files):
    model, files = sd_files
    n_layers = len(quant_layers(model))
    assert overflowing_int8_weights(files["int8"]) == n_layers == 82   # every min-max int8 weight reaches |q| = 127
    for kind in ("portable", "onnx-int8"):
        assert overflowing_int8_weights(files[kind]) == 0, kind
        kernels = optimized_kernel_weights(files[kind])
        assert kernels, kind
        assert all(overflow_safe(values) for _, values in kernels), kind
    # the control: with int8 storage onnxruntime multiplies weights that AVX2's u8s8 kernel can saturate
    assert not all(overflow_safe(values) for _, values in optimized_kernel_weights(files["int8"]))


def test_portable_storage_keeps_the_dequantized_values(sd_files):
    _, files = sd_files
    int8 = onnx.load(str(files["int8"]))
    portable = onnx.load(str(files["portable"]))

    def dequantized_weights(model):
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        producer = {o: n for n in model.graph.node for o in n.output}
        values = {}
        for node in model.graph.node:
            if node.op_type == "DequantizeLinear" and node.input[0] not in producer:
                source = node.input[0]
            elif node.op_type == "DequantizeLinear" and producer[node.input[0]].op_type == "Clip":
                source = producer[node.input[0]].input[0]
            else:
                continue
            if source not in inits:
                continue
            scale, zero = inits[node.input[1]], inits[node.input[2]]
            shape = [-1] + [1] * (inits[source].ndim - 1) if scale.size > 1 else []
            values[node.output[0]] = (inits[source].astype(np.float64) - zero.astype(np.float64).reshape(shape)) \
                * scale.astype(np.float64).reshape(shape)
        return values

    before, after = dequantized_weights(int8), dequantized_weights(portable)
    assert len(before) == len(after) == 82
    for name, values in before.items():
        np.testing.assert_array_equal(values, after[name])


def test_safe_int8_weights_keep_the_fast_kernel(tmp_path):
    """4-bit weights (|q| <= 8) cannot overflow u8s8: they stay int8, only activations move to uint8."""
    model = quantized(tiny_dit(), recipe="minmax-w4a8")
    path = export_denoiser(model, denoiser_inputs(model, batch=2), tmp_path / "w4.onnx", weight_storage="int8")
    proto = onnx.load(str(path))
    report = store_for_x86(proto)
    # 21 layers, and block 0's timestep embedder (2 layers) traced twice: 23 weight tensors, 23 layer inputs
    assert len(quant_layers(model)) == 21
    assert report.weights_uint8 == 0 and report.weights_int8_safe == 23 and report.activations_uint8 == 23
    onnx.save(proto, str(path))
    assert verify_onnx(path, model, denoiser_inputs(model, batch=4, seed=3), threads=1)["sqnr_db"] >= 30.0


def test_onnx_int8_lowers_every_quantized_layer(sd_files):
    model, files = sd_files
    layers = quant_layers(model)
    convs = sum(isinstance(layer, torch.nn.Conv2d) for layer in layers.values())
    counts = integer_kernel_counts(files["onnx-int8"])
    assert counts["integer"] == {"ConvInteger": convs, "MatMulIntegerToFloat": len(layers) - convs}
    assert (convs, len(layers)) == (32, 82)
    # what stays float: conv_out (planned float) and the attention score products, which are not layers
    assert counts["float"].get("Conv", 0) + counts["float"].get("FusedConv", 0) == 1
    assert "Gemm" not in counts["float"] and "FusedGemm" not in counts["float"]
    result = verify_onnx(files["onnx-int8"], model, denoiser_inputs(model, batch=16, seed=2), threads=1)
    assert result["sqnr_db"] >= 30.0                 # measured 36.5 dB on VNNI and on emulated AVX2
    assert result["cpu"]["onnxruntime"] == ort.__version__ and "isa_flags" in result["cpu"]


def test_onnx_int8_leaves_16bit_layers_in_float_and_exact(tmp_path):
    model = quantized(tiny_dit(), plan={"transformer_blocks.1": "w8a16"})
    path = export_denoiser(model, denoiser_inputs(model, batch=2), tmp_path / "dit.onnx", fmt="onnx-int8")
    counts = integer_kernel_counts(path)
    # 12 int8 layers (pos_embed.proj is a conv), two of which DiT runs twice (block 0's timestep embedder): 14
    # integer kernels; the 9 W8A16 layers of transformer_blocks.1 stay float
    assert counts["integer"] == {"ConvInteger": 1, "MatMulIntegerToFloat": 13}
    assert onnx_quant_summary(path)["quantize"].get("int16") == 9
    assert verify_onnx(path, model, denoiser_inputs(model, batch=4, seed=3), threads=1)["sqnr_db"] >= 60.0


@needs_emulator
@pytest.mark.parametrize("kind", ["portable", "onnx-int8"])
def test_portable_files_agree_on_avx2_and_natively(sd_files, kind):
    model, files = sd_files
    inputs = denoiser_inputs(model, batch=16, seed=2)
    native = verify_onnx(files[kind], model, inputs, threads=1)
    emulated = verify_onnx(files[kind], model, inputs, threads=1, emulate_cpu=AVX2)
    assert emulated["cpu"]["emulated"] == AVX2 and emulated["cpu"]["isa_flags"] == ["avx2"]
    assert not emulated["cpu"]["vnni"]
    for result in (native, emulated):
        assert result["sqnr_db"] >= 30.0             # measured 34.5 (QCDQ) and 36.5 dB (onnx-int8) on both
        check_agreement(result)


@needs_emulator
def test_verifier_refuses_int8_storage_on_a_cpu_without_vnni(sd_files):
    model, files = sd_files
    inputs = denoiser_inputs(model, batch=16, seed=2)
    emulated = verify_onnx(files["int8"], model, inputs, threads=1, emulate_cpu=AVX2)
    assert emulated["sqnr_db"] < 30.0                # measured 23.8 dB: AVX2's u8s8 pair sums saturate
    with pytest.raises(ExportMismatchError, match=r"int8\.onnx is not the measured model on Haswell \(emulated\).*"
                                                  r"82 int8 weight tensors.*no VNNI.*weight_storage='portable'"):
        check_agreement(emulated)
    native = verify_onnx(files["int8"], model, inputs, threads=1)
    if cpu_info().has_vnni:                          # VNNI sums u8 x s8 into 32 bits: int8 storage is exact here
        assert native["sqnr_db"] >= 30.0
    else:
        assert native["sqnr_db"] < 30.0
        with pytest.raises(ExportMismatchError, match="no VNNI"):
            check_agreement(native)


@pytest.fixture(scope="module")
def requantized(tmp_path_factory):
    """``minmax-w7a8-x86``: 7-bit weights and requantized conv outputs (int32 bias), exported as onnx-int8."""
    torch.manual_seed(0)
    model = quantized(tiny_sd_unet(), recipe="minmax-w7a8-x86")
    path = export_denoiser(model, denoiser_inputs(model, batch=2), tmp_path_factory.mktemp("x86") / "w7.onnx",
                           fmt="onnx-int8")
    return model, path


def test_requantized_convs_run_as_qlinearconv_with_the_fast_kernel(requantized):
    model, path = requantized
    layers = quant_layers(model)
    convs = [layer for layer in layers.values() if isinstance(layer, torch.nn.Conv2d)]
    assert all(layer.output_quant.is_quant_enabled for layer in convs)
    counts = integer_kernel_counts(path)
    assert counts["integer"] == {"QLinearConv": len(convs), "MatMulIntegerToFloat": len(layers) - len(convs)}
    assert not counts["float"].get("Conv") and not counts["float"].get("Gemm")
    # 7-bit weights (|q| <= 63) stay int8 in the file: u8s8 kernels, exact even on AVX2 (no pair-sum overflow)
    kernels = optimized_kernel_weights(path)
    assert kernels and all(values.dtype == np.int8 and overflow_safe(values) for _, values in kernels)
    result = verify_onnx(path, model, denoiser_inputs(model, batch=16, seed=2), threads=1)
    assert result["sqnr_db"] >= 30.0                 # measured 36.0 dB (native VNNI and emulated AVX2)


@needs_emulator
def test_requantized_convs_agree_on_avx2(requantized):
    model, path = requantized
    result = verify_onnx(path, model, denoiser_inputs(model, batch=16, seed=2), threads=1, emulate_cpu=AVX2)
    assert result["sqnr_db"] >= 30.0
