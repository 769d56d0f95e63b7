"""Shared test set-up: quiet TensorFlow, no GPU, and the optional real NIH sample folder."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NIH_SAMPLE = os.path.join(os.path.dirname(REPO), "shared", "data", "nih_sample")


@pytest.fixture(scope="session")
def nih_sample() -> str:
    """Path of ../shared/data/nih_sample; skips the test when that folder is absent."""
    if not os.path.isdir(os.path.join(NIH_SAMPLE, "images_001")):
        pytest.skip(f"real NIH sample not found at {NIH_SAMPLE}")
    return NIH_SAMPLE
