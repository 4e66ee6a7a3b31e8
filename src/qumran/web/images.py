"""The guest images a person has built with ``qumran image``, offered by the Create VM form.

Two kinds of entries live in the user's own cache, ``~/.cache/qumran/images/NAME/``:

- ``qumran image build`` / ``import`` entries (:mod:`qumran.images.cache`): an
  ``image.json`` naming a whole-disk image (``disk.qcow2``), and for built ones a kernel,
  initrd and command line too. The form's "From an image" mode makes a VM's disk an
  overlay on that disk, as ``qumran create`` does.
- the demo guest (``qumran image demo``): ``vmlinuz``, ``initrd.img`` and ``NAME.yaml`` (a
  definition whose ``boot.cmdline`` is the one the image wants), booted by its kernel.

qumrand usually runs as root and the cache is in the user's home,
a place the user controls: it is read with the user's own rights on the credentials
thread (:func:`qumran.drivers.asuser.run_as`), never root's (ARCHITECTURE.md, "Trust
boundaries"). So a symbolic link there cannot show the user a file they could not read
themselves, and what a listing shows is what their VM could use.

The daemon cannot see the user's environment, so ``$XDG_CACHE_HOME`` is not followed:
images are looked for under the home directory the password database gives.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qumran.config.files import parse_definition
from qumran.drivers.asuser import effective_uid, read_regular, run_as
from qumran.errors import InvalidArgument, QumranError

CACHE = Path(".cache") / "qumran" / "images"
KERNEL, INITRD = "vmlinuz", "initrd.img"
INFO_FILE = "image.json"  # as qumran.images.cache writes it
MAX_IMAGES = 64  # more folders than this in the cache are not listed
MAX_YAML_BYTES = 64 << 10  # a built image's definition (or image.json) is a few lines


@dataclass(frozen=True)
class Image:
    name: str
    kernel: str | None  # None: a disk image only (imported), not for direct kernel boot
    initrd: str | None
    cmdline: str | None  # from NAME.yaml or image.json; None if it has none
    built: float  # the kernel's (or image.json's) mtime
    disk: str | None = None  # an image.json entry's whole-disk image, absolute
    format: str | None = None  # the disk's: qcow2 or raw
    virtual_size: int = 0  # the disk's size as the guest sees it, bytes


@dataclass(frozen=True)
class _Found:
    """What the user-rights thread hands back: names, paths and raw bytes, nothing parsed."""

    name: str
    folder: str
    kernel: str | None
    initrd: str | None
    definition: bytes | None  # NAME.yaml of the demo layout, or image.json
    built: float
    described: bool = False  # ``definition`` is an image.json


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
    return [image for f in found if (image := _image(f)) is not None]


def kernel_images(images: list[Image]) -> list[Image]:
    """The images that can boot by their kernel (the form's "kernel" boot)."""
    return [i for i in images if i.kernel is not None]


def disk_images(images: list[Image]) -> list[Image]:
    """The images with a whole-disk image (the form's "From an image" mode)."""
    return [i for i in images if i.disk is not None]


def find(images: list[Image], name: str, field: str = "image") -> Image:
    for image in images:
        if image.name == name:
            return image
    known = ", ".join(i.name for i in images) or "none; build one with `qumran image demo`"
    raise InvalidArgument(f"{field}: no image named {name!r} in your cache (images: {known})")


def _scan(root: Path) -> list[_Found]:
    """Runs with the user's rights: lists, stats and reads, nothing else."""
    try:
        with os.scandir(root) as entries:
            names = sorted(entry.name for entry in entries)
    except OSError:  # no cache yet, or not readable by this user: no images to offer
        return []
    found: list[_Found] = []
    for name in names[:MAX_IMAGES]:
        if name.startswith("."):
            continue  # a build in progress (.staging-*), a lock: not an image
        folder = root / name
        info = _regular(folder / INFO_FILE)
        if info is not None:
            raw = _read_small(folder / INFO_FILE)
            if raw is not None:
                found.append(_Found(name, str(folder), None, None, raw, info.st_mtime, True))
            continue
        kernel = _regular(folder / KERNEL)
        if kernel is None:
            continue  # not a `qumran image` build (the tests' kvmhost image has vmlinux)
        initrd = folder / INITRD
        found.append(
            _Found(
                name=name,
                folder=str(folder),
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
    data = read_regular(path, MAX_YAML_BYTES)
    return data if isinstance(data, bytes) else None


def _image(found: _Found) -> Image | None:
    if found.described:
        return _described(found)
    return Image(found.name, found.kernel, found.initrd, _cmdline(found.definition), found.built)


def _described(found: _Found) -> Image | None:
    """An image.json entry, or None if the file is not one (as ``qumran image list`` skips
    it). Its file names must be plain names inside the entry: it is the user's file, and
    a name such as ``../../etc/x`` would point the form elsewhere."""
    if found.definition is None or len(found.definition) > MAX_YAML_BYTES:
        return None
    try:
        doc = json.loads(found.definition)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("name") != found.name:
        return None
    disk, kernel, initrd = (_member(doc.get(k)) for k in ("disk", "kernel", "initrd"))
    size, fmt, cmdline = doc.get("virtual_size"), doc.get("format"), doc.get("cmdline")
    if disk is None or not isinstance(size, int) or fmt not in ("qcow2", "raw"):
        return None
    folder = Path(found.folder)
    return Image(
        name=found.name,
        kernel=str(folder / kernel) if kernel else None,
        initrd=str(folder / initrd) if kernel and initrd else None,
        cmdline=cmdline if isinstance(cmdline, str) else None,
        built=found.built,
        disk=str(folder / disk),
        format=fmt,
        virtual_size=size,
    )


def _member(value: object) -> str | None:
    if not isinstance(value, str) or not value or "/" in value or value.startswith("."):
        return None
    return value


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


__all__ = ["Image", "disk_images", "find", "images_dir", "kernel_images", "user_images"]
