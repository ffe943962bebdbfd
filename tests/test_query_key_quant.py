"""``[deploy] quantize_query_key``: 8-bit queries and keys, so OpenVINO runs attention's scores on integers.

NNCF's transformer preset quantizes the scores' MatMul (Q K^T), and that is the whole of its latency lead over the
project's file on the SD-shaped UNet (docs/openvino-quantizer-placement.md). The key gives the project's model the
same: ``to_q``/``to_k`` quantize their outputs (Brevitas ``output_quant``) where both run integer kernels, the
model every phase measures holds them, the checkpoint restores them, and the OpenVINO file runs the scores u8/i8,
counted from the compiled runtime model natively and with oneDNN capped to AVX2. W7A8 keeps the file exact on both
x86 kinds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from calibrated import quantized
from cli_args import FAST

from brevitas_ldm.export import export_denoiser
from brevitas_ldm.export.openvino_runtime import openvino_kernel_counts, verify_openvino
from brevitas_ldm.quant.quantize import query_key_pairs
from brevitas_ldm.sqnr import sqnr_db
from brevitas_ldm.zoo.tiny import denoiser_inputs, tiny_sd_unet

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")

RECIPE = 'name = "w7a8-qk"\n[weights]\nbits = 7\n[calibration]\nmode = "all_steps"\n'
FLOAT_KEY = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"


def _recipe(tmp_path, query_key: bool) -> str:
    path = tmp_path / f"qk-{query_key}.toml"
    path.write_text(RECIPE + f"[deploy]\nquantize_query_key = {str(query_key).lower()}\n")
    return str(path)


def _output_quantized(model) -> set[str]:
    return {name for name, module in model.named_modules()
            if getattr(getattr(module, "output_quant", None), "is_quant_enabled", False)}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """The tiny SD UNet at W7A8 without and with the key (one attention's key projection planned float)."""
    tmp = tmp_path_factory.mktemp("qk")
    built = {}
    for query_key in (False, True):
        torch.manual_seed(0)
        model = quantized(tiny_sd_unet(), recipe=_recipe(tmp, query_key), plan={FLOAT_KEY: "float"}).eval()
        built[query_key] = (model, export_denoiser(model, denoiser_inputs(model, batch=2), tmp / f"{query_key}.xml",
                                                   fmt="openvino"))
    return built


def test_query_and_key_outputs_are_quantized_where_both_run_integer_kernels(models):
    pairs = query_key_pairs(tiny_sd_unet())
    assert len(pairs) == 8                                           # 4 transformer blocks x (self, cross)
    assert not _output_quantized(models[False][0])
    quantized_outputs = _output_quantized(models[True][0])
    # the pair whose key projection is float keeps a float query too: a half-quantized product runs float anyway
    assert quantized_outputs == {layer for pair in pairs for layer in pair if FLOAT_KEY not in pair}
    assert len(quantized_outputs) == 14


def _counts_capped_to_avx2(path) -> dict:
    code = ("import json, sys; from brevitas_ldm.export.openvino_runtime import openvino_kernel_counts; "
            "print(json.dumps(openvino_kernel_counts(sys.argv[1])))")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                            env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_openvino_runs_the_scores_on_integers_on_both_cpu_kinds(models):
    plain, scores = (openvino_kernel_counts(models[key][1])["integer"] for key in (False, True))
    assert {k: v for k, v in scores.items() if k in ("Convolution", "FullyConnected")} == plain
    # fused attentions (AVX-512 CPUs) or plain MatMuls (AVX2): 7 integer score products either way, none without it
    assert scores.get("Attention", 0) + scores.get("MatMul", 0) == 7
    assert plain.get("Attention", 0) + plain.get("MatMul", 0) == 0
    capped = _counts_capped_to_avx2(models[True][1])["integer"]
    assert capped.get("Attention", 0) + capped.get("MatMul", 0) == 7


def test_the_file_is_the_measured_model_on_both_cpu_kinds_and_the_scores_cost_little(models):
    model, path = models[True]
    inputs = denoiser_inputs(model, batch=16, seed=2)
    native = verify_openvino(path, model, inputs, threads=1)
    avx2 = verify_openvino(path, model, inputs, threads=1, emulate_cpu="Haswell")
    assert native["sqnr_db"] >= 30.0 and avx2["sqnr_db"] >= 30.0
    assert abs(native["sqnr_db"] - avx2["sqnr_db"]) < 0.5
    # the 8-bit scores against the same model without them, both vs float: a fraction of a dB on this UNet
    torch.manual_seed(0)
    reference = tiny_sd_unet().eval()
    with torch.no_grad():
        want = reference(**inputs).sample
        with_scores = sqnr_db(want, model(**inputs).sample)
        without = sqnr_db(want, models[False][0](**inputs).sample)
    assert without - 1.0 < with_scores < without, (with_scores, without)


def test_the_quantize_job_and_the_checkpoint_keep_the_score_quantizers(sd_dir, tmp_path):
    import brevitas_ldm
    from brevitas_ldm.cli import main
    from brevitas_ldm.denoiser.sampling import get_denoiser

    out = tmp_path / "q"
    assert main(["quantize", "--model", str(sd_dir), "--recipe", _recipe(tmp_path, True), "--out", str(out),
                 *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["quantized"]["output_sqnr_db"] > 10.0
    denoiser = get_denoiser(brevitas_ldm.from_pretrained(out))
    assert len(_output_quantized(denoiser)) == 2 * len(query_key_pairs(denoiser)) == 16
    scales = [module.output_quant.scale() for name, module in denoiser.named_modules()
              if name in _output_quantized(denoiser)]
    assert all(float(scale) > 0 for scale in scales)


def test_zero_pointed_activations_keep_the_scores_on_integers(tmp_path):
    """``symmetric = false`` (the OpenVINO recipe's activations): the layers' inputs take zero points, but the query
    and key outputs stay symmetric, since a zero point on either scores input keeps OpenVINO's fused attention float
    (measured on sd15-half: 0.492x of the FP32 IR with zero-pointed scores, 0.456x without). The file is still the
    measured model on both x86 kinds."""
    path = tmp_path / "asym.toml"
    path.write_text(RECIPE.replace("[calibration]", "[activations]\nsymmetric = false\n[calibration]")
                    + "[deploy]\nquantize_query_key = true\n")
    torch.manual_seed(0)
    model = quantized(tiny_sd_unet(), recipe=str(path)).eval()
    outputs = {name: module.output_quant for name, module in model.named_modules()
               if name in _output_quantized(model)}
    inputs_zero_points = [float(module.input_quant.zero_point().abs().max()) for name, module in model.named_modules()
                          if getattr(getattr(module, "input_quant", None), "is_quant_enabled", False)]
    assert len(outputs) == 16
    assert all(float(proxy.zero_point().abs().max()) == 0.0 for proxy in outputs.values())
    assert sum(zero_point > 0 for zero_point in inputs_zero_points) > len(inputs_zero_points) // 2
    xml = export_denoiser(model, denoiser_inputs(model, batch=2), tmp_path / "asym.xml", fmt="openvino")
    counts = openvino_kernel_counts(xml)["integer"]
    assert counts.get("Attention", 0) + counts.get("MatMul", 0) == 8
    data = denoiser_inputs(model, batch=8, seed=3)
    native = verify_openvino(xml, model, data, threads=1)["sqnr_db"]
    avx2 = verify_openvino(xml, model, data, threads=1, emulate_cpu="Haswell")["sqnr_db"]
    assert native >= 30.0 and avx2 >= 30.0, (native, avx2)
