"""Shared test set-up: quiet TensorFlow, no GPU, and the optional real data in ../shared/data.

The real files (NIH sample, two DICOMs) are not part of the repository. A developer's run without
them skips their tests; `.ci/run` exports CXR_REQUIRE_SHARED_DATA=1, and then a missing folder
fails the tests instead, so CI cannot go green by skipping them.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
NIH_SAMPLE = os.path.join(SHARED_DATA, "nih_sample")
SHARED_DICOM = os.path.join(SHARED_DATA, "dicom")
REQUIRE_SHARED_DATA = "CXR_REQUIRE_SHARED_DATA"


def require_shared(*paths: str) -> None:
    """Skips the calling test when a real-data path is absent, or fails it under CXR_REQUIRE_SHARED_DATA=1."""
    missing = [p for p in paths if not os.path.exists(p)]
    if not missing:
        return
    message = f"real data not found: {', '.join(missing)}"
    if os.environ.get(REQUIRE_SHARED_DATA) == "1":
        pytest.fail(f"{message}, and {REQUIRE_SHARED_DATA}=1 says it must be there")
    pytest.skip(message)


@pytest.fixture(scope="session")
def nih_sample() -> str:
    """Path of ../shared/data/nih_sample (see `require_shared`)."""
    require_shared(os.path.join(NIH_SAMPLE, "images_001"))
    return NIH_SAMPLE


@pytest.fixture(scope="session")
def shared_dicom() -> str:
    """Path of ../shared/data/dicom with its two real files (see `require_shared`)."""
    require_shared(os.path.join(SHARED_DICOM, "siim_chest_pa.dcm"),
                   os.path.join(SHARED_DICOM, "siim_chest_pa_monochrome1.dcm"))
    return SHARED_DICOM
