"""Shared test fixtures: real photos, the reference data folder, GPU skipping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ffhquv.config import reference_data_dir

REF = reference_data_dir()
REF_PHOTOS = ["000007.jpg", "000055.jpg", "015309.jpg"]


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run through the device tool)")
    skip_ref = pytest.mark.skip(reason=f"reference data folder absent: {REF}")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "reference_data" in item.keywords and not REF.is_dir():
            item.add_marker(skip_ref)


@pytest.fixture(scope="session")
def ref_dir() -> Path:
    """The FFHQ-UV reference data folder; tests using it skip when it is absent."""
    if not REF.is_dir():
        pytest.skip(f"reference data folder absent: {REF}")
    return REF


@pytest.fixture(scope="session")
def astronaut_rgb() -> np.ndarray:
    """``skimage.data.astronaut()``: a real 512x512 RGB photo with one face."""
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def astronaut_png(tmp_path_factory, astronaut_rgb) -> Path:
    from PIL import Image

    p = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(astronaut_rgb).save(p)
    return p


@pytest.fixture(scope="session")
def astronaut_jpg_bytes(astronaut_rgb) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(astronaut_rgb).save(buf, format="JPEG", quality=92)
    return buf.getvalue()
