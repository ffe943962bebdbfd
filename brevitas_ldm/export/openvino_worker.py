"""Worker that runs one OpenVINO IR on saved feeds, for :func:`~brevitas_ldm.export.openvino_runtime.verify_openvino`
on an emulated CPU kind: ``python openvino_worker.py MODEL.xml FEEDS.npz OUT.npy THREADS`` with the environment
(``ONEDNN_MAX_CPU_ISA``) set by the caller. Imports only numpy and openvino, and compiles with the same properties
as :func:`~brevitas_ldm.export.openvino_runtime.compile_ir` at f32.
"""

import sys

import numpy as np
import openvino as ov

if __name__ == "__main__":
    model, feeds_path, out_path, threads = sys.argv[1:5]
    compiled = ov.Core().compile_model(model, "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,
        "INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": "f32"})
    feeds = dict(np.load(feeds_path))
    np.save(out_path, np.array(compiled.create_infer_request().infer(feeds)[0], copy=True))
