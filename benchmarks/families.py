"""Every diffusers LDM family through every command, on the tiny random-weight pipelines, into docs/models.md.

For each family of :data:`brevitas_ldm.zoo.families.FAMILIES` the pipeline is built and saved with
``save_pretrained``, then the command line runs exactly what ``tests/test_families.py`` runs: ``analyze``,
``quantize`` (sqnr-hybrid-w8a8 with 2 analysis prompts), ``evaluate --checkpoint`` and ``export`` to onnx-qcdq and
onnx-int8. The page lists each cell's exit status and figures, the CPU, the versions and the command that wrote it.
Random weights say the commands work, not how well a trained model quantizes (see docs/compare.md for that).

    python benchmarks/families.py --out docs/models.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path

import diffusers
import onnxruntime
import torch
from harness import machine

import brevitas_ldm
from brevitas_ldm.cli import main
from brevitas_ldm.export.cpu import cpu_info
from brevitas_ldm.io import write_json_atomic, write_text_atomic
from brevitas_ldm.zoo.families import FAMILIES, save_family

SAMPLING = ["--steps", "2", "--batch-size", "2"]
EVALUATION = [*SAMPLING, "--num-samples", "2", "--seed", "3"]


def _command(argv: list[str]) -> tuple[int, str, float]:
    """Exit code, the last error line and seconds of one in-process ``brevitas-ldm`` command."""
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except Exception as exc:  # noqa: BLE001 - a crash is a finding of this page, not a reason to stop it
            code, err = 1, io.StringIO(f"{type(exc).__name__}: {exc}")
    lines = [line for line in err.getvalue().splitlines() if "error" in line.lower() or code == 1]
    return code, (lines[-1] if lines else ""), time.perf_counter() - start


def run_family(family: str, work: Path) -> dict:
    model = str(save_family(family, work / "model"))
    recipe = work / "recipe.toml"
    recipe.write_text((files("brevitas_ldm.recipes") / "sqnr-hybrid-w8a8.toml").read_text()
                      .replace('name = "sqnr-hybrid-w8a8"', 'name = "tiny-sqnr-hybrid"')
                      .replace("num_prompts = 8", "num_prompts = 2"))
    row: dict = {"family": family, "pipeline": type(FAMILIES[family](0)).__name__}
    steps = {
        "analyze": ["analyze", "--model", model, *SAMPLING, "--recipe", str(recipe), "--out", str(work / "a")],
        "quantize": ["quantize", "--model", model, *EVALUATION, "--recipe", str(recipe), "--calibration-prompts",
                     "2", "--out", str(work / "q")],
        "evaluate": ["evaluate", "--model", model, *EVALUATION, "--checkpoint", str(work / "q" / "checkpoint"),
                     "--out", str(work / "e")],
    }
    for fmt in ("onnx-qcdq", "onnx-int8"):
        steps[fmt] = ["export", "--model", model, "--checkpoint", str(work / "q" / "checkpoint"), "--format", fmt,
                      "--min-sqnr-db", "20", "--out", str(work / fmt)]
    for name, argv in steps.items():
        code, error, seconds = _command(argv)
        row[name] = {"exit": code, "seconds": round(seconds, 1), **({"error": error} if code else {})}
    if row["quantize"]["exit"] == 0:
        metrics = json.loads((work / "q" / "metrics.json").read_text())
        row["blocks"] = [b["name"] for b in json.loads((work / "q" / "analysis" / "block_report.json").read_text())[
            "blocks"]] if (work / "q" / "analysis" / "block_report.json").is_file() else []
        row["quantized"] = {k: metrics["quantized"][k] for k in ("output_sqnr_db", "avg_weight_bits", "avg_act_bits")}
    for fmt in ("onnx-qcdq", "onnx-int8"):
        if row[fmt]["exit"] == 0:
            summary = json.loads((work / fmt / "export.json").read_text())
            row[fmt]["ort_vs_torch_db"] = summary["verification"]["sqnr_db"]
            row[fmt]["integer_kernels"] = sum(summary["kernels"]["integer"].values())
    return row


def _cell(step: dict) -> str:
    return "ok" if step["exit"] == 0 else f"exit {step['exit']}"


def markdown(rows: list[dict], context: dict) -> str:
    lines = [
        "# Model families x commands",
        "",
        f"Written by `{context['command']}` on {context['cpu']} ({context['machine']}; diffusers "
        f"{context['diffusers']}, onnxruntime {context['onnxruntime']}, brevitas-ldm {context['version']}).",
        "",
        "Each row is a tiny random-weight pipeline of the family, built from diffusers' own classes "
        "(`brevitas_ldm.zoo.families`) and saved with `save_pretrained`. The commands are the ones "
        "`tests/test_families.py` runs in CI: `analyze`, `quantize --recipe sqnr-hybrid-w8a8` (2 analysis prompts, "
        "2 samples, 2 steps), `evaluate --checkpoint` (which must reproduce quantize's figures exactly) and `export` "
        "to onnx-qcdq and onnx-int8 (verified in onnxruntime against the torch model; `--min-sqnr-db 20` because "
        "random weights amplify one-step rounding flips more than trained ones). SQNR figures of random weights say "
        "the path works, not how well a trained model of the family quantizes.",
        "",
        "| family | pipeline | analyze | quantize | evaluate | onnx-qcdq | onnx-int8 | output SQNR (dB) | W/A bits "
        "| ORT vs torch, int8 (dB) | integer kernels |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        quantized = row.get("quantized", {})
        int8 = row["onnx-int8"]
        lines.append(
            f"| {row['family']} | {row['pipeline']} | {_cell(row['analyze'])} | {_cell(row['quantize'])} | "
            f"{_cell(row['evaluate'])} | {_cell(row['onnx-qcdq'])} | {_cell(int8)} | "
            f"{quantized.get('output_sqnr_db', float('nan')):.1f} | "
            f"{quantized.get('avg_weight_bits', float('nan')):.2f}/{quantized.get('avg_act_bits', float('nan')):.2f} "
            f"| {int8.get('ort_vs_torch_db', float('nan')):.1f} | {int8.get('integer_kernels', 0)} |")
    lines += ["", "## Blocks the global analysis finds", "", "| family | blocks, in execution order |", "|---|---|"]
    lines += [f"| {row['family']} | {', '.join(row.get('blocks', []))} |" for row in rows]
    failures = [(row["family"], name, row[name]["error"]) for row in rows for name in
                ("analyze", "quantize", "evaluate", "onnx-qcdq", "onnx-int8") if row[name]["exit"] != 0]
    lines += ["", "## Failures in this run", ""]
    lines += [f"- {family} `{name}`: `{error}`" for family, name, error in failures] or ["None."]
    lines += ["", "## Known not to work yet", "", *KNOWN_LIMITS]
    return "\n".join(lines) + "\n"


#: What users would hit, with the error they would see (kept by hand; each was run once to take the message).
KNOWN_LIMITS = [
    "- **LoRA on pipelines without a LoRA loader** (PixArt, DiT, DDPM, LDM): `brevitas-ldm quantize: error: "
    "DiTPipeline does not take LoRA weights (no load_lora_weights): drop --lora, or fuse the LoRA into the pipeline "
    "yourself and save_pretrained() it`. SD, SDXL, SD3 and Flux take `--lora` (tested on SD in `tests/test_lora.py`).",
    "- **Resolution**: sampling uses each pipeline's default square size; there is no `--height`/`--width`. Flux's "
    "packed latents are unpacked for a square grid only (`... returned N latent tokens, not a square grid: "
    "brevitas-ldm samples square images only`).",
    "- **Pipelines that need an input image** (img2img, inpainting, ControlNet, the SDXL refiner) are not driven: "
    "conditioning is prompts, class labels or a batch size only.",
    "- **GPU**: `--device cuda` and half precision on CUDA were never run here (no GPU was lent to this project); "
    "bf16 runs in the suite on CPU (`tests/test_dtype.py`) and fp16 was run once on CPU (tiny SD, minmax-w8a8, "
    "32.9 dB). `export` always runs float32 (onnxruntime's CPU kernels); a bf16/fp16 checkpoint's values cast to "
    "it exactly.",
    "- **Full-size exports** above ONNX's 2 GB protobuf limit (SDXL, SD3, Flux at real size) are untested.",
]


def main_cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "models.md")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for family in args.families:
        print(f"{family} ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(run_family(family, Path(tmp)))
    cpu = cpu_info()
    context = {"command": "python benchmarks/families.py " + " ".join(sys.argv[1:]),
               "cpu": f"{cpu.model} [{' '.join(cpu.isa_flags)}]", "machine": machine(),
               "diffusers": diffusers.__version__, "onnxruntime": onnxruntime.__version__,
               "version": brevitas_ldm.__version__}
    write_json_atomic(args.out.with_suffix(".json"), {"context": context, "rows": rows})
    write_text_atomic(args.out, markdown(rows, context))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main_cli())
