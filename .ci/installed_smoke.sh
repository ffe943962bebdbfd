#!/usr/bin/env bash
# The package as a user gets it: build the wheel, install it (not editable) into a fresh virtualenv, and from a
# folder outside the checkout run the command line end to end: --help, recipes, a tiny quantize of the embedded
# model, its export, and a reload. A package, data file or dependency missing from the wheel fails here, which the
# suite (run from the source tree) cannot see.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$python" -m pip wheel -q --no-deps -w "$work/dist" "$root"
"$python" -m venv "$work/venv"
# torch from constraints.txt: the CPU wheel, never a CUDA build.
# retried once: a download cut short by the index is not the wheel's fault
"$work/venv/bin/python" -m pip install -q -c "$root/constraints.txt" "$work"/dist/brevitas_ldm-*.whl \
    || { sleep 30; "$work/venv/bin/python" -m pip install -q -c "$root/constraints.txt" "$work"/dist/brevitas_ldm-*.whl; }

mkdir "$work/run"
cd "$work/run"
export PATH="$work/venv/bin:$PATH" HF_HUB_OFFLINE=1 MPLBACKEND=Agg BREVITAS_LDM_THREADS=1
set -x
python - "$root" <<'PY'
import sys
from pathlib import Path

import brevitas_ldm

where = Path(brevitas_ldm.__file__).resolve()
assert Path(sys.argv[1]).resolve() not in where.parents, f"imported from the checkout: {where}"
assert "site-packages" in where.parts, where
PY
brevitas-ldm --help
brevitas-ldm recipes
brevitas-ldm recipes show minmax-w8a8 > /dev/null
brevitas-ldm quantize --model tiny-sd-digits --recipe minmax-w8a8 --out q --num-samples 2 --steps 2 --batch-size 2 \
    --calibration-prompts 2
brevitas-ldm export --model q --format onnx-qcdq --out onnx
# the second embedded model, its classifier and FID reference ship in the wheel too
brevitas-ldm evaluate --model tiny-sd-fashion --out fashion --num-samples 2 --steps 2 --batch-size 2
python -c "import json; m = json.load(open('fashion/metrics.json')); assert 'fashion_fid' in m['fp'], m['fp']"
python - <<'PY'
import json

import torch

import brevitas_ldm
from brevitas_ldm.denoiser.sampling import SamplingSpec, generate

pipe = brevitas_ldm.from_pretrained("q")
from diffusers import DiffusionPipeline   # diffusers' own call loads the folder once brevitas_ldm is imported

native = DiffusionPipeline.from_pretrained("q/checkpoint")
spec = SamplingSpec(num_inference_steps=2, batch_size=1)
assert torch.equal(generate(native, ["a handwritten digit seven"], [0], spec),
                   generate(pipe, ["a handwritten digit seven"], [0], spec)), "diffusers' reload differs"
latents = generate(pipe, ["a handwritten digit seven"], [0], SamplingSpec(num_inference_steps=2, batch_size=1))
assert torch.isfinite(latents).all(), "the reloaded quantized pipeline sampled NaN/Inf"
export = json.loads(open("onnx/export.json").read())
assert export["verification"]["sqnr_db"] >= 30.0, export["verification"]
print(f"reloaded and sampled {tuple(latents.shape)}; exported {export['file']} agrees at "
      f"{export['verification']['sqnr_db']:.1f} dB")
PY
