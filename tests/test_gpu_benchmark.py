"""benchmarks/gpu.py is ready for a GPU: its dry run (tiny SD-1.5- and SDXL-shaped UNets on the CPU) goes through
every step the GPU run takes (build, quantize + calibrate + deploy int8 and fp8, SQNR, interleaved timing, the
global analysis) and writes the figures it promises."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_the_gpu_benchmark_dry_run_measures_every_variant(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    import gpu

    out = tmp_path / "gpu.json"
    assert gpu.main(["--dry-run", "--threads", "1", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["device"] == "cpu" and results["dtype"] == "float32"
    for name in ("sd15", "sdxl"):
        model = results["models"][name]
        layers = model["kernels"]["int8"]["int8"]
        assert layers > 40 and model["kernels"]["fp8"] == {"fp8": layers}     # every layer on its fused kernel
        assert set(model["latency"]) == {"float_eager", "int8_eager", "fp8_eager"}
        assert all(timing["median_ms"] > 0 for timing in model["latency"].values())
        assert model["ratio_vs_float"]["float_eager"]["eager"] == 1.0
        # the quantized models are quantized, not broken: 10-40 dB from float on random weights
        assert all(10.0 < model["sqnr_vs_float_db"][k] < 40.0 for k in ("int8_eager", "fp8_eager"))
        # int8 codes + float32 scales and biases: well under half the float32 weights
        assert model["weights_bytes"]["int8"] < 0.5 * model["weights_bytes"]["float"]
    assert "added_cond_kwargs" not in results["models"]["sd15"]["config"]
    assert results["models"]["sdxl"]["config"]["addition_embed_type"] == "text_time"
    analysis = results["analysis"]
    assert analysis["denoiser_calls"] > 10 and analysis["calls_per_s"] > 0 and "peak_bytes" not in analysis
    assert "| int8_eager |" in results["markdown"]
