import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
# One thread: tiny test models gain nothing from two, and two threads crawl when anything else runs.
torch.set_num_threads(1)
os.environ["BREVITAS_LDM_THREADS"] = "1"     # what the command line runs in-process with, too


@pytest.fixture(scope="session")
def embedded_model_path() -> Path:
    from brevitas_ldm.denoiser.loading import resolve_model_path

    return resolve_model_path("tiny-sd-digits")


@pytest.fixture(scope="session")
def sd_dir(tmp_path_factory) -> Path:
    """A tiny random-weight SD pipeline saved with save_pretrained (any SD-style model must work); read-only."""
    from brevitas_ldm.zoo.tiny import tiny_sd_pipeline

    path = tmp_path_factory.mktemp("tiny-sd")
    tiny_sd_pipeline().save_pretrained(str(path))
    return path


@pytest.fixture
def no_model_loading(monkeypatch):
    """Proves an error came before the model: loading it fails the test."""
    import brevitas_ldm.commands.common as common_options

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(common_options, "load_pipeline", refuse)
