"""Deployment path: Brevitas exports of quantized tiny denoisers, checked by running them in onnxruntime.

The tiny SD UNet has random weights, which makes it chaotic: its own W8A8 quantization noise is only ~25 dB, and
a float rounding difference that moves one activation across a rounding boundary (one LSB) in onnxruntime grows
into a whole-sample divergence. Samples without such a flip match torch to ~130 dB, samples with one to ~28 dB;
pooled over 16 samples the measured SQNR is 33.7-42 dB (34.5 dB for the inputs below), hence the 30 dB bound.
"""

from __future__ import annotations

import dataclasses
import math

import onnx
import pytest
import torch
from calibrated import quantized

from brevitas_ldm.errors import BrevitasLDMError, CalibrationError, ModelError
from brevitas_ldm.export import (
    EXPORT_FORMATS,
    MS_DOMAIN,
    OUTPUT_NAME,
    export_denoiser,
    export_float_onnx,
    onnx_latency,
    onnx_quant_summary,
    verify_onnx,
    verify_torchscript,
)
from brevitas_ldm.quant.calibration import multi_step_calibration
from brevitas_ldm.quant.quantize import quant_layers, quantize_denoiser
from brevitas_ldm.recipe import get_recipe
from brevitas_ldm.zoo.tiny import (
    denoiser_inputs,
    tiny_class_unet,
    tiny_dit,
    tiny_sd_unet,
)

RECIPE = "minmax-w8a8"
# tracing diffusers models warns about every shape-dependent branch; those branches are static for a denoiser
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here: exports and runs are single-stream work on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd_export(tmp_path_factory):
    """W8A8 tiny SD UNet with ``conv_out`` planned as float, exported to ONNX QCDQ (traced at batch 2)."""
    torch.manual_seed(0)
    model = quantized(tiny_sd_unet(), plan={"conv_out": "float"})
    path = export_denoiser(model, denoiser_inputs(model, batch=2), tmp_path_factory.mktemp("sd") / "unet.onnx")
    return model, path


@pytest.fixture(scope="module")
def dit_w8a16():
    """Tiny DiT, W8A8 except transformer_blocks.1 at W8A16."""
    return quantized(tiny_dit(), plan={"transformer_blocks.1": "w8a16"})


def test_onnx_qcdq_matches_fake_quantized_torch(sd_export):
    model, path = sd_export
    # fresh inputs, and a batch size other than the traced one (the batch axis is dynamic)
    result = verify_onnx(path, model, denoiser_inputs(model, batch=16, seed=2), threads=1)
    assert result["sqnr_db"] >= 30.0          # measured 34.5 dB
    assert result["sqnr_db"] > result["quant_noise_sqnr_db"]   # export mismatch < the quantization noise (~25 dB)
    assert math.isfinite(result["max_abs_error"])


def test_qdq_nodes_follow_the_plan(sd_export):
    model, path = sd_export
    summary = onnx_quant_summary(path)
    n_quant = len(quant_layers(model))
    assert n_quant == 82
    # one 8-bit Q/DQ pair per layer input, one 8-bit DQ per weight; nothing wider. Brevitas writes int8; the
    # portable storage keeps the same values in uint8 (shifted zero points) so no x86 kernel can overflow
    assert summary["quantize"] == {"uint8": n_quant}
    assert summary["dequantize"] == {"uint8": 2 * n_quant}
    for name in quant_layers(model):
        assert summary["layers"][name] == {"input": "uint8", "weight": "uint8"}, name


def test_float_layer_has_no_quantize_node(sd_export):
    model, path = sd_export
    summary = onnx_quant_summary(path)
    assert "conv_out" not in quant_layers(model)
    assert summary["layers"]["conv_out"] == {"input": None, "weight": None}
    graph = onnx.load(str(path)).graph
    producers = {out: node for node in graph.node for out in node.output}
    conv = next(n for n in graph.node if n.name == "/denoiser/conv_out/Conv")
    assert producers[conv.input[0]].op_type != "DequantizeLinear"
    assert conv.input[1] in {init.name for init in graph.initializer}   # a float weight, no DQ


