import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
# One thread: tiny test models gain nothing from two, and two threads crawl when anything else runs.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def embedded_model_path() -> Path:
    from brevitas_ldm.denoiser.loading import resolve_model_path

    return resolve_model_path("tiny-sd-digits")
