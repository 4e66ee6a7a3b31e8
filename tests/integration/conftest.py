from __future__ import annotations

import time

import pytest

from qumran.images import debian12, progress
from qumran.images.cache import Image


@pytest.fixture(scope="session")
def debian_image() -> Image:
    """The debian-12 image: built the first time (several minutes), then from the cache
    (~/.cache/qumran/images, by its recipe digest)."""
    started = time.monotonic()
    image, built = debian12.build(progress=progress.for_stream(debian12.PHASES))
    how = "built" if built else "cached"
    print(f"\ndebian-12 {how} in {time.monotonic() - started:.1f} s: {image.path}")
    return image