def test_16bit_activations_become_int16_qdq(dit_w8a16, tmp_path):
    model = dit_w8a16
    path = export_denoiser(model, denoiser_inputs(model, batch=2), tmp_path / "dit.onnx")
    summary = onnx_quant_summary(path)
    wide = [name for name in quant_layers(model) if name.startswith("transformer_blocks.1.")]
    assert len(wide) == 9 and len(quant_layers(model)) == 21
    # 12 int8 layers, two of which (block 0's timestep embedder) DiT runs twice: 14 int8 input Q/DQ pairs
    assert summary["quantize"] == {"uint8": 14, "int16": 9}
    assert summary["dequantize"] == {"uint8": 14 + 23, "int16": 9}
    for name in wide:
        assert summary["layers"][name] == {"input": "int16", "weight": "uint8"}
    assert summary["layers"]["transformer_blocks.0.attn1.to_q"] == {"input": "uint8", "weight": "uint8"}
    graph = onnx.load(str(path)).graph
    int16_nodes = [n for n in graph.node if n.domain == MS_DOMAIN]
    assert len(int16_nodes) == 18 and {n.op_type for n in int16_nodes} == {"QuantizeLinear", "DequantizeLinear"}
    result = verify_onnx(path, model, denoiser_inputs(model, batch=4, seed=3), threads=1)
    assert result["sqnr_db"] >= 60.0          # measured 138 dB


def test_unsigned_16bit_activations_are_exact(tmp_path):
    """Asymmetric (uint) activations: uint8 Q/DQ, and uint16 stored as int16 with the zero point shifted."""
    recipe = get_recipe(RECIPE)
    recipe = recipe.replace(activations=dataclasses.replace(recipe.activations, symmetric=False))
    model = quantize_denoiser(tiny_dit(), recipe, {"transformer_blocks.1": "w8a16"})
    with multi_step_calibration(model):
        model(**denoiser_inputs(model, batch=4, seed=10))
    path = export_denoiser(model, denoiser_inputs(model, batch=2), tmp_path / "dit.onnx")
    summary = onnx_quant_summary(path)
    assert summary["quantize"] == {"uint8": 14, "int16": 9}
    assert summary["layers"]["transformer_blocks.1.attn1.to_q"] == {"input": "int16", "weight": "uint8"}
    assert verify_onnx(path, model, denoiser_inputs(model, batch=4, seed=3), threads=1)["sqnr_db"] >= 60.0  # 139
    with pytest.raises(BrevitasLDMError, match="unsigned activations above 8 bits.*onnx-qcdq"):
        export_denoiser(model, denoiser_inputs(model, batch=2), tmp_path / "dit.pt", fmt="torch-qcdq")


def test_class_conditional_unet_exports(tmp_path):
    model = quantized(tiny_class_unet())
    path = export_denoiser(model, denoiser_inputs(model, batch=2), tmp_path / "unet2d.onnx")
    result = verify_onnx(path, model, denoiser_inputs(model, batch=8, seed=4), threads=1)
    assert result["sqnr_db"] >= 30.0          # measured 38.3 dB
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["sample", "timestep", "class_labels"]
    assert [o.name for o in graph.output] == [OUTPUT_NAME]


def test_torch_qcdq_round_trip(dit_w8a16, tmp_path):
    model = dit_w8a16
    path = export_denoiser(model, denoiser_inputs(model, batch=2), tmp_path / "dit.pt", fmt="torch-qcdq")
    result = verify_torchscript(path, model, denoiser_inputs(model, batch=4, seed=5))
    assert result["sqnr_db"] >= 80.0          # measured: exact (inf)


def test_qonnx_keeps_exact_bit_widths(dit_w8a16, tmp_path):
    model = dit_w8a16
    path = export_denoiser(model, denoiser_inputs(model, batch=2), tmp_path / "dit.qonnx", fmt="qonnx")
    model_proto = onnx.load(str(path))
    quant_nodes = [n for n in model_proto.graph.node if n.op_type == "Quant"]
    assert len(quant_nodes) == 2 * len(quant_layers(model)) + 4    # + block 0's timestep embedder, run twice
    assert {n.domain for n in quant_nodes} == {"qonnx.custom_op.general"}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model_proto.graph.initializer}
    bit_widths = sorted(float(inits[n.input[3]]) for n in quant_nodes if n.input[3] in inits)
    assert bit_widths.count(16.0) == 9 and set(bit_widths) == {8.0, 16.0}
    with pytest.raises(BrevitasLDMError, match="qonnx"):
        verify_onnx(path, model, denoiser_inputs(model), threads=1)


