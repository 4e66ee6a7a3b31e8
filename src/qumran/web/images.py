"""The guest images a person has built with ``qumran image``, offered by the Create VM form.

``qumran image demo`` builds into the user's own cache, ``~/.cache/qumran/images/NAME/``:
``vmlinuz``, ``initrd.img`` and ``NAME.yaml`` (a definition whose ``boot.cmdline`` is the
one the image wants). qumrand usually runs as root and the cache is in the user's home,
a place the user controls: it is read with the user's own rights on the credentials
thread (:func:`qumran.drivers.asuser.run_as`), never root's (ARCHITECTURE.md, "Trust
boundaries"). So a symbolic link there cannot show the user a file they could not read
themselves, and what a listing shows is what their VM could use.

The daemon cannot see the user's environment, so ``$XDG_CACHE_HOME`` is not followed:
images are looked for under the home directory the password database gives.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qumran.config.files import parse_definition
from qumran.drivers.asuser import effective_uid, run_as
from qumran.errors import InvalidArgument, QumranError

CACHE = Path(".cache") / "qumran" / "images"
KERNEL, INITRD = "vmlinuz", "initrd.img"
MAX_IMAGES = 64  # more folders than this in the cache are not listed
MAX_YAML_BYTES = 64 << 10  # a built image's definition is a few lines


@dataclass(frozen=True)
class Image:
    name: str
    kernel: str
    initrd: str | None
    cmdline: str | None  # from NAME.yaml; None if it has none
    built: float  # the kernel's mtime


@dataclass(frozen=True)
class _Found:
    """What the user-rights thread hands back: names, paths and raw bytes, nothing parsed."""

    name: str
    kernel: str
    initrd: str | None
    definition: bytes | None
    built: float


def images_dir(uid: int) -> Path | None:
    """Where the images of the user whose rights ``uid`` acts with are; None without a home."""
    try:
        home = pwd.getpwuid(effective_uid(uid)).pw_dir
    except KeyError:
        return None
    return Path(home) / CACHE if home.startswith("/") else None


def user_images(uid: int, gid: int, where: Path | None = None) -> list[Image]:
    """The images in ``where`` (default: the user's cache), read with the user's rights."""
    root = where if where is not None else images_dir(uid)
    if root is None:
        return []
    found = run_as(uid, gid, lambda: _scan(root))
    return [_image(f) for f in found]


def find(images: list[Image], name: str) -> Image:
    for image in images:
        if image.name == name:
            return image
    known = ", ".join(i.name for i in images) or "none; build one with `qumran image demo`"
    raise InvalidArgument(f"image: no image named {name!r} in your cache (images: {known})")


def _scan(root: Path) -> list[_Found]:
    """Runs with the user's rights: lists, stats and reads, nothing else."""
    try:
        with os.scandir(root) as entries:
            names = sorted(entry.name for entry in entries)
    except OSError:  # no cache yet, or not readable by this user: no images to offer
        return []
    found: list[_Found] = []
    for name in names[:MAX_IMAGES]:
        folder = root / name
        kernel = _regular(folder / KERNEL)
        if kernel is None:
            continue  # not a `qumran image` build (the tests' kvmhost image has vmlinux)
        initrd = folder / INITRD
        found.append(
            _Found(
                name=name,
                kernel=str(folder / KERNEL),
                initrd=str(initrd) if _regular(initrd) is not None else None,
                definition=_read_small(folder / f"{name}.yaml"),
                built=kernel.st_mtime,
            )
        )
    return found


def _regular(path: Path) -> os.stat_result | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _read_small(path: Path) -> bytes | None:
    try:
        # O_NONBLOCK: a FIFO named like the definition cannot hang the thread.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, MAX_YAML_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


def _image(found: _Found) -> Image:
    return Image(found.name, found.kernel, found.initrd, _cmdline(found.definition), found.built)


def _cmdline(raw: bytes | None) -> str | None:
    if raw is None or len(raw) > MAX_YAML_BYTES:
        return None
    try:
        doc: Any = parse_definition(raw.decode("utf-8"), kind="yaml")
    except (UnicodeDecodeError, QumranError):
        return None  # a broken or foreign file: the image is still offered, without it
    boot = doc.get("boot")
    cmdline = boot.get("cmdline") if isinstance(boot, dict) else None
    return cmdline if isinstance(cmdline, str) else None


__all__ = ["Image", "find", "images_dir", "user_images"]
