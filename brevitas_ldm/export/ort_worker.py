"""``python ort_worker.py MODEL FEEDS.npz OUT.npy THREADS``: one onnxruntime run, for :mod:`.emulation`.

Run as a script (under qemu), it must not import torch or the package: it loads :mod:`.session` by file path so
the emulated session has exactly the options of a native one.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def main(argv: list[str]) -> int:
    model_path, feeds_path, output_path, threads = argv
    spec = importlib.util.spec_from_file_location("_brevitas_ldm_session", Path(__file__).with_name("session.py"))
    session_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(session_module)
    session = ort.InferenceSession(model_path, session_module.session_options(int(threads)),
                                   providers=["CPUExecutionProvider"])
    with np.load(feeds_path) as feeds:
        output = session.run([session_module.OUTPUT_NAME], dict(feeds))[0]
    np.save(output_path, output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
