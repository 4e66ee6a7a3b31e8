"""``qumran image import``: a disk image the user brings, checked, then copied into the cache.

The file is judged before anything is copied (:func:`qemuimg.check_importable`); the copy
is made with explicit formats (never probed again) into a staging directory, checked once
more (the source could have changed meanwhile), and only then put in place.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from qumran.images import qemuimg, tools
from qumran.images.cache import Image, ImageInfo, ImageStore, check_name, now
from qumran.images.errors import ImageError, ImageRefused
from qumran.images.progress import Progress, Silent

PHASES = 3
CHUNK = 1 << 20


def import_image(
    name: str,
    file: Path,
    store: ImageStore | None = None,
    progress: Progress | None = None,
    *,
    replace: bool = False,
) -> Image:
    check_name(name)
    store = store if store is not None else ImageStore()
    progress = progress if progress is not None else Silent()
    tools.require(tools.IMPORT_TOOLS, "importing an image")
    source = file.absolute()
    found = qemuimg.check_importable(source)
    if store.find(name) is not None and not replace:
        raise ImageError(
            f"an image named {name!r} exists: remove it first "
            f"(`qumran image rm {name}`) or import with --force"
        )
    with store.staging(name) as stage:
        target = stage.path / f"disk.{found.format}"
        progress.phase(f"copying {source.name}")
        qemuimg.convert(
            source,
            target,
            source_format=found.format,
            target_format=found.format,
            on_fraction=progress.fraction,
        )
        progress.phase("checking the copy")
        copied = qemuimg.check_importable(target)
        if (copied.format, copied.virtual_size) != (found.format, found.virtual_size):
            raise ImageRefused(f"{source} changed while it was being imported: try again")
        digest = file_digest(target, progress)
        progress.phase("storing the image")
        return stage.commit(ImageInfo(
            name=name, disk=target.name, format=found.format, digest=digest, created=now(),
            source="imported", virtual_size=found.virtual_size,
            recipe={"file": str(source)},
        ))  # fmt: skip


def file_digest(path: Path, progress: Progress) -> str:
    """sha256 of the file's bytes: an imported image's identity."""
    total = max(path.stat().st_size, 1)
    digest = hashlib.sha256()
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            progress.fraction(done / total)
    return digest.hexdigest()