def test_bad_format_and_bad_state_errors(tmp_path):
    model = quantized(tiny_dit(), calibrate=False)
    inputs = denoiser_inputs(model, batch=2)
    with pytest.raises(BrevitasLDMError, match="fmt = 'tflite' is not allowed: choose one of .*onnx-qcdq"):
        export_denoiser(model, inputs, tmp_path / "x", fmt="tflite")
    with pytest.raises(CalibrationError, match="never calibrated"):
        export_denoiser(model, inputs, tmp_path / "x.onnx")
    with pytest.raises(ModelError, match="no Brevitas quant layers"):
        export_denoiser(tiny_dit(), inputs, tmp_path / "x.onnx")
    with pytest.raises(ModelError, match="float denoiser"):
        export_float_onnx(model, inputs, tmp_path / "x.onnx")
    with pytest.raises(BrevitasLDMError, match="opsets 13-20"):
        export_denoiser(model, inputs, tmp_path / "x.onnx", opset=21)
    odd = quantize_denoiser(tiny_dit(), get_recipe(RECIPE), {"transformer_blocks.0": "w8a12"})
    with pytest.raises(BrevitasLDMError, match="12-bit activations.*a8 or a16.*qonnx"):
        export_denoiser(odd, inputs, tmp_path / "x.onnx")
    assert set(EXPORT_FORMATS) == {"onnx-qcdq", "onnx-int8", "openvino", "torch-qcdq", "qonnx"}
    with pytest.raises(BrevitasLDMError, match="unknown weight_storage 'int4'.*portable"):
        export_denoiser(model, inputs, tmp_path / "x.onnx", weight_storage="int4")
    with pytest.raises(BrevitasLDMError, match="onnx-int8 needs weight_storage='portable'"):
        export_denoiser(model, inputs, tmp_path / "x.onnx", fmt="onnx-int8", weight_storage="int8")
    assert list(tmp_path.iterdir()) == []


def test_failed_export_leaves_no_partial_file(dit_w8a16, tmp_path, monkeypatch):
    model = dit_w8a16
    target = tmp_path / "dit.onnx"
    target.write_bytes(b"previous export")
    bad = dict(denoiser_inputs(model, batch=2), hidden_states=torch.randn(2, 3, 8, 8))   # wrong channel count
    with pytest.raises(ModelError, match="fails on example_inputs"):
        export_denoiser(model, bad, target)
    assert target.read_bytes() == b"previous export" and sorted(tmp_path.iterdir()) == [target]

    # a failure after the exporter has written the whole temporary file (the final rename fails)
    import brevitas_ldm.io as io_module  # the atomic rename every result file goes through

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(io_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        export_denoiser(model, denoiser_inputs(model, batch=2), target)
    assert target.read_bytes() == b"previous export" and sorted(tmp_path.iterdir()) == [target]


def test_float_baseline_latency_and_size(dit_w8a16, tmp_path):
    float_path = export_float_onnx(tiny_dit(), denoiser_inputs(tiny_dit(), batch=2), tmp_path / "fp32.onnx")
    quant_path = export_denoiser(dit_w8a16, denoiser_inputs(dit_w8a16, batch=2), tmp_path / "w8a8.onnx")
    inputs = denoiser_inputs(dit_w8a16, batch=2, seed=6)
    fp = onnx_latency(float_path, inputs, repeats=3, warmup=1, threads=1)
    q = onnx_latency(quant_path, inputs, repeats=3, warmup=1, threads=1)
    for result, path in ((fp, float_path), (q, quant_path)):
        assert result["size_bytes"] == path.stat().st_size
        assert result["min_ms"] > 0 and result["threads"] == 1 and result["repeats"] == 3
    # int8 weights; the tiny DiT's graph structure weighs as much as its weights: measured ratio 0.61
    assert q["size_bytes"] < 0.75 * fp["size_bytes"]
    assert onnx_quant_summary(float_path)["quantize"] == {}
    with pytest.raises(BrevitasLDMError, match="'class_labels' of the ONNX model is missing"):
        onnx_latency(float_path, {k: v for k, v in inputs.items() if k != "class_labels"})
    with pytest.raises(BrevitasLDMError, match="only the batch may differ"):
        onnx_latency(float_path, dict(inputs, hidden_states=torch.randn(2, 4, 16, 16)), threads=1)
    float_result = verify_onnx(float_path, tiny_dit(), inputs, threads=1)
    assert float_result["sqnr_db"] >= 100.0 and "quant_noise_sqnr_db" not in float_result
